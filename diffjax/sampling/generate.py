"""The jitted sampling function shared by training (grids), `--mode=sample` and evaluation, and
`draw_batch`, which turns one call of it into uint8 images on every process.

`make_generate_fn` returns `generate(params, rng, labels) -> (samples, nfe)`; the batch of noise
is created sharded over the data axes of the mesh, so the whole sampler runs data-parallel and
never gathers to one device until the caller asks for the images. `labels` is the conditioning
pytree of `diffjax.experiment` (class ids, text encoder outputs, or None); every leaf is padded
and sharded along its batch axis like the noise.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax import data as data_lib, sampling
from diffjax.diffusion.classifier_guidance import score_guidance
from diffjax.diffusion.guidance import grid_labels
from diffjax.diffusion.processes import LinearSDE
from diffjax.experiment import (classifier_network, classifier_sigma_data, is_guided,
                                load_classifier, score_fn_for)
from diffjax.latents.latent_mode import is_latent, model_input_shape
from diffjax.parallel.mesh import batch_axis_size
from diffjax.parallel.sharding import batch_sharding, replicated


def image_shape(config, batch_size: int) -> tuple[int, int, int, int]:
    """The shape the sampler draws: images, or latents in latent mode."""
    return (batch_size, *model_input_shape(config))


def pixel_range(config) -> tuple[bool, bool]:
    """(centered, dequantize) of generated images for `from_model_range`: the data's, or the
    first stage's decoded [-1, 1] images (no dequantisation cells) in latent mode."""
    if is_latent(config):
        return True, False
    return bool(config.data.centered), bool(config.data.dequantize)


def _padded_size(mesh: Mesh, batch_size: int) -> int:
    """The batch rounded up to a multiple of the data-parallel devices (padding is dropped)."""
    parallel = batch_axis_size(mesh)
    return -(-batch_size // parallel) * parallel


def _on_devices(mesh: Mesh, tree, padded: int):
    """Every array of `tree` zero-padded along the batch to `padded` rows and split over the
    mesh (None stays None)."""

    def place(array):
        array = jnp.asarray(array)
        if array.shape[0] != padded:
            array = jnp.pad(array, ((0, padded - array.shape[0]),) +
                            ((0, 0),) * (array.ndim - 1))
        return jax.device_put(array, batch_sharding(mesh))

    return None if tree is None else jax.tree.map(place, tree)


def classifier_scale(config, sampling_config=None) -> float:
    """sampling.classifier_scale: the weight of classifier guidance (0 = off)."""
    return float((sampling_config or config.sampling).get("classifier_scale", 0.0) or 0.0)


def uses_labels(config, sampling_config=None) -> bool:
    """Whether samples are drawn for class labels: conditional models, and classifier guidance
    (whose classifier needs them even when the diffusion model is unconditional)."""
    return bool(config.model.conditional) or classifier_scale(config, sampling_config) != 0.0


def make_generate_fn(config, model, sde: LinearSDE, mesh: Mesh, batch_size: int,
                     sampling_config=None, decoder=None, allow_classifier: bool = True
                     ) -> Callable:
    """`generate(params, rng, labels)`; labels is an int32 [batch_size] array or None.

    Any batch size works: the batch is padded to a multiple of the data-parallel devices (the
    padding is sampled and dropped), so a 10-image grid runs on 8 devices. With a `decoder` (the
    first stage's `VAE`, latent mode) the latents are decoded to pixels in the same compiled
    program, so a sample never leaves the devices between the sampler and the decoder. With
    sampling.classifier_scale != 0 (and `allow_classifier`) the classifier of
    classifier.pretrained guides every network evaluation toward `labels`, in the same program.
    """
    sampling_config = sampling_config or config.sampling
    padded = _padded_size(mesh, batch_size)
    shape = image_shape(config, padded)
    guidance = float(sampling_config.guidance_scale) if is_guided(config) else 1.0
    scale = classifier_scale(config, sampling_config) if allow_classifier else 0.0
    classifier = load_classifier(config, list(mesh.devices.flat)) if scale else None
    sigma_data = classifier_sigma_data(config)

    def generate(params, decoder_params, classifier_params, rng, labels):
        guide = None
        if classifier is not None:
            guide = score_guidance(classifier_network(classifier.module, classifier_params), sde,
                                   labels, scale, sigma_data)
        score_fn = score_fn_for(config, model, sde, params,
                                labels=labels if is_guided(config) else None,
                                guidance_scale=guidance, score_guidance=guide)
        result = sampling.sample(sampling_config, rng, score_fn, sde, shape)
        samples = jax.lax.with_sharding_constraint(result.samples, batch_sharding(mesh))
        if decoder is not None:
            samples = decoder.decode_in_graph(decoder_params, samples)
            samples = jax.lax.with_sharding_constraint(samples, batch_sharding(mesh))
        return samples, result.nfe

    jitted = jax.jit(generate, out_shardings=(batch_sharding(mesh), replicated(mesh)))
    decoder_params = decoder.params if decoder is not None else None
    classifier_params = classifier.params if classifier is not None else None

    def generate_any_size(params, rng, labels):
        if classifier is not None and labels is None:
            raise ValueError("Classifier guidance needs class labels: set sampling.labels "
                             "(e.g. --config.sampling.labels=3 or 0,1,2).")
        samples, nfe = jitted(params, decoder_params, classifier_params, rng,
                              _on_devices(mesh, labels, padded))
        return (samples if padded == batch_size else samples[:batch_size]), nfe

    def lower(params, rng, labels):
        """The sampler lowered for abstract arguments (`--mode=compile`): labels of the padded
        batch size, split over the data axes like `_on_devices` splits them."""
        return jitted.lower(params, decoder_params, classifier_params, rng, labels)

    generate_any_size.lower = lower
    generate_any_size.padded_batch_size = padded
    return generate_any_size


def make_inpaint_fn(config, model, sde: LinearSDE, mesh: Mesh, batch_size: int,
                    sampling_config=None) -> Callable:
    """`inpaint(params, rng, labels, x_known, mask) -> (samples, nfe)`, sharded like generate.

    x_known: float [batch_size, H, W, C] in the model's data range; mask: [H, W, 1], 1 = known.
    The method is `sampling.method` (one of the SDE samplers that support replacement).
    """
    sampling_config = sampling_config or config.sampling
    padded = _padded_size(mesh, batch_size)
    guidance = float(sampling_config.guidance_scale) if is_guided(config) else 1.0
    options = sampling.sampler_options(sampling_config)  # the method's own keys only

    if classifier_scale(config, sampling_config):
        raise ValueError("sampling.classifier_scale does not apply to inpainting; set it to 0.")

    def inpaint(params, rng, labels, x_known, mask):
        score_fn = score_fn_for(config, model, sde, params, labels=labels,
                                guidance_scale=guidance)
        result = sampling.inpaint(rng, score_fn, sde, x_known, mask,
                                  method=sampling_config.method, **options)
        return jax.lax.with_sharding_constraint(result.samples, batch_sharding(mesh)), result.nfe

    jitted = jax.jit(inpaint, out_shardings=(batch_sharding(mesh), replicated(mesh)))

    def inpaint_any_size(params, rng, labels, x_known, mask):
        samples, nfe = jitted(params, rng, _on_devices(mesh, labels, padded),
                              _on_devices(mesh, x_known, padded), jnp.asarray(mask))
        return samples[:batch_size], nfe

    return inpaint_any_size


def sample_labels(config, rng: jax.Array, batch_size: int) -> jax.Array | None:
    """Uniformly random class labels for conditional (or classifier-guided) sampling, None
    otherwise."""
    if is_guided(config) and not config.model.conditional:
        raise ValueError("A text model samples from prompts: pass their encoding as labels "
                         "(diffjax.sampling.prompts).")
    if not uses_labels(config):
        return None
    return jax.random.randint(rng, (batch_size,), 0, config.data.num_classes, jnp.int32)


def draw_batch(config, generate, params, rng: jax.Array, batch_size: int,
               labels=None, extra_inputs: tuple = ()
               ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(uint8 images [B, H, W, C], int32 labels [B] or None, NFE), the same on every process.

    Class-conditional models get `labels`, or uniformly random ones; text models get `labels`
    (their conditioning pytree, which is returned as given); `extra_inputs` are passed on to
    `generate` after the labels (inpainting's known images and mask).
    """
    sample_rng, label_rng = jax.random.split(rng)
    if labels is None:
        labels = sample_labels(config, label_rng, batch_size)
    elif not is_guided(config) and not uses_labels(config):
        labels = None
    samples, nfe = generate(params, sample_rng, labels, *extra_inputs)
    # Each process holds only its devices' rows; tiled gathering rebuilds the global batch.
    samples = multihost_utils.process_allgather(samples, tiled=True)
    centered, dequantize = pixel_range(config)
    pixels = data_lib.from_model_range(samples, centered=centered, dequantize=dequantize)
    if labels is not None and not isinstance(labels, dict):
        labels = np.asarray(labels, np.int32)
    return pixels, labels, int(jax.device_get(nfe))


def requested_labels(config, num_samples: int) -> np.ndarray | None:
    """The labels `sampling.labels` asks for, or None (random labels / unconditional)."""
    spec = str(config.sampling.labels).strip()
    if not uses_labels(config) or not spec:
        return None
    if spec == "grid":
        return np.asarray(grid_labels(num_samples, config.data.num_classes), np.int32)
    try:
        ids = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        ids = []
    if not ids or any(not 0 <= i < config.data.num_classes for i in ids):
        raise ValueError(f"sampling.labels={spec!r} is not 'grid' or a list of class ids in "
                         f"[0, {config.data.num_classes}); e.g. --config.sampling.labels=3,7.")
    return np.resize(np.asarray(ids, np.int32), num_samples)
