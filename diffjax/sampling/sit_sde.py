"""SiT's SDE sampler (Ma et al., 2024, `transport.Sampler.sample_sde`), for flow matching.

SiT samples the family of SDEs that share the probability-flow ODE's marginals,
    dx = [u(x, t) - w(t) score(x, t)] dt + sqrt(2 w(t)) dW   (t decreasing from 1 to 0),
where u is the PF-ODE velocity (`LinearProcess.probability_flow_velocity`) and w >= 0 any
diffusion coefficient; w = g^2 / 2 is the reverse SDE of the forward process. Both u and the
score come from one network evaluation. In SiT's own time s = 1 - t, SiT's choices of
w(s) (`diffusion_form`, times `diffusion_norm`):
    "sigma" (SiT's default)     norm sigma(t)              (1 - s for the linear path)
    "SBDM"                      norm g(t)^2 / 2            (infinite at t = 1: diverges on flow)
    "constant"                  norm
    "linear"                    norm (1 - s)
    "decreasing"                (norm cos(pi s) + 1)^2 / 4
    "increasing-decreasing"     norm sin(pi s)^2
Euler-Maruyama on the grid linspace(T, last_step_size, num_steps) (SiT: linspace(0, 1 - 0.04,
250) in s), then one last step of size last_step_size to t = 0:
    "mean" (SiT's default): the SDE drift step without noise;  "tweedie": x0_hat;
    "euler": a PF-ODE Euler step;  "none": stop at t = last_step_size.
NFE = num_steps (num_steps - 1 with last_step="none"); SiT's code evaluates the network twice
per step (drift and score), the same function.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import LinearProcess, broadcast_to_data, float_dtype
from diffjax.sampling.result import SampleResult, batch_time, predict

Array = jax.Array

# w(process, t, norm) in diffjax's time t; s = 1 - t is SiT's.
DIFFUSION_FORMS: dict[str, Callable] = {
    "sigma": lambda process, t, norm: norm * process.marginal_std(t),
    "SBDM": lambda process, t, norm: norm * 0.5 * process.diffusion(t) ** 2,
    "constant": lambda process, t, norm: norm * jnp.ones_like(t),
    "linear": lambda process, t, norm: norm * t,
    "decreasing": lambda process, t, norm: 0.25 * (norm * jnp.cos(math.pi * (1.0 - t)) + 1.0) ** 2,
    "increasing-decreasing": lambda process, t, norm: norm * jnp.sin(math.pi * (1.0 - t)) ** 2,
}
LAST_STEPS = ("mean", "tweedie", "euler", "none")


def sit_sde(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearProcess,
    shape: tuple[int, ...],
    *,
    num_steps: int = 250,
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str = "mean",
    last_step_size: float = 0.04,
) -> SampleResult:
    """SiT's Euler-Maruyama SDE sampler. NFE = num_steps (num_steps - 1 if last_step="none")."""
    if diffusion_form not in DIFFUSION_FORMS:
        raise ValueError(f"Unknown sampling.diffusion_form={diffusion_form!r}; choose one of "
                         f"{sorted(DIFFUSION_FORMS)}.")
    if last_step not in LAST_STEPS:
        raise ValueError(f"Unknown sampling.last_step={last_step!r}; choose one of {LAST_STEPS}.")
    num_steps = int(num_steps)
    if num_steps < 2:
        raise ValueError(f"sampling.num_steps={num_steps} must be at least 2 for sit_sde.")
    if not 0.0 < last_step_size < sde.T:
        raise ValueError(f"sampling.last_step_size={last_step_size} must lie in (0, T={sde.T}).")
    w_fn = DIFFUSION_FORMS[diffusion_form]
    norm = float(diffusion_norm)
    grid = jnp.linspace(sde.T, last_step_size, num_steps, dtype=float_dtype())
    init_key, loop_key = jax.random.split(rng)
    keys = jax.random.split(loop_key, num_steps - 1)

    def sde_drift(x, t):
        """dx/dt of the SDE at t, the PF velocity and the prediction (one evaluation)."""
        pred = predict(score_fn, sde, x, t)
        t_batch = batch_time(t, x)
        velocity = sde.probability_flow_velocity(pred.x0, pred.eps, t_batch)
        w = broadcast_to_data(w_fn(sde, t_batch, norm), x)
        return velocity - w * pred.score, velocity, pred, w

    def step(x, inputs):
        t, t_next, key = inputs
        dt = t_next - t  # negative
        drift, _, _, w = sde_drift(x, t)
        noise = jax.random.normal(key, x.shape, x.dtype)
        return x + drift * dt + jnp.sqrt(2.0 * w * -dt) * noise, None

    x = sde.prior_sample(init_key, shape)
    x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:], keys))
    nfe = num_steps - 1
    if last_step != "none":
        drift, velocity, pred, _ = sde_drift(x, grid[-1])
        x = {"mean": lambda: x - last_step_size * drift,
             "euler": lambda: x - last_step_size * velocity,
             "tweedie": lambda: pred.x0}[last_step]()
        nfe += 1
    return SampleResult(samples=x, nfe=jnp.asarray(nfe, jnp.int32))
