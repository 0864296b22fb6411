"""The experiment a config describes, and its network bound to parameters: what every mode needs.

`build_experiment(config)` turns a config into the mesh, the network, the diffusion process, the
optimizer and the abstract (sharded) training state. Training, sampling, evaluation, likelihoods
and the checkpoint converters all start from it, so they agree on shapes, shardings and on what the
network's output means.

A network is `net(x_in, noise_cond, labels)`; `network()` binds a module to its parameters and
`score_fn_for()` turns that into the model function (a score function that also gives x0/eps
predictions) every sampler and loss takes.

`labels` is the conditioning pytree: None (unconditional), int32 class ids [B]
(`model.conditional`), or for text models (`data.text_encoder`) the cached text encoder
outputs {"states": [B, L, D] float32, "mask": [B, L] int32, "pooled": [B, P] float32}.
`null_condition` is what classifier-free guidance and caption dropout put in its place.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from diffjax import latents
from diffjax.diffusion.guidance import CONDITIONAL, classifier_free_guidance
from diffjax.diffusion.parameterization import ModelFn, get_parameterization, make_score_fn
from diffjax.diffusion.processes import LinearSDE, get_process
from diffjax.latents import text_cache
from diffjax.latents.first_stage import is_diffjax_run
from diffjax.latents.latent_mode import (AUTOENCODER_SUBDIR, autoencoder_training_config, is_latent,
                                         model_input_shape)
from diffjax.models import build_classifier, build_model
from diffjax.parallel.mesh import create_mesh
from diffjax.parallel.sharding import rules_from_config
from diffjax.state.optimizer import make_optimizer
from diffjax.state.train_state import ShardedStateSpec, state_spec
from diffjax.storage import filesystem as fs, workdir as workdir_lib
from diffjax.storage.base_runs import FrozenBase
from diffjax.storage.checkpoints import Checkpointer


@dataclasses.dataclass
class Experiment:
    """Everything built from a config, for the loop, sampling, evaluation and notebooks."""

    config: Any
    mesh: Mesh
    rules: tuple
    model: nn.Module
    sde: LinearSDE | None  # None for the first stage
    optimizer: Any
    spec: ShardedStateSpec
    task: str = "diffusion"
    # A LoRA adapter's or a ControlNet's frozen base network (the state holds only what trains).
    frozen: FrozenBase | None = None

    def example_input(self) -> tuple:
        return example_input(self.config, self.task)

    def network_params(self, trainable):
        """The parameters `model` is applied with: the trained ones, joined to the frozen base
        when there is one."""
        if self.frozen is None:
            return trainable
        return self.frozen.combine(self.frozen.params, trainable)

    def abstract_network_params(self):
        abstract = self.spec.abstract.ema_params
        return abstract if self.frozen is None else self.frozen.combine(self.frozen.abstract,
                                                                        abstract)

    @contextlib.contextmanager
    def activate(self):
        """The mesh and logical-axis rules must be active whenever the network is traced."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield


# What a run trains: the diffusion model (on pixels or latents), the first stage of latent
# diffusion (`--mode=train_autoencoder`), or a noise-conditional classifier for classifier
# guidance (`--mode=train_classifier`).
TASKS = ("diffusion", "autoencoder", "classifier")


def example_input(config, task: str = "diffusion") -> tuple:
    """The batch-1 inputs a network is initialised with: (x, noise_cond, labels) for the
    diffusion network (x are latents in latent mode; noise_cond [1, 2] with a second time
    input) and the classifier, (images,) for the first stage."""
    if task == "autoencoder":
        d = config.data
        return (jnp.zeros((1, d.image_size, d.image_size, d.num_channels), jnp.float32),)
    x = jnp.zeros((1, *model_input_shape(config)), jnp.float32)
    if task == "classifier":
        return x, jnp.zeros((1,), jnp.float32), None
    return x, example_noise_cond(config), example_condition(config, 1)


def example_noise_cond(config, batch: int = 1) -> jax.Array:
    """Zeros of the network's noise input: [B], or [B, 2] with a second time input (MeanFlow's
    (c(t), t - r), `model.second_time_embedding`)."""
    second = bool(config.model.get("second_time_embedding", False))
    return jnp.zeros((batch, 2) if second else (batch,), jnp.float32)


def process_from_config(config) -> LinearSDE:
    """The configured process; TrigFlow's sigma_d defaults to model.sigma_data."""
    sde = config.sde
    if sde.name == "trigflow" and sde.get("sigma_data") is None:
        sde = sde.copy_and_resolve_references()
        with sde.unlocked():
            sde.sigma_data = float(config.model.sigma_data)
    return get_process(sde)


def is_guided(config) -> bool:
    """The model takes a condition, so classifier-free guidance applies: classes or text."""
    return bool(config.model.conditional) or text_cache.is_text(config)


def example_condition(config, batch: int, abstract: bool = False):
    """A batch of the config's conditioning (zeros; ShapeDtypeStructs when `abstract`), or None."""
    if text_cache.is_text(config):
        length, width, pooled = text_cache.conditioning_shapes(config)
        shapes = {"states": ((batch, length, width), jnp.float32),
                  "mask": ((batch, length), jnp.int32), "pooled": ((batch, pooled), jnp.float32)}
    elif config.model.conditional:
        shapes = {"labels": ((batch,), jnp.int32)}
    else:
        shapes = {}
    made = {k: jax.ShapeDtypeStruct(*v) if abstract else jnp.zeros(*v) for k, v in shapes.items()}
    condition = made.get("labels", made) if made else None
    if not config.model.get("controlnet", ""):
        return condition
    # A ControlNet takes {"labels": the base's condition, "cond": conditioning images}.
    d = config.data
    image = ((batch, d.image_size, d.image_size, d.num_channels), jnp.float32)
    return {"labels": condition,
            "cond": jax.ShapeDtypeStruct(*image) if abstract else jnp.zeros(*image)}


def null_condition(config):
    """The null of classifier-free guidance for one example: the null class id, or the null
    caption's encoding stored by encode_latents (text_cache.null_conditioning)."""
    if text_cache.is_text(config):
        return {k: jnp.asarray(v) for k, v in text_cache.null_conditioning(config).items()}
    return config.data.num_classes


def build_experiment(config, devices=None, task: str = "diffusion") -> Experiment:
    """`devices` defaults to all devices; tests pass a subset to compare meshes in one process."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")
    mesh = create_mesh(config.mesh, devices)
    rules = rules_from_config(config.mesh)
    frozen = None
    if task == "autoencoder":
        model, sde = latents.build_autoencoder(config), None
    elif task == "classifier":
        model, sde = build_classifier(config), process_from_config(config)
    else:
        model, sde = build_model(config), process_from_config(config)
        model, frozen = _on_frozen_base(config, model, mesh, rules)
    optimizer = make_optimizer(config.optim, total_steps=config.training.num_train_steps)
    # Built inside another experiment's `activate()` (a classifier or teacher beside the
    # network), that one's rules must not constrain this abstract state.
    with nn.logical_axis_rules(()):
        spec = state_spec(model, optimizer, example_input(config, task), mesh, rules,
                          trainable=frozen.select if frozen else None)
    return Experiment(config, mesh, rules, model, sde, optimizer, spec, task, frozen)


def _sharded_params(model: nn.Module, example: tuple, mesh: Mesh, rules) -> tuple[Any, Any]:
    """(abstract parameters with shardings, shardings) of `model`, nothing allocated."""
    from diffjax.parallel.sharding import tree_shardings

    boxed = jax.eval_shape(lambda r: model.init({"params": r, "dropout": r}, *example,
                                                train=False)["params"], jax.random.key(0))
    abstract = nn.unbox(boxed)
    shardings = tree_shardings(nn.get_partition_spec(boxed), abstract, mesh, rules)
    abstract = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
        leaf.shape, leaf.dtype, sharding=sharding), abstract, shardings)
    return abstract, shardings


def _on_frozen_base(config, model: nn.Module, mesh: Mesh, rules):
    """(network, FrozenBase or None) for LoRA / ControlNet runs: the state then holds only the
    adapter / the ControlNet (`FrozenBase.select`)."""
    m = config.model
    lora_rank, controlnet = int(m.lora.rank), str(m.controlnet or "")
    if not lora_rank and not controlnet:
        return model, None
    if lora_rank and controlnet:
        raise ValueError("model.lora.rank and model.controlnet both set: a run trains one of "
                         "them; set --config.model.lora.rank=0 or --config.model.controlnet=''.")
    key, base = ("model.lora.base", m.lora.base) if lora_rank else ("model.controlnet_base",
                                                                     m.controlnet_base)
    if not base:
        raise ValueError(f"{key} is empty; set --config.{key}=WORKDIR of the trained diffjax run "
                         f"to build on (the same network settings).")
    plain_input = (jnp.zeros((1, *model_input_shape(config)), jnp.float32),
                   example_noise_cond(config),
                   jnp.zeros((1,), jnp.int32) if m.conditional else None)
    abstract, shardings = _sharded_params(model, plain_input, mesh, rules)
    if lora_rank:
        from diffjax import lora

        settings = lora.LoraSettings.from_config(m.lora)
        network = lora.lora_network(model, settings)
        adapter = lora.split(jax.eval_shape(lambda: network.init(
            {"params": jax.random.key(0), "dropout": jax.random.key(0)}, *plain_input,
            train=False))["params"])[1]
        lora.network.check_matches(adapter, settings, abstract)
        frozen = FrozenBase("lora", m.lora.base, "model.lora.base", abstract, shardings,
                            combine=lora.merge, select=lambda params: lora.split(params)[1])
        return network, frozen
    from diffjax.data.conditions import get_condition
    from diffjax.models.ncsnpp import NCSNpp
    from diffjax.models.ncsnpp_controlnet import (ControlledNetwork, NCSNppControlNet,
                                                  initialise_from_base)

    get_condition(controlnet)
    if not isinstance(model, NCSNpp):
        raise ValueError(f"model.controlnet needs score_sde's U-Net (model.name=ncsnpp), not "
                         f"model.name={m.name!r}; Stable Diffusion ControlNets are "
                         f"diffjax.models.controlnet.")
    if is_latent(config):
        raise ValueError("model.controlnet computes its conditioning from the training images; "
                         "it trains on pixels (set --config.data.latent_dir='').")
    if m.conditional and float(config.sampling.guidance_scale) != 1.0:
        raise ValueError("A ControlNet on a class-conditional base samples without "
                         "classifier-free guidance; set --config.sampling.guidance_scale=1.")
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(NCSNpp)
              if f.init and f.name not in ("parent", "name")}
    network = ControlledNetwork(model, NCSNppControlNet(
        **fields, conditioning_channels=config.data.num_channels),
        conditioning_scale=float(m.controlnet_scale))
    frozen = FrozenBase("controlnet", m.controlnet_base, "model.controlnet_base", abstract,
                        shardings, combine=lambda base, trained: {"base": base,
                                                                  "controlnet": trained},
                        select=lambda params: params["controlnet"],
                        initialise=initialise_from_base)
    return network, frozen


def network(model: nn.Module, params, *, train: bool, dropout_rng: jax.Array | None = None):
    """`net(x_in, noise_cond, labels)` for the module, with parameters bound."""

    def net(x_in, noise_cond, labels):
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        return model.apply({"params": params}, x_in, noise_cond, labels, train=train, rngs=rngs)

    return net


def classifier_network(module: nn.Module, params):
    """`classifier(x_in, noise_cond) -> logits` for a classifier module, parameters bound."""

    def classifier(x_in, noise_cond):
        return module.apply({"params": params}, x_in, noise_cond, None, train=False)

    return classifier


def score_fn_for(config, model: nn.Module, sde: LinearSDE, params, *, labels=None, train=False,
                 dropout_rng=None, guidance_scale: float = CONDITIONAL,
                 score_guidance=None) -> ModelFn:
    """The model function of `params`: a score function with `.predict` (see
    diffjax.diffusion.parameterization).

    It carries the configured parameterisation, input scaling, learned-variance split (DiT's
    learn_sigma), second time input (MeanFlow), classifier-free guidance, and `score_guidance`
    (classifier guidance, `diffjax.diffusion.classifier_guidance.score_guidance`); losses and
    samplers take it as their score_fn.
    """
    net = network(model, params, train=train, dropout_rng=dropout_rng)
    m = config.model
    learned_variance = bool(m.name in ("dit", "pixart") and m.dit.learn_sigma)
    if guidance_scale != CONDITIONAL and labels is not None:
        channels = int(config.sampling.get("guidance_channels", 0) or 0) or \
            (model_input_shape(config)[-1] if learned_variance else None)
        net = classifier_free_guidance(net, guidance_scale, null=null_condition(config),
                                       guided_channels=channels)
    scaled = m.scale_input or get_parameterization(m.parameterization).always_scale_input
    return make_score_fn(
        sde, net, parameterization=m.parameterization,
        sigma_data=m.sigma_data if scaled else None, labels=labels,
        learned_variance=learned_variance, second_time=bool(m.get("second_time_embedding", False)),
        score_guidance=score_guidance)


def open_checkpoints(workdir: str) -> Checkpointer:
    """The workdir's checkpoints, for reading; a clear error when training never ran there."""
    directory = fs.join(fs.absolute(workdir), "checkpoints")
    if not fs.is_dir(directory):
        raise FileNotFoundError(
            f"No checkpoint in {directory}; train first (--mode=train --workdir={workdir}) or "
            f"pass the --workdir of a training run.")
    return Checkpointer(workdir, async_save=False, max_to_keep=None, create=False)


def checkpoint_step(checkpointer: Checkpointer, requested: int, key: str, workdir: str) -> int:
    """The checkpoint `requested` by config key `key` (-1 = the newest), or one clear error."""
    available = checkpointer.all_steps()
    step = int(requested)
    if step < 0:
        if not available:
            raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}; train first "
                                    f"(--mode=train --workdir={workdir}).")
        return available[-1]
    if step not in available:
        raise ValueError(f"{key}={step} does not exist in {checkpointer.directory} (it has "
                         f"{available}); pick one of those or -1 for the newest.")
    return step


def restore_params(experiment: Experiment, checkpointer: Checkpointer, step: int,
                   use_ema: bool):
    """The EMA (or raw) parameters of checkpoint `step`, sharded as in training."""
    # Other shapes are named in one line (parameter and config keys), as when training resumes,
    # instead of Orbax's advice about `strict`.
    checkpointer.check_matches(experiment.spec, step, workdir_lib.explain_differences(
        checkpointer.workdir, experiment.config))
    # The whole state is restored (optimizer moments too): it is what the spec describes, and
    # one restore per evaluated checkpoint is cheap next to sampling.
    state, data = checkpointer.restore(experiment.spec, step)
    if experiment.frozen is not None:
        experiment.frozen.check(data, f"checkpoint {step} in {checkpointer.directory}")
    return experiment.network_params(state.ema_params if use_ema else state.params)


def load_first_stage(config, *, mesh=None):
    """The configured first stage as a `diffjax.latents.VAE` (config paths resolved)."""
    path = config.autoencoder.pretrained
    if not is_diffjax_run(path):
        if not path or not fs.exists(path):
            hint = (" (train it first: --mode=train_autoencoder with the same --workdir)"
                    if path.rstrip("/").endswith(AUTOENCODER_SUBDIR) else
                    " (a diffusers AutoencoderKL folder, e.g. huggingface-cli download "
                    "stabilityai/sd-vae-ft-ema --local-dir DIR on a machine with internet)")
            raise FileNotFoundError(f"No first stage at autoencoder.pretrained={path!r}{hint}.")
        return latents.vae_from_config(config, mesh=mesh)
    return _load_diffjax_run(config, path, mesh)


def _load_diffjax_run(config, run: str, mesh):
    ae_config = autoencoder_training_config(config)
    experiment = build_experiment(ae_config, task="autoencoder")
    checkpointer = Checkpointer(run, async_save=False, max_to_keep=None, create=False)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"The first-stage run {run} has no checkpoint; train it "
                                    f"with --mode=train_autoencoder.")
        # A run of another network (a diffusion workdir) is one line, not Orbax's listing of
        # both trees.
        explain = workdir_lib.explain_differences(run, ae_config)
        checkpointer.check_matches(experiment.spec, step, lambda: (
            f"{explain()} autoencoder.pretrained={run} must be a first-stage run "
            f"(--mode=train_autoencoder writes WORKDIR/{AUTOENCODER_SUBDIR}) or a diffusers "
            f"AutoencoderKL folder."))
        state, _ = checkpointer.restore(experiment.spec, step)
    finally:
        checkpointer.close()
    scale, shift = latents.latent_scale_shift(config)
    return latents.VAE(experiment.model, jax.device_get(state.ema_params), scale=scale,
                       shift=shift, mesh=mesh, batch_size=config.autoencoder.batch_size,
                       name=f"diffjax first stage {run} (step {step})")


# --- the classifier of classifier guidance ---------------------------------------------------

CLASSIFIER_SUBDIR = "classifier"


def classifier_sigma_data(config) -> float | None:
    """The sigma_data of the classifier's input scaling (EDM's c_in), or None where it takes x_t
    itself (ADM's classifiers, trained on unscaled x_t)."""
    return None if config.classifier.name == "adm" else float(config.model.sigma_data)


def classifier_training_config(config):
    """The config that trains the classifier (`--mode=train_classifier`): the classifier
    section's train_steps, train_batch_size and lr replace the training ones; pixels, never
    latents; everything else (data, process, optimizer) shared."""
    c = config.classifier
    derived = config.copy_and_resolve_references()
    with derived.unlocked():
        derived.training.num_train_steps = int(c.train_steps)
        derived.training.batch_size = int(c.train_batch_size)
        derived.training.objective = "diffusion"
        derived.optim.lr = float(c.lr)
        derived.model.teacher = ""
    derived.lock()
    return derived


def resolve_classifier_path(config, workdir: str):
    """`config` with classifier.pretrained absolute ("" = WORKDIR/classifier)."""
    path = config.classifier.get("pretrained", "") if "classifier" in config else None
    if path is None:
        return config
    resolved_path = fs.absolute(path) if path else fs.join(fs.absolute(workdir), CLASSIFIER_SUBDIR)
    if resolved_path == path:
        return config
    resolved = config.copy_and_resolve_references()
    with resolved.unlocked():
        resolved.classifier.pretrained = resolved_path
    resolved.lock()
    return resolved


@dataclasses.dataclass
class Classifier:
    module: nn.Module
    params: Any
    step: int


def load_classifier(config, devices=None) -> Classifier:
    """The EMA parameters of the newest checkpoint of classifier.pretrained (a run of
    `--mode=train_classifier`)."""
    run = config.classifier.pretrained
    if not run or not fs.is_dir(fs.join(run, "checkpoints")):
        raise FileNotFoundError(
            f"No classifier at classifier.pretrained={run!r}; train one first with "
            f"--mode=train_classifier (same --config and --workdir).")
    experiment = build_experiment(classifier_training_config(config), devices,
                                  task="classifier")
    checkpointer = Checkpointer(run, async_save=False, max_to_keep=None, create=False)
    params, step = newest_ema_params(experiment, checkpointer, f"The classifier run {run} has "
                                     f"no checkpoint; train it with --mode=train_classifier.")
    return Classifier(experiment.model, params, step)


def newest_ema_params(experiment: Experiment, checkpointer: Checkpointer, missing: str):
    """(EMA parameters, step) of the newest checkpoint of a run this one builds on (a guiding
    classifier, a distillation teacher); closes `checkpointer`; `missing` is the error when
    there is none."""
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(missing)
        with experiment.activate():
            state, _ = checkpointer.restore(experiment.spec, step)
    finally:
        checkpointer.close()
    return state.ema_params, step
