"""From a network to a score function: the one place that fixes the output parameterisation.

A network is `net(x_in, noise_cond, labels) -> output` and knows nothing about SDEs. This module
decides, per SDE,
- what scalar the network is conditioned on (`noise_conditioning`): 999 t for the VP family (the
  DDPM index range that positional embeddings are tuned for) and log sigma(t) for VE (what a
  Fourier embedding of the noise level wants, as in NCSN++);
- how the input is scaled (`input_scale`): optionally by 1 / sqrt(alpha^2 sigma_data^2 + sigma^2),
  so that the network sees unit-variance input even when VE's sigma reaches 50;
- what the output means (`parameterization`):
    "noise": the network predicts the standard normal noise z of x_t = alpha x_0 + sigma z, and
             score = -output / sigma (DDPM++ and the score_sde default for continuous VP);
    "score": the network predicts the score directly.
Everything downstream (loss, samplers, likelihood) only sees `score_fn(x, t) -> score`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.sde import LinearSDE, VESDE, broadcast_to_data

Array = jax.Array
# net(x_in, noise_cond, labels) -> output, the same shape as x_in.
NetFn = Callable[[Array, Array, Array | None], Array]
ScoreFn = Callable[[Array, Array], Array]

PARAMETERIZATIONS = ("noise", "score")


def noise_conditioning(sde: LinearSDE, t: Array) -> Array:
    """The per-example scalar the network is conditioned on at time t."""
    if isinstance(sde, VESDE):
        return jnp.log(sde.marginal_std(t))
    return 999.0 * jnp.asarray(t)


def input_scale(sde: LinearSDE, t: Array, sigma_data: float) -> Array:
    alpha, sigma = sde.marginal_coeffs(t)
    return jax.lax.rsqrt(alpha**2 * sigma_data**2 + sigma**2)


def check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"Unknown model.parameterization={parameterization!r}; choose one of {PARAMETERIZATIONS}."
        )


def make_score_fn(
    sde: LinearSDE,
    net: NetFn,
    *,
    parameterization: str = "noise",
    sigma_data: float | None = None,
    labels: Array | None = None,
) -> ScoreFn:
    """Returns score_fn(x, t) -> grad_x log p_t(x) for the network `net`.

    `labels` (or None) are closed over, so samplers need not know about conditioning.
    `sigma_data` enables input scaling; None feeds x unscaled.
    """
    check_parameterization(parameterization)

    def score_fn(x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        x_in = x
        if sigma_data is not None:
            x_in = x * broadcast_to_data(input_scale(sde, t, sigma_data), x)
        output = net(x_in, noise_conditioning(sde, t), labels)
        if parameterization == "noise":
            return -output / broadcast_to_data(sde.marginal_std(t), x)
        return output

    return score_fn


def score_to_noise(sde: LinearSDE, score: Array, t: Array) -> Array:
    """The noise prediction implied by a score: z_hat = -sigma(t) score (DPM-Solver's input)."""
    return -broadcast_to_data(sde.marginal_std(t), score) * score


def score_to_denoised(sde: LinearSDE, x: Array, score: Array, t: Array) -> Array:
    """Tweedie's estimate E[x_0 | x_t] = (x_t + sigma^2 score) / alpha."""
    alpha, sigma = sde.marginal_coeffs(t)
    return (x + broadcast_to_data(sigma**2, x) * score) / broadcast_to_data(alpha, x)
