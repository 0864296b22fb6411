"""What a training step minimises: the diffusion objective (pixels or latents) or the first stage.

An objective turns a loader batch into the model's inputs (`prepare`, once per global batch, so
that microbatching splits the same inputs) and scores parameters on them (`loss`, per microbatch;
a scalar mean and a dict of scalar metrics). Everything random comes from the rng the step passes
in, which derives from (seed, step): resume stays bit-exact.

- `DiffusionObjective`: images become x0 in the process's data range (uniform dequantisation,
  random flips); latent batches {"mean", "std"} become z = (mean + std * noise - shift) * scale
  drawn in-graph (posterior samples, as LDM and DiT train); the loss is `losses.diffusion_loss`.
  Text models (cached encoder outputs of up to K captions per example) draw one of the
  example's captions uniformly, then replace it by the null caption with probability
  `training.caption_dropout` (classifier-free guidance), both in-graph from the step's rng.
- `AutoencoderObjective`: images in [-1, 1] (no dequantisation noise, as LDM), optional flips; the
  loss is LDM's reconstruction + KL (`latents.autoencoder_loss`).
- `ConsistencyObjective` (`training.objective="consistency"`): sCM's continuous-time consistency
  training, or distillation from `model.teacher` (`diffusion.consistency`); a JVP per step.
- `MeanFlowObjective` (`training.objective="meanflow"`): MeanFlow (`diffusion.meanflow`); a JVP
  per step, label dropout and trained-in guidance for conditional models.
- `ClassifierObjective` (`--mode=train_classifier`): cross-entropy of a noise-conditional
  classifier on x_t (`diffusion.classifier_guidance`).

Objectives that need the step (sCM's tangent warm-up) or frozen arrays (a teacher's parameters)
set `takes_context = True` and get `context={"step": ..., "constants": ...}`; the constants are
an argument of the compiled step (`constants`, with `constant_shardings`), never folded into it.
"""

from __future__ import annotations

from typing import Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.data.pixels import to_model_range
from diffjax.diffusion import classifier_guidance, consistency, losses, meanflow
from diffjax.diffusion.guidance import drop_to_null
from diffjax.experiment import (Experiment, classifier_sigma_data, network, null_condition,
                                score_fn_for)
from diffjax.latents import text_cache
from diffjax.latents.latent_mode import is_latent

Metrics = dict[str, jax.Array]


class Objective(Protocol):
    def prepare(self, batch: dict, rng: jax.Array) -> dict[str, jax.Array]: ...

    def loss(self, params, inputs: dict[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, Metrics]: ...


def choose_captions(batch: dict, rng: jax.Array) -> dict[str, jax.Array]:
    """One caption per example, uniform over its `num_captions` cached ones: the text
    conditioning {"states", "mask", "pooled"} of the batch."""
    count = jnp.maximum(batch["num_captions"].astype(jnp.int32), 1)
    pick = jnp.floor(jax.random.uniform(rng, count.shape) * count).astype(jnp.int32)
    pick = jnp.minimum(pick, count - 1)

    def take(values):
        index = pick.reshape((-1,) + (1,) * (values.ndim - 1))
        return jnp.take_along_axis(values, index, axis=1)[:, 0]

    return {"states": take(batch["text_states"]).astype(jnp.float32),
            "mask": take(batch["text_mask"]).astype(jnp.int32),
            "pooled": take(batch["text_pooled"]).astype(jnp.float32)}


def model_input(config, batch: dict, rng: jax.Array, *,
                scale_shift: tuple[float, float] | None = None
                ) -> tuple[jax.Array, jax.Array | None]:
    """A loader batch -> (x0 in the model's data range, labels or None). In latent mode
    `scale_shift` is the first stage's (scale, shift), read from its files when not given.
    Text batches give the chosen caption's conditioning (before caption dropout)."""
    labels = batch["label"] if config.model.conditional else None
    if text_cache.is_text(config):
        rng, caption_rng = jax.random.split(rng)
        labels = choose_captions(batch, caption_rng)
    if is_latent(config):
        from diffjax.latents import latent_scale_shift, sample_model_latents

        scale, shift = scale_shift or latent_scale_shift(config)
        return sample_model_latents(rng, batch["mean"], batch["std"], scale=scale,
                                    shift=shift), labels
    d = config.data
    x0 = to_model_range(batch["image"], rng, centered=d.centered, dequantize=d.dequantize,
                        random_flip=d.random_flip)
    return x0, labels


class DiffusionObjective:
    def __init__(self, config, model: nn.Module, sde, *, null=None):
        self.config, self.model, self.sde = config, model, sde
        self.options = losses.loss_options(config.training)
        # Read once, on the host: the latent scale is a constant of the compiled step.
        self.scale_shift = None
        if is_latent(config):
            from diffjax.latents import latent_scale_shift

            self.scale_shift = latent_scale_shift(config)
        # Text: the null caption, a constant of the compiled step (read once, on the host).
        self.caption_dropout = float(config.training.get("caption_dropout", 0.0))
        # `null` (same shapes) stands in for the cached one where only the program matters
        # (--mode=compile before encode_latents has run).
        dropping = text_cache.is_text(config) and self.caption_dropout > 0
        self.null = (null if null is not None else null_condition(config)) if dropping else None

    def prepare(self, batch: dict, rng: jax.Array) -> dict[str, jax.Array]:
        if self.null is not None:
            rng, drop_rng = jax.random.split(rng)
        x0, labels = model_input(self.config, batch, rng, scale_shift=self.scale_shift)
        if self.null is not None:
            labels = drop_to_null(drop_rng, labels, self.null, self.caption_dropout)
        return {"x0": x0} if labels is None else {"x0": x0, "labels": labels}

    def loss(self, params, inputs: dict[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, Metrics]:
        dropout_rng, loss_rng = jax.random.split(rng)
        score_fn = score_fn_for(self.config, self.model, self.sde, params,
                                labels=inputs.get("labels"), train=True, dropout_rng=dropout_rng)
        per_example = losses.diffusion_loss(loss_rng, score_fn, self.sde, inputs["x0"],
                                            **self.options)
        return jnp.mean(per_example), {}


class ConsistencyObjective(DiffusionObjective):
    """sCT, or sCD when a teacher is given (its EMA parameters are `constants`)."""

    takes_context = True

    def __init__(self, config, model: nn.Module, sde, teacher=None, *, null=None):
        super().__init__(config, model, sde, null=null)
        self.teacher = teacher
        self.constants = None if teacher is None else teacher.params
        self.constant_shardings = None if teacher is None else teacher.shardings

    def loss(self, params, inputs: dict[str, jax.Array], rng: jax.Array, context=None
             ) -> tuple[jax.Array, Metrics]:
        config, c = self.config, self.config.training.consistency
        context = context or {}
        dropout_rng, loss_rng = jax.random.split(rng)
        labels = inputs.get("labels")
        model_fn = score_fn_for(config, self.model, self.sde, params, labels=labels, train=True,
                                dropout_rng=dropout_rng)
        teacher_fn = None
        if self.teacher is not None:
            t = self.teacher
            teacher_params = context.get("constants", t.params)
            teacher_fn = score_fn_for(t.config, t.experiment.model, t.experiment.sde,
                                      teacher_params, train=False,
                                      labels=labels if t.config.model.conditional else None)
        sigma_data = float(config.model.sigma_data)
        def log_variance(t_hat):
            return self.model.apply({"params": params},
                                    consistency.edm_noise_level(t_hat, sigma_data),
                                    method="log_variance")
        terms = consistency.consistency_loss(
            loss_rng, model_fn, inputs["x0"], sigma_data=sigma_data, teacher=teacher_fn,
            log_variance=log_variance if c.adaptive_weighting else None,
            step=context.get("step", 0),
            tangent_warmup_steps=int(c.tangent_warmup_steps),
            tangent_norm_c=float(c.tangent_norm_c), prior_weighting=bool(c.prior_weighting),
            log_normal=(config.training.P_mean, config.training.P_std),
            eps=config.training.eps)
        return jnp.mean(terms.loss), {"consistency_error": jnp.mean(terms.squared_error),
                                      "tangent_norm": jnp.mean(terms.tangent_norm)}


class MeanFlowObjective(DiffusionObjective):
    def loss(self, params, inputs: dict[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, Metrics]:
        config, m = self.config, self.config.training.meanflow
        dropout_rng, loss_rng = jax.random.split(rng)

        def model_for(labels, train):
            return score_fn_for(config, self.model, self.sde, params, labels=labels, train=train,
                                dropout_rng=dropout_rng if train else None)

        terms = meanflow.meanflow_training_loss(
            loss_rng, model_for, self.sde, inputs["x0"], inputs.get("labels"),
            null_label=int(config.data.num_classes), label_dropout=config.model.label_dropout,
            ratio=float(m.ratio),
            logit_normal=(config.training.logit_normal_mean, config.training.logit_normal_std),
            norm_p=float(m.norm_p), norm_eps=float(m.norm_eps), omega=float(m.omega),
            kappa=float(m.kappa), guidance_interval=(m.guidance_t_start, m.guidance_t_end))
        return jnp.mean(terms.loss), {"meanflow_error": jnp.mean(terms.squared_error),
                                      "velocity_error": jnp.mean(terms.velocity_error)}


class ClassifierObjective(DiffusionObjective):
    def prepare(self, batch: dict, rng: jax.Array) -> dict[str, jax.Array]:
        d = self.config.data
        x0 = to_model_range(batch["image"], rng, centered=d.centered, dequantize=d.dequantize,
                            random_flip=d.random_flip)
        return {"x0": x0, "labels": batch["label"]}

    def loss(self, params, inputs: dict[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, Metrics]:
        dropout_rng, loss_rng = jax.random.split(rng)
        net = network(self.model, params, train=True, dropout_rng=dropout_rng)
        nll, correct = classifier_guidance.classifier_loss(
            loss_rng, lambda x_in, cond: net(x_in, cond, None), self.sde, inputs["x0"],
            inputs["labels"], sigma_data=classifier_sigma_data(self.config),
            eps=self.config.training.eps, time_sampling=self.options["time_sampling"],
            logit_normal=self.options["logit_normal"], log_normal=self.options["log_normal"])
        return jnp.mean(nll), {"accuracy": jnp.mean(correct)}


OBJECTIVES = {"diffusion": DiffusionObjective, "consistency": ConsistencyObjective,
              "meanflow": MeanFlowObjective}


class AutoencoderObjective:
    def __init__(self, config, module: nn.Module):
        self.config, self.module = config, module

    def prepare(self, batch: dict, rng: jax.Array) -> dict[str, jax.Array]:
        images = to_model_range(batch["image"], rng, centered=True, dequantize=False,
                                random_flip=self.config.data.random_flip)
        return {"images": images}

    def loss(self, params, inputs: dict[str, jax.Array], rng: jax.Array
             ) -> tuple[jax.Array, Metrics]:
        from diffjax.latents import autoencoder_loss

        per_example, metrics = autoencoder_loss(params, self.module, inputs["images"], rng,
                                                self.config)
        return jnp.mean(per_example), {k: jnp.mean(v) for k, v in metrics.items()}


class ControlNetObjective(DiffusionObjective):
    """The diffusion loss of a ControlNet run: each image's conditioning (`model.controlnet`,
    diffjax/data/conditions.py) is computed in-graph from the clean image and reaches the
    network with the labels as {"labels", "cond"}."""

    def prepare(self, batch: dict, rng: jax.Array) -> dict[str, jax.Array]:
        from diffjax.data.conditions import from_uint8, get_condition

        inputs = super().prepare(batch, rng)
        cond = get_condition(self.config.model.controlnet)(from_uint8(batch["image"]))
        return {"x0": inputs["x0"], "labels": {"labels": inputs.get("labels"), "cond": cond}}


def objective_for(experiment: Experiment, teacher=None, *, null=None) -> Objective:
    """The objective of the experiment's task and `training.objective`; `teacher` is a
    `training.teacher.Teacher` for distillation; `null` replaces the text cache's null caption
    (an abstract plan's zeros)."""
    config = experiment.config
    if experiment.task == "autoencoder":
        return AutoencoderObjective(config, experiment.model)
    if experiment.task == "classifier":
        return ClassifierObjective(config, experiment.model, experiment.sde)
    name = config.training.get("objective", "diffusion")
    if name not in OBJECTIVES:
        raise ValueError(f"Unknown training.objective={name!r}; choose one of "
                         f"{sorted(OBJECTIVES)}.")
    if experiment.frozen is not None and experiment.frozen.kind == "controlnet":
        if name != "diffusion" or teacher is not None:
            raise ValueError(f"A ControlNet trains with training.objective='diffusion' and no "
                             f"model.teacher (got {name!r}).")
        return ControlNetObjective(config, experiment.model, experiment.sde, null=null)
    if name == "consistency":
        return ConsistencyObjective(config, experiment.model, experiment.sde, teacher, null=null)
    if teacher is not None:
        raise ValueError(f"model.teacher is set, but training.objective={name!r} does not "
                         f"distil; use training.objective=consistency.")
    return OBJECTIVES[name](config, experiment.model, experiment.sde, null=null)
