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
        if split.split("[")[0] not in splits:  # TFDS slices ("train[:64]") are splits too
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
    from diffjax.training.objectives import objective_for
    from diffjax.training.step import abstract_batch, jit_train_step, step_arguments

    objective = objective_for(experiment, teacher)
    with experiment.activate():
        jax.eval_shape(jit_train_step(experiment, objective), experiment.spec.abstract,
                       abstract_batch(experiment),
                       *step_arguments(experiment, objective, abstract=True))


def check_latent_mode(config, mode: str) -> None:
    """The first stage exists and, for training, the latent dataset fits the config."""
    from diffjax.latents import latent_mode
    from diffjax.latents.first_stage import is_diffjax_run

    if mode == "likelihood":
        fail("data.latent_dir", config.data.latent_dir, "is set, and bits/dim of latents are "
             "not bits/dim of images", "use --mode=likelihood on a pixel-space model")
    if mode == "sample" and config.sampling.inpaint:
        fail("sampling.inpaint", config.sampling.inpaint, "masks pixels, but this model "
             "samples latents", "inpaint with a pixel-space model")
    path = config.autoencoder.pretrained
    if not is_diffjax_run(path) and not fs.exists(path):
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


def check_text_mode(config, mode: str) -> None:
    """Text models: one kind of conditioning, a network that takes text, captions to read, and
    (training, sampling) a complete cache of this encoder's outputs."""
    from diffjax.latents import latent_mode, read_metadata, text_cache

    d = config.data
    if mode == "likelihood":
        fail("data.text_encoder", d.text_encoder, "is set, and bits/dim of text models are not "
             "implemented", "use --mode=likelihood on an unconditional or class model")
    if config.model.conditional:
        fail("model.conditional", True, f"asks for class labels, but data.text_encoder="
             f"{d.text_encoder!r} conditions on text", "set --config.model.conditional=False")
    from diffjax.models import TEXT_MODELS

    if config.model.name not in TEXT_MODELS:
        fail("model.name", config.model.name, "takes no text conditioning",
             f"use one of {list(TEXT_MODELS)} with data.text_encoder")
    if d.captions_per_image < 1:
        fail("data.captions_per_image", d.captions_per_image, "must be >= 1", "set it to 1 or more")
    if not 0.0 <= config.training.caption_dropout <= 1.0:
        fail("training.caption_dropout", config.training.caption_dropout, "must be in [0, 1]",
             "set it to e.g. 0.1")
    if config.training.caption_null not in text_cache.NULL_KINDS:
        fail("training.caption_null", config.training.caption_null, "is not a null caption",
             f"use one of {list(text_cache.NULL_KINDS)}")
    if not latent_mode.uses_cache(config):
        fail("data.latent_dir", "", "is empty, but a text model trains on cached text-encoder "
             "outputs", "set it (e.g. latents) and run --mode=encode_latents first")
    try:
        length = text_cache.conditioning_shapes(config)[0]  # the encoder's files exist
    except (OSError, ValueError) as error:
        raise ConfigError(f"config.data.text_encoder={d.text_encoder!r}: {error}") from None
    if d.text_encoder == "clip" and d.text_max_length not in (0, length):
        fail("data.text_max_length", d.text_max_length, f"differs from the CLIP tokenizer's "
             f"{length} tokens", "set it to 0 (CLIP's own length)")
    if mode == "eval" and d.image_folder and not config.eval.reference_stats:
        fail("eval.reference_stats", "", "is empty, and the FID of an image-folder dataset "
             "needs reference statistics", "pass an .npz with mu and sigma of its images")
    if mode == "encode_latents":
        if d.image_folder:
            if not fs.is_dir(d.image_folder):
                fail("data.image_folder", d.image_folder, "is not a folder",
                     "point it at the captioned images")
        elif not d.caption_key:
            fail("data.caption_key", "", f"is empty, so {d.dataset!r} gives no captions",
                 "name its text feature (e.g. captions/text) or set data.image_folder")
        else:
            from diffjax import data as data_lib

            features = data_lib.dataset_builder(d).info.features
            top = d.caption_key.split("/")[0]
            if top not in features:
                fail("data.caption_key", d.caption_key, f"is not a feature of {d.dataset!r} "
                     f"(it has {sorted(features)})", "name its text feature")
        return
    if mode in ("train", "sample", "eval"):
        text_cache.check_text(read_metadata(d.latent_dir), config)


# The scheduler settings of a Stable Diffusion folder that the fine-tune's process must repeat:
# scheduler_config.json key -> (config key, how diffjax names the folder's value).
_SCHEDULER_KEYS = {"num_train_timesteps": "sde.num_timesteps", "beta_schedule": "sde.beta_schedule",
                   "beta_start": "sde.beta_start", "beta_end": "sde.beta_end"}


def check_pretrained(config) -> None:
    """model.pretrained / model.sd_unet_config: the U-Net's files, and for a fine-tune the
    process and output its folder's scheduler was trained with (a v-prediction model fine-tuned
    as eps, or on another beta schedule, would unlearn what it knows)."""
    m = config.model
    if m.name != "sd_unet":
        for key in ("pretrained", "sd_unet_config"):
            if m.get(key, ""):
                fail(f"model.{key}", m[key], f"is read by model.name='sd_unet' only, not "
                     f"{m.name!r}", f"set --config.model.{key}='' (a converted checkpoint "
                     f"of another network: python -m diffjax.convert)")
        return
    from diffjax.models.sd_denoiser import architecture, diffusers_prediction_type, source_of

    try:
        key, path = source_of(m)
        architecture(m)
    except (OSError, ValueError) as error:
        raise ConfigError(str(error)) from None
    if m.get("controlnet", "") or int(m.lora.rank):
        fail("model.name", "sd_unet", "trains the whole U-Net here; LoRA and ControlNet training "
             "build on diffjax runs of score_sde's U-Net", "set model.lora.rank=0 and "
             "model.controlnet=''")
    scheduler = fs.join(path, "scheduler", "scheduler_config.json")
    if key != "model.pretrained" or not fs.is_file(scheduler):
        return
    import json

    folder = json.loads(fs.read_text(scheduler))
    if config.sde.name != "ddpm":
        fail("sde.name", config.sde.name, f"is not the discrete DDPM process that {path} was "
             f"trained with", "set --config.sde.name=ddpm (configs/sd.py:finetune does)")
    wanted = folder.get("prediction_type", "epsilon")
    if diffusers_prediction_type(m.parameterization) != wanted:
        fail("model.parameterization", m.parameterization, f"differs from {scheduler}'s "
             f"prediction_type {wanted!r}", "set --config.model.parameterization="
             + {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}.get(wanted, wanted))
    from diffjax.diffusion.processes import get_process
    from diffjax.diffusion.processes.ddpm import DEFAULT_BETA_RANGES, default_beta_range

    process = get_process(config.sde)
    for name, config_key in _SCHEDULER_KEYS.items():
        if name not in folder:
            continue
        if name in ("beta_start", "beta_end"):
            if process.beta_schedule not in DEFAULT_BETA_RANGES:
                continue
            defaults = default_beta_range(process.beta_schedule, process.num_timesteps)
            ours = getattr(process, name)
            ours = defaults[name == "beta_end"] if ours is None else ours
        else:
            ours = {"num_train_timesteps": process.num_timesteps,
                    "beta_schedule": process.beta_schedule}[name]
        theirs = folder[name]
        if name == "beta_schedule":  # diffusers' name of the cosine schedule
            ours, theirs = (str(v).replace("squaredcos_cap_v2", "cosine") for v in (ours, theirs))
        same = ours == theirs if isinstance(theirs, (str, int)) else \
            abs(float(ours) - float(theirs)) <= 1e-6 * abs(float(theirs))
        if not same:
            fail(config_key, config.sde[config_key.split(".")[1]], f"differs from {scheduler}'s "
                 f"{name}={theirs!r}", f"set --config.{config_key}={theirs}")


def trace_sampler(config, experiment, batch_size: int) -> None:
    from diffjax import sampling
    from diffjax.diffusion.classifier_guidance import score_guidance
    from diffjax.experiment import (build_experiment, classifier_network,
                                    classifier_sigma_data, classifier_training_config,
                                    example_condition, is_guided, score_fn_for)
    from diffjax.sampling.generate import classifier_scale, image_shape

    labels = example_condition(config, batch_size)
    class_labels = jnp.zeros((batch_size,), jnp.int32)  # what a guiding classifier is told
    guidance = float(config.sampling.guidance_scale) if is_guided(config) else 1.0
    scale = classifier_scale(config)
    classifier = None
    if scale:
        classifier = build_experiment(classifier_training_config(config), task="classifier")

    def generate(params, classifier_params, rng):
        guide = None
        if classifier is not None:
            guide = score_guidance(classifier_network(classifier.model, classifier_params),
                                   experiment.sde, class_labels, scale,
                                   classifier_sigma_data(config))
        score_fn = score_fn_for(config, experiment.model, experiment.sde, params,
                                labels=labels,
                                guidance_scale=guidance, score_guidance=guide)
        return sampling.sample(config.sampling, rng, score_fn, experiment.sde,
                               image_shape(config, batch_size))

    classifier_params = None if classifier is None else classifier.spec.abstract.ema_params
    with experiment.activate():
        jax.eval_shape(generate, experiment.abstract_network_params(), classifier_params,
                       jax.random.key(0))


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
    if config.pipeline.folder:
        return check_pipeline(config, mode)
    check_objective(config)
    check_eval_selection(config)
    if mode == "compile":
        return check_compile(config)
    if mode == "export":
        if config.model.name != "sd_unet":
            fail("model.name", config.model.name, "is not exported: --mode=export writes "
                 "diffusers' UNet2DConditionModel", "export a run of model.name=sd_unet")
        check_pretrained(config)
        return build_experiment(config)
    if config.model.conditional and config.data.num_classes < 1:
        fail("data.num_classes", config.data.num_classes, "must be >= 1 for a conditional model",
             "set it to the number of classes")
    if mode in ("sample", "eval"):
        check_conditioning(config, mode)
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
    from diffjax.latents.latent_mode import is_latent, uses_cache
    from diffjax.latents.text_cache import is_text

    # A latent run trains without the image dataset (the latents name it); evaluation needs it
    # only to compute reference statistics that eval.reference_stats does not provide; sampling
    # only to inpaint (a converted checkpoint samples without its training data).
    needs_images = not (uses_cache(config) and mode in ("train", "sample")) and \
        not (mode == "eval" and config.eval.reference_stats) and \
        not (mode == "sample" and not config.sampling.inpaint) and \
        not (mode == "encode_latents" and config.data.image_folder)
    if needs_images:
        check_data(config, mode)
    from diffjax.models import TEXT_MODELS

    check_pretrained(config)
    if is_text(config):
        check_text_mode(config, mode)
    elif config.model.name in TEXT_MODELS:
        fail("model.name", config.model.name, "is conditioned on text, but data.text_encoder is "
             "empty", "set --config.data.text_encoder (e.g. minilm, or clip with a Stable "
             "Diffusion folder) and encode the captions")
    if is_latent(config) or (mode == "encode_latents" and not config.data.cache_pixels):
        if not config.data.latent_dir:
            fail("data.latent_dir", "", "is empty", "set it to where the latents go")
        check_latent_mode(config, mode)
    elif uses_cache(config) and mode == "train":
        from diffjax.latents import check_latent_metadata, read_metadata

        check_latent_metadata(read_metadata(config.data.latent_dir), config)
    if mode in ("fid_stats", "encode_latents"):
        return None
    experiment = build_experiment(config)
    if mode in MODES_TRAINING:
        if config.training.eps == 0 and not experiment.sde.allows_zero_eps:
            fail("training.eps", 0.0, f"puts training times at t = 0, where the "
                 f"{config.sde.name} process has no noise", "set it > 0 (e.g. 1e-5)")
        check_batch_divisibility(config, experiment.mesh)
        teacher = check_teacher(config) if config.model.get("teacher", "") else None
        trace_train_step(config, experiment, teacher)
    # A training run without sample grids (sample_every_steps=0) never samples.
    if mode in MODES_SAMPLING and (mode != "train" or config.training.sample_every_steps):
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


def check_conditioning(config, mode: str) -> None:
    """sampling.labels or guidance on an unconditional model (every point of eval.sweep)."""
    from diffjax.sampling.run import refuse_unused_conditioning

    for variant in _sampling_variants(config, mode):
        try:
            refuse_unused_conditioning(variant, labels=mode == "sample")
        except ValueError as error:
            raise ConfigError(str(error)) from None


def check_sample_mode(config) -> None:
    from diffjax.diffusion.masks import load_mask
    from diffjax.sampling import inpainting
    from diffjax.sampling.generate import requested_labels

    requested_labels(config, int(config.sampling.num_samples))
    from diffjax.latents.text_cache import is_text

    if is_text(config):
        from diffjax.sampling.prompts import read_prompts

        if config.sampling.inpaint:
            fail("sampling.inpaint", config.sampling.inpaint, "is not implemented for text "
                 "models", "sample without it")
        read_prompts(config.sampling.prompts, "sampling.prompts", allow_empty=True)
    if config.sampling.inpaint:
        load_mask(config.sampling.inpaint, config.data.image_size)
        methods = sorted(inpainting.INPAINT_METHODS)
        if config.sampling.method not in methods:
            fail("sampling.method", config.sampling.method, "cannot inpaint (replacement needs "
                 "fresh noise at every step)", f"use one of {methods} with sampling.inpaint")


PIPELINE_MODES = ("sample", "eval")


def check_pipeline_adapters(config) -> None:
    """The LoRA files and the ControlNet folder and image exist (their contents are checked
    against the pipeline when they load, one line each)."""
    from diffjax.modes.pipeline import lora_files

    p = config.pipeline
    for path, _ in lora_files(p.lora):
        if not fs.is_file(path):
            fail("pipeline.lora", p.lora, f"names {path}, which is not a file",
                 "give the LoRA's .safetensors path")
    if p.controlnet and not fs.is_dir(p.controlnet):
        fail("pipeline.controlnet", p.controlnet, "is not a folder",
             "give a diffusers ControlNetModel folder (config.json + safetensors)")
    if p.controlnet and not fs.is_file(p.controlnet_image):
        fail("pipeline.controlnet_image", p.controlnet_image, "is not a file",
             "give the ControlNet's conditioning image (PNG or JPEG, the images' size)")
    if p.controlnet_image and not p.controlnet:
        fail("pipeline.controlnet_image", p.controlnet_image, "is set without a ControlNet",
             "set --config.pipeline.controlnet=FOLDER or leave the image empty")


def check_pipeline(config, mode: str) -> None:
    """A pretrained pipeline: the folder loads (classes, components, scheduler), prompts given,
    the image size fits the VAE; for eval, the reference data as for checkpoints."""
    from diffjax.latents.diffusers_weights import read_config
    from diffjax.modes.pipeline import read_prompts
    from diffjax.pipelines import read_pipeline_folder
    from diffjax.pipelines.schedulers import SCHEDULERS, load_scheduler

    p = config.pipeline
    if mode not in PIPELINE_MODES:
        fail("pipeline.folder", p.folder, f"is a pretrained pipeline, which --mode={mode} does "
             f"not take", "use --mode=sample or --mode=eval, or unset pipeline.folder")
    layout = read_pipeline_folder(p.folder)
    load_scheduler(p.folder)
    if p.scheduler and p.scheduler not in SCHEDULERS:
        fail("pipeline.scheduler", p.scheduler, "is not a supported scheduler",
             f"use one of {sorted(SCHEDULERS)} or '' for the folder's")
    if p.dtype not in ("float32", "bfloat16"):
        fail("pipeline.dtype", p.dtype, "is not a compute dtype", "use float32 or bfloat16")
    factor = 2 ** (len(read_config(layout.component("vae"))["block_out_channels"]) - 1)
    for key in ("height", "width"):
        if int(p[key]) % factor:
            fail(f"pipeline.{key}", p[key], f"is not a multiple of the VAE's factor {factor}",
                 f"use a multiple of {factor} (or 0 for the folder's default)")
    check_pipeline_adapters(config)
    if mode == "sample":
        read_prompts(config.sampling.prompts, "sampling.prompts")
    else:
        read_prompts(config.eval.prompts, "eval.prompts")
        if not config.eval.reference_stats:
            check_data(config, mode)
