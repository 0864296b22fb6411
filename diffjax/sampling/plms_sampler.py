"""Pseudo linear multistep sampling (PLMS; Liu et al. 2022, "Pseudo Numerical Methods for
Diffusion Models on Manifolds"), as diffusers' `PNDMScheduler` runs it with skip_prk_steps=True,
Stable Diffusion 1.x's default scheduler.

The transfer is DDIM's eta = 0 step on a discrete DDPM schedule from the step with alphas_cumprod
abar to the one with abar', driven by a noise prediction e, written as PNDM's eq. 9 (the same
step as `ddim_update` with x0 = (x - sqrt(1 - abar) e) / sqrt(abar), its eps coefficient as a
difference of squares):
    x' = sqrt(abar' / abar) x - (abar' - abar) e / D,
    D = abar sqrt(1 - abar') + sqrt(abar (1 - abar) abar').
PLMS drives it with a linear multistep combination of the network's outputs: with timesteps
T_0 > T_1 > ... (the spaced steps, r = N_train // N their nominal stride) it makes K = N + 1
network calls (one when N = 1), on the timesteps T_0, T_1, T_1, T_2, ..., T_{N-1}:
    call 0 at T_0 on x_0:  e_0;  x_1 = transfer(x_0, T_0 -> T_0 - r, e_0)
    call 1 at T_1 on x_1:  e_1;  x_2 = transfer(x_0, T_1 + r -> T_1, (e_0 + e_1) / 2)
      (the first step again, from x_0, with the average of both ends: a Heun-like start)
    call k >= 2 at T_{k-1} on x_k: x_{k+1} = transfer(x_k, T -> T - r, E_k), E_k the
      Adams-Bashforth combination of e_k and the earlier outputs except e_1:
      (3 e_k - e_0) / 2, then (23 e_k - 16 e_{k-1} + 5 e_{k-2}) / 12,
      then (55 e_k - 59 e_{k-1} + 37 e_{k-2} - 9 e_{k-3}) / 24.
A step past the first train step goes to the final alphas_cumprod (1, or alphas_cumprod[0]). With
a v-predicting network the raw outputs are combined and the combination read as v at the
transfer's start (diffusers' order of operations). The schedule's tables are built in
diffjax.pipelines.schedulers; everything here is in the latents' dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.sampling.result import Trajectory, model_call, output_prediction

Array = jax.Array

# Adams-Bashforth weights of (e_k, e_{k-1}, e_{k-2}, e_{k-3}) by the number of outputs available.
_BASHFORTH = {
    1: (1.0, 0.0, 0.0, 0.0),
    2: (3 / 2, -1 / 2, 0.0, 0.0),
    3: (23 / 12, -16 / 12, 5 / 12, 0.0),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


class PLMSCalls(NamedTuple):
    """Per network call k (host arrays of length K): the timestep the network sees and the
    alphas_cumprod values the call's transfer goes from and to."""

    timesteps: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_next: np.ndarray


def plms_weights(num_calls: int) -> np.ndarray:
    """[K, 4] weights of (e_k and the three previous outputs kept) for every call k >= 2 (rows 0
    and 1 are the warm-up's and unused)."""
    rows = [_BASHFORTH[1], _BASHFORTH[1]]
    rows += [_BASHFORTH[min(k, 4)] for k in range(2, num_calls)]
    return np.asarray(rows[:num_calls], np.float64)


def pndm_transfer(x: Array, eps: Array, abar, abar_next) -> Array:
    """PNDM's eq. 9: DDIM's eta = 0 step from alphas_cumprod abar to abar_next."""
    denominator = abar * jnp.sqrt(1 - abar_next) + jnp.sqrt(abar * (1 - abar) * abar_next)
    return jnp.sqrt(abar_next / abar) * x - (abar_next - abar) * eps / denominator


def plms_discrete(model_fn, x: Array, calls: PLMSCalls, *, parameterization: str = "eps",
                  record: bool = False) -> tuple[Array, Trajectory | None]:
    """PLMS along `calls` from x (see the module docstring). model_fn(x, t) is the raw network,
    its output read as `parameterization` ("eps" or "v"). NFE = K = len(calls.timesteps).
    Returns the final x and, with record=True, the `Trajectory`."""
    dtype = x.dtype
    num_calls = len(calls.timesteps)
    timesteps = jnp.asarray(calls.timesteps, jnp.float32)
    abar = jnp.asarray(calls.alphas_cumprod, dtype)
    abar_next = jnp.asarray(calls.alphas_cumprod_next, dtype)
    weights = jnp.asarray(plms_weights(num_calls), dtype)

    def transfer(x_from, combined, k):
        _, eps = output_prediction(parameterization, combined, x_from, jnp.sqrt(abar[k]),
                                   jnp.sqrt(1 - abar[k]))
        return pndm_transfer(x_from, eps, abar[k], abar_next[k])

    x0 = x
    e0 = model_call(model_fn, x0, timesteps[0]).astype(dtype)
    x = transfer(x0, e0, 0)
    records = [Trajectory(x0, timesteps[0], e0, x)]
    if num_calls > 1:
        x1 = x
        e1 = model_call(model_fn, x1, timesteps[1]).astype(dtype)
        x = transfer(x0, (e0 + e1) / 2, 1)
        records.append(Trajectory(x1, timesteps[1], e1, x))
    if num_calls > 2:
        def step(carry, k):
            x, back1, back2, back3 = carry
            e = model_call(model_fn, x, timesteps[k]).astype(dtype)
            w = weights[k]
            combined = w[0] * e + w[1] * back1 + w[2] * back2 + w[3] * back3
            x_next = transfer(x, combined, k)
            return (x_next, e, back1, back2), (Trajectory(x, timesteps[k], e, x_next)
                                               if record else None)

        zeros = jnp.zeros_like(e0)
        (x, _, _, _), scanned = jax.lax.scan(step, (x, e0, zeros, zeros),
                                             jnp.arange(2, num_calls))
    if not record:
        return x, None
    first = jax.tree.map(lambda *v: jnp.stack(v), *records)
    if num_calls <= 2:
        return x, first
    return x, jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, scanned)
