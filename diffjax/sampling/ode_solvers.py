"""Fixed-step solvers of the probability-flow ODE dx/dt = f(t) x - 1/2 g(t)^2 score(x, t).

Both integrate in t from T down to eps over a grid from `time_grids` (uniform in t, EDM's rho
schedule, or uniform in log-SNR); the grid decides where the steps go, the solver how accurate each
one is.

- Euler: first order, one evaluation per step.
- Heun (EDM, Karras et al. 2022, Alg. 1): an Euler predictor followed by the trapezoidal
  correction, second order. As in EDM the correction is skipped on the last step, so N steps
  cost 2N - 1 evaluations; the one Euler step is a local O(h^2) error and does not lower the
  global order.

(Euler in the variables (x / alpha, sigma / alpha) rather than (x, t) is DDIM; see
`ddim_sampler.py`. It is much more accurate per step, especially for VE, whose PF-ODE in t is
far from straight: prefer `dpm_solver` for few steps.)
"""

from __future__ import annotations

import jax

from diffjax.sampling.result import SampleResult, batch_time, finish
from diffjax.sampling.time_grids import resolve_eps, time_grid as make_time_grid
from diffjax.sde import LinearSDE
from diffjax.score import ScoreFn

Array = jax.Array


def pf_ode_drift(score_fn: ScoreFn, sde: LinearSDE, x: Array, t) -> Array:
    """dx/dt of the probability-flow ODE at the scalar time t (one network evaluation)."""
    t_batch = batch_time(t, x)
    return sde.probability_flow_drift(x, t_batch, score_fn(x, t_batch))


def euler_ode_solve(score_fn: ScoreFn, sde: LinearSDE, x: Array, grid: Array) -> Array:
    """Euler steps along `grid` (decreasing times), starting from x at grid[0]."""

    def step(x, ts):
        t, t_next = ts
        return x + (t_next - t) * pf_ode_drift(score_fn, sde, x, t), None

    x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:]))
    return x


def heun_ode_solve(score_fn: ScoreFn, sde: LinearSDE, x: Array, grid: Array) -> Array:
    """Heun steps along `grid`, the last one plain Euler: 2 (len(grid) - 1) - 1 evaluations."""

    def step(x, ts):
        t, t_next = ts
        dt = t_next - t
        d = pf_ode_drift(score_fn, sde, x, t)
        x_euler = x + dt * d
        d_next = pf_ode_drift(score_fn, sde, x_euler, t_next)
        return x + 0.5 * dt * (d + d_next), None

    x, _ = jax.lax.scan(step, x, (grid[:-2], grid[1:-1]))
    return euler_ode_solve(score_fn, sde, x, grid[-2:])


def ode_euler(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 100,
    eps: float | None = None,
    time_grid: str = "uniform",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """Euler on the PF-ODE from a prior draw. NFE = num_steps (+1 with `denoise`)."""
    eps = resolve_eps(sde, eps)
    grid = make_time_grid(time_grid, sde, num_steps, eps, rho=rho)
    x = euler_ode_solve(score_fn, sde, sde.prior_sample(rng, shape), grid)
    return finish(sde, score_fn, x, int(num_steps), eps, denoise)


def ode_heun(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 50,
    eps: float | None = None,
    time_grid: str = "edm",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """EDM's Heun on the PF-ODE. NFE = 2 num_steps - 1 (+1 with `denoise`)."""
    eps = resolve_eps(sde, eps)
    grid = make_time_grid(time_grid, sde, num_steps, eps, rho=rho)
    x = heun_ode_solve(score_fn, sde, sde.prior_sample(rng, shape), grid)
    return finish(sde, score_fn, x, 2 * int(num_steps) - 1, eps, denoise)
