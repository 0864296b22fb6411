"""What every sampler returns, and the pieces every sampler shares: per-example time arrays, the
model's predictions, and the optional final Tweedie denoising step.

The samplers on a discrete schedule (`ddim_discrete`, `euler_discrete`, `dpm_solver_discrete`,
`plms_discrete`: diffusers' schedulers, see diffjax.pipelines.schedulers) call a raw network
`model_fn(x_in, t) -> output` themselves, read its output through `output_prediction`, and can
record a `Trajectory` of every call.

NFE bookkeeping rule: `nfe` counts calls of the network on the batch. It is a Python int known at
trace time for the fixed-step samplers and a traced count for the adaptive one; either way it is
returned as an int32 array so that all samplers have the same output type.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import Coeffs, Prediction, as_model_fn, get_parameterization
from diffjax.diffusion.processes import LinearProcess, broadcast_to_data


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


class Trajectory(NamedTuple):
    """Every network call of a discrete-schedule sampler, in call order (leading axis K = NFE)."""

    model_inputs: jax.Array  # [K, B, ...] what the network saw (scaled where the sampler scales)
    timesteps: jax.Array  # [K] the timestep it was conditioned on (float32)
    model_outputs: jax.Array  # [K, B, ...] its raw output
    latents: jax.Array  # [K, B, ...] the latents after the step that used this call


def output_prediction(parameterization: str, output: jax.Array, x: jax.Array, alpha,
                      sigma) -> tuple[jax.Array, jax.Array]:
    """(x0_hat, eps_hat) of a raw network output at x = alpha x0 + sigma eps (scalars alpha,
    sigma), by the parameterisation's own formulas (diffjax.diffusion.parameterization)."""
    c = Coeffs(broadcast_to_data(alpha, x), broadcast_to_data(sigma, x), None, None, None)
    return get_parameterization(parameterization).predict(output.astype(x.dtype), x, c)


def model_call(model_fn, x_in: jax.Array, t) -> jax.Array:
    """model_fn(x_in, t) with t as the per-example float32 array a network embeds."""
    return model_fn(x_in, jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_in.shape[:1]))
