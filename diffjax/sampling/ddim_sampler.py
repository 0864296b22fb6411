"""Deterministic DDIM (Song, Meng & Ermon, 2021; eta = 0), written for any linear SDE.

Kept deliberately naive, as the reference that `dpm_solver(order=1)` must reproduce: from x_s at
time s, predict the noise and the clean data,
    eps_hat = -sigma_s score(x_s, s),   x0_hat = (x_s - sigma_s eps_hat) / alpha_s,
and re-noise the prediction deterministically to the next time t:
    x_t = alpha_t x0_hat + sigma_t eps_hat.
This is exact for the PF-ODE whenever x0_hat is constant along the step, which is why it is the
first-order exponential integrator (DPM-Solver-1 in either noise or data prediction).
"""

from __future__ import annotations

import jax

from diffjax.sampling.result import SampleResult, batch_time, finish
from diffjax.sampling.time_grids import resolve_eps, time_grid as make_time_grid
from diffjax.sde import LinearSDE
from diffjax.score import ScoreFn, score_to_noise

Array = jax.Array


def ddim_step(score_fn: ScoreFn, sde: LinearSDE, x: Array, s, t) -> Array:
    """One eta = 0 DDIM step from time s to time t (scalars), one network evaluation."""
    s_batch = batch_time(s, x)
    alpha_s, sigma_s = sde.marginal_coeffs(s)
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    eps_hat = score_to_noise(sde, score_fn(x, s_batch), s_batch)
    x0_hat = (x - sigma_s * eps_hat) / alpha_s
    return alpha_t * x0_hat + sigma_t * eps_hat


def ddim(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 50,
    eps: float | None = None,
    time_grid: str = "log_snr",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """DDIM (eta = 0) from a prior draw. NFE = num_steps (+1 with `denoise`)."""
    eps = resolve_eps(sde, eps)
    grid = make_time_grid(time_grid, sde, num_steps, eps, rho=rho)

    def step(x, ts):
        return ddim_step(score_fn, sde, x, ts[0], ts[1]), None

    x, _ = jax.lax.scan(step, sde.prior_sample(rng, shape), (grid[:-1], grid[1:]))
    return finish(sde, score_fn, x, int(num_steps), eps, denoise)

