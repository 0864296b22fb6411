"""Pre-flight: the whole config, checked before any data is read or anything is compiled.

`validate(config, mode)` runs at the start of every mode. A wrong value costs one line naming the
key and the fix, instead of a failure 50,000 steps in (a sampler name checked only at the first
sample grid) or a silent misbehaviour (a class-conditional model on a dataset without labels).

Three layers, cheapest first:
1. Ranges and syntax of individual keys (`diffjax.config.checks`, eval selections, split names).
2. Everything that needs other keys or the machine: registry names, the mesh against the
   device count, batch divisibility, the dataset's metadata (it exists, the split exists, image
   shape, labels), all without reading a record.
3. Tracing, never compiling: `build_experiment` (the network's init under `jax.eval_shape`, so
   image sizes that the network cannot take fail here with the network's own message), then the
   train step (train mode) and the configured sampler under `jax.eval_shape`, which checks every
   sampler option with the sampler's own error.
`--mode=compile` reads no data and checks its own keys, the topology and the mesh over the
topology's abstract devices instead (`check_compile`); its lowering is the trace.
"""

from __future__ import annotations

import difflib
import re

import jax
import jax.numpy as jnp

from diffjax.config.checks import ConfigError, check_ranges, fail
from diffjax.storage import filesystem as fs


# Which checks of layers 2 and 3 each mode needs.
MODES_TRAINING = ("train",)
MODES_SAMPLING = ("train", "sample", "eval")


def check_eval_selection(config) -> None:
    from diffjax.evaluation.stats import parse_reference_split

    selection = str(config.eval.checkpoints).strip().lower()
    if selection not in ("all", "latest", "watch") and \
            not re.fullmatch(r"\s*\d+(\s*,\s*\d+)*\s*,?\s*", selection):
        fail("eval.checkpoints", config.eval.checkpoints, "is not a checkpoint selection",
             "use all, latest, watch or a list of steps such as 1000,2000")
    try:
        parse_reference_split(config.eval.reference_split)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_data(config, mode: str) -> None:
    """The dataset's metadata, not its records: name, split, image shape, labels."""
    from diffjax import data as data_lib

    name = config.data.dataset
    if name not in data_lib.EMBEDDED_BUILDERS:
        import tensorflow_datasets as tfds

        known = set(tfds.list_builders()) | set(data_lib.EMBEDDED_BUILDERS)
        if name.split("/")[0].split(":")[0] not in known:
            close = difflib.get_close_matches(name.split("/")[0], sorted(known), n=3)
            hint = f" (closest: {', '.join(close)})" if close else ""
            fail("data.dataset", name, f"is not a TFDS dataset{hint}",
                 "pass a name from `tfds.list_builders()` or the embedded 'digits'")
    builder = data_lib.dataset_builder(config.data)
    splits = sorted(builder.info.splits)
    wanted = {"train": [config.data.split], "encode_latents": [config.data.split]}.get(mode, [])
    if mode == "likelihood":
        wanted = [config.eval.likelihood_split]
    for split in wanted:
        if split not in splits:
            key = "eval.likelihood_split" if mode == "likelihood" else "data.split"
            fail(key, split, f"is not a split of {name!r} (it has {splits})",
                 f"set --config.{key} to one of them")
    features = builder.info.features
    if "image" in features:
        shape = tuple(features["image"].shape)
        want = (config.data.image_size, config.data.image_size, config.data.num_channels)
        # encode_latents center-crops and resizes (DiT's preprocessing): only channels must agree.
        resized = mode == "encode_latents"
        if None not in shape and (shape[-1] != want[-1] if resized else shape != want):
            fail("data.image_size", config.data.image_size,
                 f"with data.num_channels={config.data.num_channels} does not match {name!r}, "
                 f"whose images are {shape}",
                 f"set --config.data.image_size={shape[0]} "
                 f"--config.data.num_channels={shape[-1]}")
    if config.model.conditional:
        label = features["label"] if "label" in features else None
        if label is None or not hasattr(label, "num_classes"):
            fail("model.conditional", True, f"needs class labels, but {name!r} has none",
                 "set --config.model.conditional=False or use a labelled dataset")
        if label.num_classes != config.data.num_classes:
            fail("data.num_classes", config.data.num_classes,
                 f"differs from {name!r}'s {label.num_classes} classes",
                 f"set --config.data.num_classes={label.num_classes}")


def check_batch_divisibility(config, mesh) -> None:
    from diffjax.parallel.mesh import batch_axis_size

    parallel = batch_axis_size(mesh)
    b, k = config.training.batch_size, config.training.microbatches
    if b % k or (b // k) % parallel:
        fail("training.batch_size", b,
             f"with microbatches={k} does not give a per-pass batch divisible by the "
             f"{parallel} data-parallel devices (mesh data x fsdp)",
             f"use a multiple of {k * parallel}, or change --config.training.microbatches")
    processes = jax.process_count()
    if b % processes:
        fail("training.batch_size", b, f"is not divisible by the {processes} processes",
             f"use a multiple of {processes}")


def trace_train_step(config, experiment) -> None:
    from diffjax.training.step import abstract_batch, jit_train_step

    with experiment.activate():
        jax.eval_shape(jit_train_step(experiment), experiment.spec.abstract,
                       abstract_batch(experiment))


def check_latent_mode(config, mode: str) -> None:
    """The first stage exists and, for training, the latent dataset fits the config."""
    from diffjax.latents import latent_mode

    if mode == "likelihood":
        fail("data.latent_dir", config.data.latent_dir, "is set, and bits/dim of latents are "
             "not bits/dim of images", "use --mode=likelihood on a pixel-space model")
    if mode == "sample" and config.sampling.inpaint:
        fail("sampling.inpaint", config.sampling.inpaint, "masks pixels, but this model "
             "samples latents", "inpaint with a pixel-space model")
    path = config.autoencoder.pretrained
    if not latent_mode.is_diffjax_run(path) and not fs.exists(path):
        hint = ("train it first: --mode=train_autoencoder with the same --workdir"
                if path.rstrip("/").endswith(latent_mode.AUTOENCODER_SUBDIR) else
                "point --config.autoencoder.pretrained at a diffusers AutoencoderKL folder "
                "(e.g. huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir DIR)")
        fail("autoencoder.pretrained", path, "holds no first stage", hint)
    shape = latent_mode.model_input_shape(config)  # image size divisible by the VAE's factor
    if mode == "train":
        from diffjax.latents import check_latent_metadata, read_metadata

        check_latent_metadata(read_metadata(config.data.latent_dir), config,
                              model_input_shape=shape)


def trace_sampler(config, experiment, batch_size: int) -> None:
    from diffjax import sampling
    from diffjax.experiment import score_fn_for
    from diffjax.sampling.generate import image_shape

    labels = jnp.zeros((batch_size,), jnp.int32) if config.model.conditional else None
    guidance = float(config.sampling.guidance_scale) if config.model.conditional else 1.0

    def generate(params, rng):
        score_fn = score_fn_for(config, experiment.model, experiment.sde, params, labels=labels,
                                guidance_scale=guidance)
        return sampling.sample(config.sampling, rng, score_fn, experiment.sde,
                               image_shape(config, batch_size))

    with experiment.activate():
        jax.eval_shape(generate, experiment.spec.abstract.ema_params, jax.random.key(0))


def check_compile(config):
    """`--mode=compile`: its keys, the topology's name (and libtpu for a TPU), the mesh over the
    topology's devices and the batch over its data-parallel chips and hosts; the experiment."""
    import math

    from diffjax.experiment import build_experiment
    from diffjax.parallel import topologies
    from diffjax.parallel.mesh import batch_axis_size

    c = config.compile
    if not str(c.topology).strip():
        fail("compile.topology", c.topology, "is empty", "name a TPU slice (v4-8, v5p-256, "
             "v5e-16, v6e-8), a shape (v5p:4x4x12) or cpu")
    if c.what not in ("train", "sample"):
        fail("compile.what", c.what, "is not train or sample", "set --config.compile.what=train "
             "(the train step) or sample (the configured sampler)")
    if c.num_slices < 1:
        fail("compile.num_slices", c.num_slices, "must be >= 1", "set the number of slices")
    if c.memory_per_chip_gib < 0:
        fail("compile.memory_per_chip_gib", c.memory_per_chip_gib, "must be >= 0",
             "set 0 for the chip's HBM")
    dcn = math.prod(int(config.mesh[f"dcn_{axis}"]) for axis in ("data", "fsdp", "tensor"))
    if dcn != c.num_slices:
        fail("compile.num_slices", c.num_slices, f"differs from the {dcn} slice(s) of the DCN "
             f"mesh (mesh.dcn_data x dcn_fsdp x dcn_tensor)",
             f"set --config.mesh.dcn_data={c.num_slices} (or another dcn_ axis) with it")
    try:
        if str(c.topology).strip().lower() != "cpu":
            topologies.parse(c.topology)
        target = topologies.compile_target(c.topology, int(c.num_slices))
    except topologies.TopologyError as error:
        raise ConfigError(f"config.compile.topology={c.topology!r}: {error}") from None
    from diffjax.modes.compile import without_first_stage_weights

    experiment = build_experiment(without_first_stage_weights(config), devices=target.devices)
    parallel = batch_axis_size(experiment.mesh)
    b, k = config.training.batch_size, config.training.microbatches
    if c.what == "train":
        if b % k or (b // k) % parallel:
            fail("training.batch_size", b,
                 f"with microbatches={k} does not give a per-pass batch divisible by the "
                 f"{parallel} data-parallel chips of {target.name} (mesh data x fsdp)",
                 f"use a multiple of {k * parallel}")
        if b % target.num_hosts:
            fail("training.batch_size", b, f"is not divisible by the {target.num_hosts} hosts "
                 f"of {target.name}", f"use a multiple of {target.num_hosts}")
    return experiment


def validate(config, mode: str):
    """Raises ConfigError (or the builders' ValueError) naming the first bad key; returns the
    Experiment it built so callers need not build it again."""
    from diffjax.experiment import build_experiment

    check_ranges(config)
    check_eval_selection(config)
    if mode == "compile":
        return check_compile(config)
    if config.model.conditional and config.data.num_classes < 1:
        fail("data.num_classes", config.data.num_classes, "must be >= 1 for a conditional model",
             "set it to the number of classes")
    if mode == "train_autoencoder":
        from diffjax.latents.latent_mode import autoencoder_training_config

        ae_config = autoencoder_training_config(config)
        check_data(ae_config, "train")
        experiment = build_experiment(ae_config, task="autoencoder")
        check_batch_divisibility(ae_config, experiment.mesh)
        trace_train_step(ae_config, experiment)
        return experiment
    from diffjax.latents.latent_mode import is_latent

    # A latent run trains without the image dataset (the latents name it); evaluation needs it
    # only to compute reference statistics that eval.reference_stats does not provide.
    needs_images = not (is_latent(config) and mode in ("train", "sample")) and \
        not (mode == "eval" and config.eval.reference_stats)
    if needs_images:
        check_data(config, mode)
    if is_latent(config) or mode == "encode_latents":
        if not config.data.latent_dir:
            fail("data.latent_dir", "", "is empty", "set it to where the latents go")
        check_latent_mode(config, mode)
    if mode in ("fid_stats", "encode_latents"):
        return None
    experiment = build_experiment(config)
    if mode in MODES_TRAINING:
        check_batch_divisibility(config, experiment.mesh)
        trace_train_step(config, experiment)
    if mode in MODES_SAMPLING:
        from diffjax.parallel.mesh import batch_axis_size

        # One row per data-parallel device traces the same program as any batch size.
        rows = batch_axis_size(experiment.mesh)
        for variant in _sampling_variants(config, mode):
            trace_sampler(variant, experiment, rows)
    if mode == "sample":
        check_sample_mode(config)
    return experiment


def _sampling_variants(config, mode: str) -> list:
    """The configs whose sampler will run: every point of eval.sweep in eval mode."""
    if mode != "eval":
        return [config]
    from diffjax.evaluation.settings import settings_from_config

    try:
        return [setting.config for setting in settings_from_config(config)]
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_sample_mode(config) -> None:
    from diffjax.diffusion.masks import load_mask
    from diffjax.sampling import inpainting
    from diffjax.sampling.generate import requested_labels

    requested_labels(config, int(config.sampling.num_samples))
    if config.sampling.inpaint:
        load_mask(config.sampling.inpaint, config.data.image_size)
        methods = sorted(inpainting.INPAINT_METHODS)
        if config.sampling.method not in methods:
            fail("sampling.method", config.sampling.method, "cannot inpaint (replacement needs "
                 "fresh noise at every step)", f"use one of {methods} with sampling.inpaint")
