"""MeanFlow (Geng, Deng, Bai, Kolter & He, 2025, "Mean Flows for One-step Generative Modeling").

The network learns the average velocity over [r, t] of the probability-flow ODE,
    u(z_t, r, t) = 1 / (t - r) int_r^t v(z_s, s) ds,   so z_r = z_t - (t - r) u(z_t, r, t),
(one step from the prior at t = T to r = 0 is a sample). Differentiating (t - r) u in t gives the
MeanFlow identity u = v - (t - r) du/dt with the total derivative du/dt = v d_z u + d_t u, a
Jacobian-vector product along (v, 1, 0) in (z, t, r). The loss regresses u_theta on
    u_tgt = stop_gradient(v - (t - r) (v d_z u_theta + d_t u_theta)),
with v the conditional velocity alpha'(t) x0 + sigma'(t) eps (flow matching: eps - x0), so that
E[u_tgt | z_t] is the identity's right-hand side; per example the squared error summed over
pixels, weighted adaptively: loss / stop_gradient(loss + c)^p.

Times (`sample_times`): t and r two independent logit-normal draws (ImageNet: mean -0.4, std
1.0), sorted so that r <= t, then r = t for the first (1 - ratio) of the batch (flow matching;
the paper's "ratio of r != t" is 25% on ImageNet).

Guidance trained into the model (`guided_velocity`, the paper's Eq. 21 with the official code's
kappa term): for conditional models v is replaced by
    omega v + (1 - omega - kappa) u(z, t, t | null) + kappa u(z, t, t | y)
(stop-gradient, network in eval mode) where t is in [t_start, t_end], and a label-dropout
fraction of the batch (the first ones, as the official code) trains the unconditional model on
plain v. Sampling then needs no guidance: the effective scale is omega / (1 - kappa).

The network's second time input is t - r (the paper's (t, t - r) conditioning): diffjax feeds
(c(t), t - r) with c the process's own conditioning (`parameterization.interval_conditioning`).

Checked against the official JAX code (Gsunshine/meanflow at d70cb55, `MeanFlow.forward` run
unchanged by tools/make_meanflow_fixture.py on a tiny network with the same draws): the mean loss
and its gradient in every network parameter agree to float32 rounding, guidance off, the official
defaults (omega 1, kappa 0.5), omega alone and omega with kappa inside an interval, adaptive
weight p = 1 and p = 0 (tests/test_meanflow.py). So: the same jvp tangents (v, 1, 0), target with
(t - r) clipped to [0, 1], sum over pixels, weight 1 / sg(loss + norm_eps)^norm_p with
norm_eps = 0.01, p = 1 (the paper's text says c = 1e-3), the same (t, r) sampler, label dropout
and guidance mixture. The official code works on flow matching
in its time (noise at t = 1); diffjax's identity holds in any process's time with a velocity
network, flow matching being the case the paper trains.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import LinearProcess, broadcast_to_data, float_dtype

Array = jax.Array


def sample_times(rng: Array, batch: int, process: LinearProcess, *, ratio: float = 0.25,
                 logit_normal: tuple[float, float] = (-0.4, 1.0)) -> tuple[Array, Array]:
    """(t, r), [batch] each, r <= t; r = t on the first round(batch (1 - ratio)) examples."""
    return times_from_normals(jax.random.normal(rng, (2, batch), float_dtype()), process,
                              ratio=ratio, logit_normal=logit_normal)


def times_from_normals(normals: Array, process: LinearProcess, *, ratio: float = 0.25,
                       logit_normal: tuple[float, float] = (-0.4, 1.0)) -> tuple[Array, Array]:
    """`sample_times` given its two [batch] standard normal draws, [2, batch]."""
    mean, std = logit_normal
    times = process.T * jax.nn.sigmoid(mean + std * normals)
    t, r = jnp.maximum(times[0], times[1]), jnp.minimum(times[0], times[1])
    batch = normals.shape[1]
    flow_matching = jnp.arange(batch) < int(batch * (1.0 - ratio))
    return t, jnp.where(flow_matching, t, r)


def conditional_velocity(process: LinearProcess, x0: Array, noise: Array, t: Array) -> Array:
    """dx_t/dt given x0: alpha'(t) x0 + sigma'(t) eps (flow matching: eps - x0)."""
    d_alpha, d_sigma = process.coeff_derivatives(t)
    return broadcast_to_data(d_alpha, x0) * x0 + broadcast_to_data(d_sigma, x0) * noise


def guided_velocity(v: Array, v_null: Array, v_cond: Array | None, t: Array, *, omega: float,
                    kappa: float, interval: tuple[float, float] = (0.0, 1.0)) -> Array:
    """omega v + (1 - omega - kappa) v_null + kappa v_cond inside the interval, v outside."""
    inside = (t >= interval[0]) & (t <= interval[1])
    omega_t = broadcast_to_data(jnp.where(inside, omega, 1.0), v)
    kappa_t = broadcast_to_data(jnp.where(inside, kappa, 0.0), v)
    mixed = omega_t * v + (1.0 - omega_t - kappa_t) * v_null
    return mixed if v_cond is None else mixed + kappa_t * v_cond


def average_velocity_and_derivative(model, z: Array, t: Array, r: Array, velocity: Array
                                    ) -> tuple[Array, Array]:
    """(u(z, r, t), du/dt = velocity . d_z u + d_t u): one jax.jvp along (velocity, 1, 0)."""

    def u_fn(z, t, r):
        return model.average_velocity(z, t, r)

    return jax.jvp(u_fn, (z, t, r), (velocity, jnp.ones_like(t), jnp.zeros_like(r)))


class MeanFlowTerms(NamedTuple):
    loss: Array  # [B], weighted: what is minimised
    squared_error: Array  # [B], sum over pixels of (u - u_tgt)^2
    velocity_error: Array  # [B], sum over pixels of (u - v)^2 (monitoring: the official v_loss)


def meanflow_loss(model, x_t: Array, t: Array, r: Array, velocity: Array, *,
                  norm_p: float = 1.0, norm_eps: float = 0.01,
                  plain_velocity: Array | None = None) -> MeanFlowTerms:
    """The loss of the model function's average velocity at (x_t, r, t) against `velocity`
    (the conditional, possibly guided, dx/dt): one jax.jvp gives u_theta and du/dt."""

    u, du_dt = average_velocity_and_derivative(model, x_t, t, r, velocity)
    interval = broadcast_to_data(jnp.clip(t - r, 0.0, 1.0), x_t)
    target = jax.lax.stop_gradient(velocity - interval * du_dt)
    flat = lambda v: jnp.reshape(v, (v.shape[0], -1))  # noqa: E731
    squared = jnp.sum(flat(u - target) ** 2, axis=-1)
    weight = jax.lax.stop_gradient(1.0 / (squared + norm_eps) ** norm_p) if norm_p else 1.0
    reference = velocity if plain_velocity is None else plain_velocity
    return MeanFlowTerms(loss=squared * weight, squared_error=squared,
                         velocity_error=jnp.sum(flat(u - reference) ** 2, axis=-1))


def meanflow_training_loss(rng: Array, model_for: Callable, process: LinearProcess, x0: Array,
                           labels: Array | None = None, **options) -> MeanFlowTerms:
    """One MeanFlow training loss, per example. `model_for(labels, train)` returns the model
    function for those labels (None: unconditional); guidance and label dropout apply to
    conditional models only (labels given). `options`: `meanflow_loss_from_draws`'s."""
    time_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
    normals = jax.random.normal(time_rng, (2, x0.shape[0]), float_dtype())
    noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    drop_uniform = None if labels is None else jax.random.uniform(drop_rng, labels.shape)
    return meanflow_loss_from_draws(model_for, process, x0, labels, normals, noise, drop_uniform,
                                    **options)


def meanflow_loss_from_draws(
    model_for: Callable,
    process: LinearProcess,
    x0: Array,
    labels: Array | None,
    normals: Array,
    noise: Array,
    drop_uniform: Array | None,
    *,
    null_label: int | None = None,
    label_dropout: float = 0.1,
    ratio: float = 0.25,
    logit_normal: tuple[float, float] = (-0.4, 1.0),
    norm_p: float = 1.0,
    norm_eps: float = 0.01,
    omega: float = 1.0,
    kappa: float = 0.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
) -> MeanFlowTerms:
    """`meanflow_training_loss` given its random draws: the [2, B] normals of (t, r), the noise,
    and the [B] uniforms of the label dropout (what the official code draws, in its order)."""
    t, r = times_from_normals(normals, process, ratio=ratio, logit_normal=logit_normal)
    t, r = t.astype(x0.dtype), r.astype(x0.dtype)
    x_t = process.perturb(x0, t, noise)
    v = conditional_velocity(process, x0, noise, t)
    target_v = v
    if labels is not None:
        if omega != 1.0 or kappa != 0.0:
            null = jnp.full_like(labels, null_label)
            v_null = model_for(null, False).average_velocity(x_t, t, t)
            v_cond = model_for(labels, False).average_velocity(x_t, t, t) if kappa else None
            target_v = jax.lax.stop_gradient(guided_velocity(
                v, v_null, v_cond, t, omega=omega, kappa=kappa, interval=guidance_interval))
        # The official code drops the first Binomial(B, p) labels and trains them on plain v.
        num_drop = jnp.sum(drop_uniform < label_dropout)
        dropped = jnp.arange(labels.shape[0]) < num_drop
        labels = jnp.where(dropped, null_label, labels)
        target_v = jnp.where(dropped.reshape((-1,) + (1,) * (v.ndim - 1)), v, target_v)
    return meanflow_loss(model_for(labels, True), x_t, t, r, target_v, norm_p=norm_p,
                         norm_eps=norm_eps, plain_velocity=v)
