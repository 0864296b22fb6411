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
"""

from __future__ import annotations

import difflib
import re

import jax
import jax.numpy as jnp

from diffjax.config.checks import ConfigError, check_objective, check_ranges, fail
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


def _features(config):
    from diffjax import data as data_lib

    return data_lib.dataset_builder(config.data).info.features


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


def check_teacher(config):
    """model.teacher names a run with a config and a checkpoint; returns a Teacher whose
    parameters are abstract (enough to trace the student's step)."""
    from diffjax.training.teacher import Teacher, teacher_experiment

    run = config.model.teacher
    if not fs.is_dir(fs.join(fs.absolute(run), "checkpoints")):
        fail("model.teacher", run, "holds no checkpoints", "name the --workdir of a trained "
             "diffjax run (e.g. the one `make quickstart` trains)")
    try:
        teacher, experiment = teacher_experiment(config)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None
    return Teacher(teacher, experiment, experiment.spec.abstract.ema_params, step=-1)


def check_classifier(config, mode: str) -> None:
    """The classifier of classifier guidance exists (sampling modes)."""
    path = config.classifier.pretrained
    if not path or not fs.is_dir(fs.join(path, "checkpoints")):
        fail("sampling.classifier_scale", config.sampling.classifier_scale,
             f"needs a classifier, and classifier.pretrained={path!r} has no checkpoints",
             "train it first: --mode=train_classifier with the same --config and --workdir")
    if config.data.latent_dir:
        fail("sampling.classifier_scale", config.sampling.classifier_scale, "guides pixels, "
             "but this model samples latents", "use a pixel-space model")


def trace_train_step(config, experiment, teacher=None) -> None:
    from diffjax.latents.latent_mode import is_latent, model_input_shape
    from diffjax.training.objectives import objective_for
    from diffjax.training.step import make_train_step

    d = config.data
    b = config.training.batch_size
    batch = {"label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    if is_latent(config) and experiment.task == "diffusion":
        latent = jax.ShapeDtypeStruct((b, *model_input_shape(config)), jnp.dtype(d.latent_dtype))
        batch.update(mean=latent, std=latent)
    else:
        batch["image"] = jax.ShapeDtypeStruct((b, d.image_size, d.image_size, d.num_channels),
                                              jnp.uint8)
    objective = objective_for(experiment, teacher)
    step = make_train_step(config, experiment.model, experiment.sde, experiment.optimizer,
                           objective)
    constants = getattr(objective, "constants", None)
    with experiment.activate():
        jax.eval_shape(step, experiment.spec.abstract, batch,
                       *(() if constants is None else (constants,)))


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
    from diffjax.diffusion.classifier_guidance import score_guidance
    from diffjax.experiment import (build_experiment, classifier_network,
                                    classifier_training_config, score_fn_for)
    from diffjax.sampling.generate import classifier_scale, image_shape

    labels = jnp.zeros((batch_size,), jnp.int32)
    guidance = float(config.sampling.guidance_scale) if config.model.conditional else 1.0
    scale = classifier_scale(config)
    classifier = None
    if scale:
        classifier = build_experiment(classifier_training_config(config), task="classifier")

    def generate(params, classifier_params, rng):
        guide = None
        if classifier is not None:
            guide = score_guidance(classifier_network(classifier.model, classifier_params),
                                   experiment.sde, labels, scale, float(config.model.sigma_data))
        score_fn = score_fn_for(config, experiment.model, experiment.sde, params,
                                labels=labels if config.model.conditional else None,
                                guidance_scale=guidance, score_guidance=guide)
        return sampling.sample(config.sampling, rng, score_fn, experiment.sde,
                               image_shape(config, batch_size))

    classifier_params = None if classifier is None else classifier.spec.abstract.ema_params
    with experiment.activate():
        jax.eval_shape(generate, experiment.spec.abstract.ema_params, classifier_params,
                       jax.random.key(0))


def validate(config, mode: str):
    """Raises ConfigError (or the builders' ValueError) naming the first bad key; returns the
    Experiment it built so callers need not build it again."""
    from diffjax.experiment import build_experiment

    check_ranges(config)
    check_objective(config)
    check_eval_selection(config)
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
    if mode == "train_classifier":
        from diffjax.experiment import classifier_training_config

        if config.data.latent_dir:
            fail("data.latent_dir", config.data.latent_dir, "is set, but the classifier of "
                 "classifier guidance is trained on pixels", "train it with a pixel-space config")
        clf_config = classifier_training_config(config)
        check_data(clf_config, "train")
        if "label" not in _features(clf_config):
            fail("data.dataset", config.data.dataset, "has no labels to train a classifier on",
                 "use a labelled dataset")
        experiment = build_experiment(clf_config, task="classifier")
        check_batch_divisibility(clf_config, experiment.mesh)
        trace_train_step(clf_config, experiment)
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
        teacher = check_teacher(config) if config.model.get("teacher", "") else None
        trace_train_step(config, experiment, teacher)
    if mode in MODES_SAMPLING:
        from diffjax.parallel.mesh import batch_axis_size

        # One row per data-parallel device traces the same program as any batch size.
        rows = batch_axis_size(experiment.mesh)
        for variant in _sampling_variants(config, mode):
            if mode != "train" and float(variant.sampling.get("classifier_scale", 0.0) or 0.0):
                check_classifier(variant, mode)
            elif float(variant.sampling.get("classifier_scale", 0.0) or 0.0):
                continue  # training grids are drawn without classifier guidance
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
