"""The experiment a config describes, and its network bound to parameters: what every mode needs.

`build_experiment(config)` turns a config into the mesh, the network, the diffusion process, the
optimizer and the abstract (sharded) training state. Training, sampling, evaluation, likelihoods
and the checkpoint converters all start from it, so they agree on shapes, shardings and on what the
network's output means.

A network is `net(x_in, noise_cond, labels)`; `network()` binds a module to its parameters and
`score_fn_for()` turns that into the model function (a score function that also gives x0/eps
predictions) every sampler and loss takes.
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
from diffjax.latents.first_stage import is_diffjax_run
from diffjax.latents.latent_mode import (AUTOENCODER_SUBDIR, autoencoder_training_config,
                                         model_input_shape)
from diffjax.models import build_classifier, build_model
from diffjax.parallel.mesh import create_mesh
from diffjax.parallel.sharding import rules_from_config
from diffjax.state.optimizer import make_optimizer
from diffjax.state.train_state import ShardedStateSpec, state_spec
from diffjax.storage import filesystem as fs
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

    def example_input(self) -> tuple:
        return example_input(self.config, self.task)

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
    labels = jnp.zeros((1,), jnp.int32) if config.model.conditional else None
    second = bool(config.model.get("second_time_embedding", False))
    return x, jnp.zeros((1, 2) if second else (1,), jnp.float32), labels


def process_from_config(config) -> LinearSDE:
    """The configured process; TrigFlow's sigma_d defaults to model.sigma_data."""
    sde = config.sde
    if sde.name == "trigflow" and sde.get("sigma_data") is None:
        sde = sde.copy_and_resolve_references()
        with sde.unlocked():
            sde.sigma_data = float(config.model.sigma_data)
    return get_process(sde)


def build_experiment(config, devices=None, task: str = "diffusion") -> Experiment:
    """`devices` defaults to all devices; tests pass a subset to compare meshes in one process."""
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")
    mesh = create_mesh(config.mesh, devices)
    rules = rules_from_config(config.mesh)
    if task == "autoencoder":
        model, sde = latents.build_autoencoder(config), None
    elif task == "classifier":
        model, sde = build_classifier(config), process_from_config(config)
    else:
        model, sde = build_model(config), process_from_config(config)
    optimizer = make_optimizer(config.optim, total_steps=config.training.num_train_steps)
    # Built inside another experiment's `activate()` (a classifier or teacher beside the
    # network), that one's rules must not constrain this abstract state.
    with nn.logical_axis_rules(()):
        spec = state_spec(model, optimizer, example_input(config, task), mesh, rules)
    return Experiment(config, mesh, rules, model, sde, optimizer, spec, task)


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
    """The model function of `params`: a score function with `.predict` (see diffjax.diffusion.parameterization).

    It carries the configured parameterisation, input scaling, learned-variance split (DiT's
    learn_sigma), second time input (MeanFlow), classifier-free guidance, and `score_guidance`
    (classifier guidance, `diffjax.diffusion.classifier_guidance.score_guidance`); losses and
    samplers take it as their score_fn.
    """
    net = network(model, params, train=train, dropout_rng=dropout_rng)
    m = config.model
    learned_variance = bool(m.name == "dit" and m.dit.learn_sigma)
    if guidance_scale != CONDITIONAL and labels is not None:
        channels = int(config.sampling.get("guidance_channels", 0) or 0) or \
            (model_input_shape(config)[-1] if learned_variance else None)
        net = classifier_free_guidance(net, guidance_scale, null_label=config.data.num_classes,
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


def restore_params(experiment: Experiment, checkpointer: Checkpointer, step: int,
                   use_ema: bool):
    """The EMA (or raw) parameters of checkpoint `step`, sharded as in training."""
    # The whole state is restored (optimizer moments too): it is what the spec describes, and
    # one restore per evaluated checkpoint is cheap next to sampling.
    state, _ = checkpointer.restore(experiment.spec, step)
    return state.ema_params if use_ema else state.params


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
        state, _ = checkpointer.restore(experiment.spec, step)
    finally:
        checkpointer.close()
    scale, shift = latents.latent_scale_shift(config)
    return latents.VAE(experiment.model, jax.device_get(state.ema_params), scale=scale,
                       shift=shift, mesh=mesh, batch_size=config.autoencoder.batch_size,
                       name=f"diffjax first stage {run} (step {step})")


# --- the classifier of classifier guidance ---------------------------------------------------

CLASSIFIER_SUBDIR = "classifier"


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
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"The classifier run {run} has no checkpoint; train it with "
                                    f"--mode=train_classifier.")
        with experiment.activate():
            state, _ = checkpointer.restore(experiment.spec, step)
    finally:
        checkpointer.close()
    return Classifier(experiment.model, state.ema_params, step)
