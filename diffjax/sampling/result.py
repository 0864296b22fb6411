"""What every sampler returns, and the two pieces every sampler shares: per-example time arrays and
the optional final Tweedie denoising step.

NFE bookkeeping rule: `nfe` counts calls of `score_fn` on the batch, i.e. network evaluations. It is
a Python int known at trace time for the fixed-step samplers and a traced count for the adaptive
one; either way it is returned as an int32 array so that all samplers have the same output type.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.sde import LinearSDE
from diffjax.score import ScoreFn, score_to_denoised


class SampleResult(NamedTuple):
    samples: jax.Array
    nfe: jax.Array  # exact number of score-network evaluations (int32 scalar, traced)


def batch_time(t, x: jax.Array) -> jax.Array:
    """The scalar time t as the per-example [B] array that score_fn and the SDE expect.

    Built by broadcasting rather than `jnp.full(shape[0], ...)` of a fresh constant so that it
    carries no sharding opinion of its own: XLA gives it the batch sharding of x.
    """
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def tweedie_denoise(sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, t: float) -> jax.Array:
    """E[x_0 | x_t] at the final time, one extra network evaluation."""
    t_batch = batch_time(t, x)
    return score_to_denoised(sde, x, score_fn(x, t_batch), t_batch)


def finish(
    sde: LinearSDE, score_fn: ScoreFn, x: jax.Array, nfe, eps: float, denoise: bool
) -> SampleResult:
    """Applies the optional Tweedie step at t = eps (+1 NFE) and packs the result."""
    if denoise:
        x = tweedie_denoise(sde, score_fn, x, eps)
        nfe = nfe + 1
    return SampleResult(samples=x, nfe=jnp.asarray(nfe, jnp.int32))
