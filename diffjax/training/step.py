"""The pure train step `(state, batch) -> (state, metrics)`, for any objective (`objectives.py`),
and `jit_train_step`, the one sharded, jitted form of it that training runs and `--mode=compile`
compiles for a TPU topology (with `abstract_batch`, the shapes of a global batch).

Randomness of step s comes from fold_in(key(seed), s) only, so a run is a pure function of the
config and the seed, whatever the mesh (threefry is partitionable: sharded draws equal unsharded).
A step whose loss or gradient is not finite leaves the state untouched and records the step in
`first_nonfinite_step`; the loop stops on it before any checkpoint can hold a broken state.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffjax.diffusion.processes import LinearSDE
from diffjax.experiment import Experiment
from diffjax.latents.latent_mode import is_latent, model_input_shape
from diffjax.latents.text_cache import conditioning_shapes, is_text
from diffjax.parallel.sharding import batch_sharding, replicated
from diffjax.state.train_state import TrainState
from diffjax.training.objectives import DiffusionObjective, Objective, objective_for


def ema_decay(training_config, step: jax.Array) -> jax.Array:
    """The EMA decay at `step`: min(ema_decay, (1 + step) / (10 + step)) with warm-up.

    A fixed 0.999 started from the initial weights still holds 0.999^2000 = 13.5% of them after
    2,000 steps: stochastic samplers hide that, the probability-flow ODE diverges on it. The
    warm-up averages over roughly the last step/10 updates until the configured decay takes over
    (after ~9,000 steps for 0.999, ~90,000 for 0.9999), so long runs are unchanged.
    """
    if not training_config.ema_warmup:
        return jnp.asarray(training_config.ema_decay, jnp.float32)
    step = step.astype(jnp.float32)
    return jnp.minimum(training_config.ema_decay, (1.0 + step) / (10.0 + step))


def make_train_step(config, model: nn.Module, sde: LinearSDE | None,
                    optimizer: optax.GradientTransformation,
                    objective: Objective | None = None,
                    combine: Callable | None = None) -> Callable:
    """`train_step(state, batch) -> (state, metrics)` for `objective` (default: diffusion).

    With `combine` (a LoRA adapter's or a ControlNet's frozen base, `storage.base_runs`) it is
    `train_step(state, batch, frozen)`: the loss sees `combine(frozen, state.params)`, and the
    gradient, optimizer moments and EMA exist for `state.params` only."""
    t = config.training
    base_key = jax.random.key(config.seed)
    objective = objective or DiffusionObjective(config, model, sde)

    def gradients(params, inputs, rng, frozen, context):
        """Mean loss, metrics and gradient over the global batch, in `microbatches` passes."""
        k = t.microbatches
        objective_loss = functools.partial(objective.loss, context=context) \
            if getattr(objective, "takes_context", False) else objective.loss
        if combine is None:
            loss_fn = objective_loss
        else:
            def loss_fn(trained, inputs, rng):
                return objective_loss(combine(frozen, trained), inputs, rng)
        value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
        if k == 1:
            (loss, metrics), grad = value_and_grad(params, inputs, rng)
            return loss, metrics, grad

        # [B, ...] -> [k, B/k, ...] keeping each device's rows on that device (strided split).
        def split(a):
            return jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1)

        def accumulate(carry, scanned):
            index, micro = scanned
            (loss, metrics), grad = value_and_grad(params, micro, jax.random.fold_in(rng, index))
            return jax.tree.map(jnp.add, carry, (loss, metrics, grad)), None

        micro0 = jax.tree.map(lambda a: a[: a.shape[0] // k], inputs)
        metrics_shape = jax.eval_shape(lambda: loss_fn(params, micro0, rng)[1])
        zeros = (jnp.zeros(()), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                             metrics_shape),
                 jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(accumulate, zeros,
                                (jnp.arange(k), jax.tree.map(split, inputs)))
        return jax.tree.map(lambda v: v / k, total)

    def train_step(state: TrainState, batch: dict, frozen=None,
                   constants=None) -> tuple[TrainState, dict]:
        """`constants`: the objective's frozen arrays (a distillation teacher's parameters)."""
        rng = jax.random.fold_in(base_key, state.step)
        data_rng, loss_rng = jax.random.split(rng)
        inputs = objective.prepare(batch, data_rng)
        loss, metrics, grad = gradients(state.params, inputs, loss_rng, frozen,
                                        {"step": state.step, "constants": constants})
        updates, opt_state = optimizer.update(grad, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(t, state.step)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        grad_norm = optax.global_norm(grad)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = TrainState(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            ema_params=keep_if_finite(ema, state.ema_params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            first_nonfinite_step=jnp.where(
                (state.first_nonfinite_step < 0) & ~finite, state.step,
                state.first_nonfinite_step),
        )
        return new_state, {"loss": loss, "grad_norm": grad_norm, **metrics}

    return train_step


def jit_train_step(experiment: Experiment, objective: Objective | None = None) -> Callable:
    """The train step of `experiment` as training runs it: jitted with the state's shardings in
    and out, the batch split over the data axes, the incoming state donated.

    The training loop calls it with real arrays; `--mode=compile` lowers the same function with
    `experiment.spec.abstract` and `abstract_batch` for a TPU topology, so what it reports is
    what a launch would run.
    """
    mesh, frozen = experiment.mesh, experiment.frozen
    objective = objective or objective_for(experiment)
    step = make_train_step(experiment.config, experiment.model, experiment.sde,
                           experiment.optimizer, objective,
                           combine=frozen.combine if frozen is not None else None)
    constants = getattr(objective, "constants", None)
    extra = ()
    if frozen is not None or constants is not None:
        extra = (None if frozen is None else frozen.shardings,)
    if constants is not None:
        extra += (objective.constant_shardings,)
    return jax.jit(step, in_shardings=(experiment.spec.shardings, batch_sharding(mesh)) + extra,
                   out_shardings=(experiment.spec.shardings, replicated(mesh)),
                   donate_argnums=(0,))


def step_arguments(experiment: Experiment, objective: Objective, abstract: bool = False
                   ) -> tuple:
    """The step's arguments after (state, batch), never donated: (frozen base, constants) as
    far as they exist — a LoRA/ControlNet base and the objective's own arrays (a distillation
    teacher's parameters); shapes only when `abstract`."""
    frozen = experiment.frozen
    constants = getattr(objective, "constants", None)
    if frozen is None and constants is None:
        return ()
    args = (None if frozen is None else (frozen.abstract if abstract else frozen.params),)
    if constants is not None:
        args += (jax.eval_shape(lambda: constants) if abstract else constants,)
    return args


def abstract_batch(experiment: Experiment) -> dict[str, jax.ShapeDtypeStruct]:
    """One global training batch as the loader yields it (shapes, dtypes, batch sharding):
    {"image" uint8, "label"} of pixels, or {"mean", "std" (storage dtype), "label"} of latents,
    plus the cached text-encoder outputs of a text model."""
    config = experiment.config
    d, b = config.data, config.training.batch_size
    sharding = batch_sharding(experiment.mesh)

    def array(shape, dtype):
        return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype), sharding=sharding)

    batch = {"label": array((b,), jnp.int32)}
    diffusion = experiment.task == "diffusion"
    if diffusion and is_text(config):  # k cached encoder outputs per image (text_cache.py)
        k, (length, width, pooled) = int(d.captions_per_image), conditioning_shapes(config)
        batch.update(text_states=array((b, k, length, width), d.latent_dtype),
                     text_mask=array((b, k, length), jnp.uint8),
                     text_pooled=array((b, k, pooled), d.latent_dtype),
                     num_captions=array((b,), jnp.int32))
    if is_latent(config) and diffusion:
        latent = array((b, *model_input_shape(config)), d.latent_dtype)
        batch.update(mean=latent, std=latent)
    else:
        batch["image"] = array((b, d.image_size, d.image_size, d.num_channels), jnp.uint8)
    return batch
