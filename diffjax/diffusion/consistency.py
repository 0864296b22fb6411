"""Continuous-time consistency models: sCM's training (sCT) and distillation (sCD) objective
(Lu & Song, 2024, "Simplifying, Stabilizing & Scaling Continuous-Time Consistency Models").

sCM works in TrigFlow's coordinates (`diffjax.diffusion.processes.trigflow`):
x^ = cos(t^) x0 + sin(t^) z, z ~ N(0, sigma_d^2 I), whose probability-flow ODE is
dx^/dt^ = sigma_d F(x^ / sigma_d, t^) and whose consistency function is
f(x^, t^) = cos(t^) x^ - sin(t^) sigma_d F. Any diffjax model is such an F: every linear process
x = alpha x0 + sigma eps is TrigFlow up to a change of variables that matches the
noise-to-signal ratio, sigma_d tan(t^) = sigma / alpha, and rescales x^ = x cos(t^) / alpha
(`to_process`); then sigma_d F = -sin(t^) x0_hat + sigma_d cos(t^) eps_hat from one network call
(same eps in both coordinates), and f = x0_hat, the model's own x0 prediction. So
- on the `trigflow` process with the `trigflow` parameterisation, F is the network's output, as
  in the paper (sCT from scratch, `configs/digits.py:consistency`, `configs/cifar10_scm.py`);
- a VP, EDM or flow network is a consistency model in its own parameterisation (what NVlabs'
  FastGen does to distil EDM networks), which is how a student starts from its teacher's weights
  (`configs/digits.py:distill`), and the consistency sampler needs nothing but x0 predictions.
  The parameterisation matters for distillation: an eps network's x0 at the prior is
  (x - sigma eps) / alpha with 1 / alpha ~ 150 for VP, so its one-step samples amplify eps's
  error; on the digits a flow or EDM teacher distils (FID 112 -> 24.6, 153 -> 38.8 at one step
  in 1,000 steps) and a VP eps teacher does not (README, "Few-step models").

The objective, per example, with t^ from tan(t^) = exp(tau) / sigma_d, tau ~ N(P_mean, P_std^2)
(EDM's log-normal sigma~ = sigma / alpha: sCM's proposal distribution):
    dx^/dt^ = cos(t^) z - sin(t^) x0                    (sCT: the conditional velocity)
           or sigma_d F_teacher(x^, t^)                  (sCD: the teacher's PF-ODE)
    cos sin dF/dt = JVP of F_theta-(x^, t^) along (cos sin dx^/dt^, cos sin)  (jax.jvp, one pass)
    g = -cos^2(t^) (sigma_d F_theta- - dx^/dt^) - r cos(t^) sin(t^) (x^ + sigma_d dF_theta-/dt^)
    g <- g / (||g|| + c)                                (tangent normalisation, c = 0.1)
    loss = w(t^) / exp(u(t^)) * mean_pixels (F_theta - F_theta- - g)^2 + u(t^)
with theta- = stop_gradient(theta), r = min(1, step / tangent_warmup_steps) (tangent warm-up),
w = 1 / (sigma_d tan t^) (prior weighting, optional) and u the learned log-variance of the
adaptive weighting (`diffjax.models.log_variance`; sCM's w_phi = -u). Its gradient is
-2 w / e^u E[g dF_theta/dtheta]: along the normalised g = cos(t^) df/dt^ (df/dt^ the total
derivative of the consistency function along the ODE), which vanishes exactly for the true
consistency function (tests/test_consistency.py).

Checked against: the paper's equations (Sec. 4, Algorithm 1) and NVlabs/FastGen's public
`methods/consistency_model/sCM.py` (no official sCM code exists): the same g with the same
cos(t) sin(t)-scaled tangents, normalisation with c = 0.1, prior weighting 1 / sigma_t, adaptive
log-variance. Differences: diffjax averages the squared error over pixels once (the paper's
||.||^2 / D; FastGen divides by D twice, which the learned log-variance absorbs), computes in
float32 (FastGen casts the loss to float64), and has no finite-difference JVP option.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes import LinearProcess, broadcast_to_data, float_dtype

Array = jax.Array


def trigflow_angle(process: LinearProcess, t, sigma_data: float) -> Array:
    """t^ with the same noise-to-signal ratio as the process at t: atan(sigma~(t) / sigma_d)."""
    return jnp.arctan(process.noise_to_signal(t) / sigma_data)


def process_time(process: LinearProcess, t_hat, sigma_data: float) -> Array:
    """The process's time at TrigFlow angle t^ (the inverse of `trigflow_angle`)."""
    return process.t_from_noise_to_signal(sigma_data * jnp.tan(t_hat))


def to_process(process: LinearProcess, x_hat: Array, t_hat: Array, sigma_data: float
               ) -> tuple[Array, Array]:
    """(x, t) in the process's coordinates of the TrigFlow point (x^, t^): x = alpha x^ / cos."""
    t = process_time(process, t_hat, sigma_data)
    alpha, _ = process.marginal_coeffs(t)
    return x_hat * broadcast_to_data(alpha / jnp.cos(t_hat), x_hat), t


def trigflow_velocity(model, x_hat: Array, t_hat: Array, sigma_data: float) -> Array:
    """dx^/dt^ = sigma_d F(x^ / sigma_d, t^) of any diffjax model function, one network call:
    -sin(t^) x0_hat + sigma_d cos(t^) eps_hat."""
    x, t = to_process(model.process, x_hat, t_hat, sigma_data)
    pred = model.predict(x, t)
    return (broadcast_to_data(-jnp.sin(t_hat), x_hat) * pred.x0
            + broadcast_to_data(sigma_data * jnp.cos(t_hat), x_hat) * pred.eps)


def consistency_function(model, x_hat: Array, t_hat: Array, sigma_data: float) -> Array:
    """f(x^, t^) = cos(t^) x^ - sin(t^) sigma_d F: the model's x0 prediction."""
    x, t = to_process(model.process, x_hat, t_hat, sigma_data)
    return model.predict(x, t).x0


def sample_angles(rng: Array, batch: int, process: LinearProcess, sigma_data: float, *,
                  log_normal: tuple[float, float] = (-1.0, 1.4), eps: float = 1e-5) -> Array:
    """[batch] TrigFlow angles with tan(t^) = exp(tau) / sigma_d, tau ~ N(P_mean, P_std^2),
    kept inside the process's range [eps, t_max] (in its own time)."""
    mean, std = log_normal
    tau = mean + std * jax.random.normal(rng, (batch,), float_dtype())
    t_hat = jnp.arctan(jnp.exp(tau) / sigma_data)
    low = trigflow_angle(process, jnp.asarray(eps, float_dtype()), sigma_data)
    high = trigflow_angle(process, jnp.asarray(process.t_max, float_dtype()), sigma_data)
    return jnp.clip(t_hat, low, high)


def output_and_tangent(model, x_hat: Array, t_hat: Array, dxdt: Array, sigma_data: float
                       ) -> tuple[Array, Array]:
    """(F(x^, t^), cos(t^) sin(t^) dF/dt^) with dF/dt^ = d_x F dx^/dt^ + d_t F along the ODE:
    one forward-mode pass (jax.jvp) with sCM's cos sin-scaled tangents; F stays differentiable
    in the model's parameters."""

    def f_output(x_hat, t_hat):
        return trigflow_velocity(model, x_hat, t_hat, sigma_data) / sigma_data

    cos_sin = jnp.cos(t_hat) * jnp.sin(t_hat)
    return jax.jvp(f_output, (x_hat, t_hat),
                   (broadcast_to_data(cos_sin, x_hat) * dxdt, cos_sin))


class ConsistencyTerms(NamedTuple):
    """Per-example pieces of the loss (for tests and metrics)."""

    loss: Array  # [B], what is minimised
    squared_error: Array  # [B], mean over pixels of (F - F- - g)^2
    tangent_norm: Array  # [B], ||g|| before normalisation
    t_hat: Array  # [B]


def consistency_loss(
    rng: Array,
    model,
    x0: Array,
    *,
    sigma_data: float = 0.5,
    teacher=None,
    log_variance: Callable[[Array], Array] | None = None,
    step: Array | int = 0,
    tangent_warmup_steps: int = 10_000,
    tangent_norm_c: float = 0.1,
    prior_weighting: bool = True,
    log_normal: tuple[float, float] = (-1.0, 1.4),
    eps: float = 1e-5,
) -> ConsistencyTerms:
    """sCT (teacher None) or sCD (teacher: a model function, its process may differ) of the model
    function `model` (built on parameters theta, train mode); see the module docstring.

    `log_variance(t_hat) -> [B]` is the adaptive weighting's u (None: no adaptive weighting).
    """
    process = model.process
    angle_rng, noise_rng = jax.random.split(rng)
    t_hat = sample_angles(angle_rng, x0.shape[0], process, sigma_data, log_normal=log_normal,
                          eps=eps).astype(x0.dtype)
    z = sigma_data * jax.random.normal(noise_rng, x0.shape, x0.dtype)
    b = lambda v: broadcast_to_data(v, x0)  # noqa: E731
    cos, sin = jnp.cos(t_hat), jnp.sin(t_hat)
    x_hat = b(cos) * x0 + b(sin) * z
    if teacher is None:
        dxdt = b(cos) * z - b(sin) * x0
    else:
        dxdt = jax.lax.stop_gradient(trigflow_velocity(teacher, x_hat, t_hat, sigma_data))

    cos_sin = cos * sin
    F, cs_dF = output_and_tangent(model, x_hat, t_hat, dxdt, sigma_data)
    F_minus, cs_dF = jax.lax.stop_gradient(F), jax.lax.stop_gradient(cs_dF)
    warmup = 1.0 if tangent_warmup_steps <= 0 else jnp.minimum(
        1.0, jnp.asarray(step, x0.dtype) / tangent_warmup_steps)
    g = -b(cos**2) * (sigma_data * F_minus - dxdt) - warmup * (
        b(cos_sin) * x_hat + sigma_data * cs_dF)
    flat = lambda v: jnp.reshape(v, (v.shape[0], -1))  # noqa: E731
    norm = jnp.sqrt(jnp.sum(flat(g) ** 2, axis=-1))
    g = g / b(norm + tangent_norm_c)
    squared = jnp.mean(flat(F - F_minus - g) ** 2, axis=-1)
    loss = squared
    if prior_weighting:
        loss = loss / (sigma_data * jnp.tan(t_hat))
    if log_variance is not None:
        u = log_variance(t_hat).astype(loss.dtype)
        loss = loss * jnp.exp(-u) + u
    return ConsistencyTerms(loss=loss, squared_error=squared, tangent_norm=norm, t_hat=t_hat)


def edm_noise_level(t_hat: Array, sigma_data: float) -> Array:
    """ln(sigma~) / 4 with sigma~ = sigma_d tan(t^): EDM's c_noise, the input of the learned
    log-variance (EDM2 feeds it the same)."""
    return 0.25 * jnp.log(sigma_data * jnp.tan(t_hat))
