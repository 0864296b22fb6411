"""The jitted sampling function shared by training (grids), `--mode=sample` and evaluation, and
`draw_batch`, which turns one call of it into uint8 images on every process.

`make_generate_fn` returns `generate(params, rng, labels) -> (samples, nfe)`; the batch of noise
is created sharded over the data axes of the mesh, so the whole sampler runs data-parallel and
never gathers to one device until the caller asks for the images.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax import data as data_lib
from diffjax import sampling
from diffjax.experiment import score_fn_for
from diffjax.parallel.mesh import batch_axis_size
from diffjax.parallel.sharding import batch_sharding, replicated
from diffjax.sde import LinearSDE


def image_shape(config, batch_size: int) -> tuple[int, int, int, int]:
    d = config.data
    return (batch_size, d.image_size, d.image_size, d.num_channels)


def make_generate_fn(config, model, sde: LinearSDE, mesh: Mesh, batch_size: int,
                     sampling_config=None) -> Callable:
    """`generate(params, rng, labels)`; labels is an int32 [batch_size] array or None.

    Any batch size works: the batch is padded to a multiple of the data-parallel devices (the
    padding is sampled and dropped), so a 10-image grid runs on 8 devices.
    """
    sampling_config = sampling_config or config.sampling
    parallel = batch_axis_size(mesh)
    padded = -(-batch_size // parallel) * parallel
    shape = image_shape(config, padded)
    guidance = float(sampling_config.guidance_scale) if config.model.conditional else 0.0

    def generate(params, rng, labels):
        score_fn = score_fn_for(config, model, sde, params, labels=labels,
                                guidance_scale=guidance)
        result = sampling.sample(sampling_config, rng, score_fn, sde, shape)
        samples = jax.lax.with_sharding_constraint(result.samples, batch_sharding(mesh))
        return samples, result.nfe

    jitted = jax.jit(generate, out_shardings=(batch_sharding(mesh), replicated(mesh)))

    def generate_any_size(params, rng, labels):
        if labels is not None and padded != batch_size:
            labels = jnp.pad(jnp.asarray(labels), (0, padded - batch_size))
        if labels is not None:
            labels = jax.device_put(labels, batch_sharding(mesh))
        samples, nfe = jitted(params, rng, labels)
        return (samples if padded == batch_size else samples[:batch_size]), nfe

    return generate_any_size


def sample_labels(config, rng: jax.Array, batch_size: int) -> jax.Array | None:
    """Uniformly random class labels for conditional models, None otherwise."""
    if not config.model.conditional:
        return None
    return jax.random.randint(rng, (batch_size,), 0, config.data.num_classes, jnp.int32)


def draw_batch(config, generate, params, rng: jax.Array, batch_size: int
               ) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(uint8 images [B, H, W, C], int32 labels [B] or None, NFE), the same on every process."""
    sample_rng, label_rng = jax.random.split(rng)
    labels = sample_labels(config, label_rng, batch_size)
    samples, nfe = generate(params, sample_rng, labels)
    # Each process holds only its devices' rows; tiled gathering rebuilds the global batch.
    samples = multihost_utils.process_allgather(samples, tiled=True)
    pixels = data_lib.from_model_range(samples, centered=config.data.centered,
                                       dequantize=config.data.dequantize)
    labels = None if labels is None else np.asarray(labels, np.int32)
    return pixels, labels, int(jax.device_get(nfe))
