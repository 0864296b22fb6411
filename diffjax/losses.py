"""Continuous-time denoising score matching (Song et al., 2021, eq. 7).

For t ~ U(eps, T), z ~ N(0, I) and x_t = alpha(t) x_0 + sigma(t) z, the per-example loss is
    lambda(t) || s(x_t, t) + z / sigma(t) ||^2,
with lambda(t) = sigma(t)^2 (the default; for a noise-predicting network it is || z - z_hat ||^2)
or lambda(t) = g(t)^2 ("likelihood weighting", which makes the loss a bound on the NLL).
Returns one value per example so callers choose how to reduce over the batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.sde import LinearSDE, broadcast_to_data
from diffjax.score import ScoreFn


def sample_times(rng: jax.Array, batch: int, sde: LinearSDE, eps: float) -> jax.Array:
    return jax.random.uniform(rng, (batch,), minval=eps, maxval=sde.T)


def dsm_loss(
    rng: jax.Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    x0: jax.Array,
    *,
    eps: float = 1e-5,
    likelihood_weighting: bool = False,
    reduce_mean: bool = False,
) -> jax.Array:
    """Per-example denoising score-matching loss, shape [B]."""
    t_rng, z_rng = jax.random.split(rng)
    t = sample_times(t_rng, x0.shape[0], sde, eps)
    z = jax.random.normal(z_rng, x0.shape, x0.dtype)
    score = score_fn(sde.perturb(x0, t, z), t)
    sigma = broadcast_to_data(sde.marginal_std(t), x0)
    if likelihood_weighting:
        residual, weight = score + z / sigma, sde.diffusion(t) ** 2
    else:
        # sigma^2 || s + z / sigma ||^2 written without the division, exact as sigma -> 0.
        residual, weight = score * sigma + z, 1.0
    squared = jnp.reshape(residual**2, (x0.shape[0], -1))
    per_example = jnp.mean(squared, -1) if reduce_mean else jnp.sum(squared, -1)
    return per_example * weight
