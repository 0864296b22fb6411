"""What every sampler returns, and the pieces every sampler shares: per-example time arrays, the
model's predictions, and the optional final Tweedie denoising step.

NFE bookkeeping rule: `nfe` counts calls of the network on the batch. It is a Python int known at
trace time for the fixed-step samplers and a traced count for the adaptive one; either way it is
returned as an int32 array so that all samplers have the same output type.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import Prediction, as_model_fn
from diffjax.diffusion.processes import LinearProcess


class SampleResult(NamedTuple):
    samples: jax.Array
    nfe: jax.Array  # exact number of network evaluations (int32 scalar, traced)


def batch_time(t, x: jax.Array) -> jax.Array:
    """The scalar time t as the per-example [B] array that models and processes expect.

    Built by broadcasting rather than `jnp.full(shape[0], ...)` of a fresh constant so that it
    carries no sharding opinion of its own: XLA gives it the batch sharding of x.
    """
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def predict(model, process: LinearProcess, x: jax.Array, t) -> Prediction:
    """One network evaluation at the scalar time t: x0_hat, eps_hat, score (see diffjax.diffusion.parameterization)."""
    return as_model_fn(model, process).predict(x, batch_time(t, x))


def tweedie_denoise(process: LinearProcess, model, x: jax.Array, t: float) -> jax.Array:
    """E[x_0 | x_t] at the final time, one extra network evaluation."""
    return predict(model, process, x, t).x0


def finish(process: LinearProcess, model, x: jax.Array, nfe, eps: float,
           denoise: bool) -> SampleResult:
    """Applies the optional Tweedie step at t = eps (+1 NFE) and packs the result."""
    if denoise:
        x = tweedie_denoise(process, model, x, eps)
        nfe = nfe + 1
    return SampleResult(samples=x, nfe=jnp.asarray(nfe, jnp.int32))
