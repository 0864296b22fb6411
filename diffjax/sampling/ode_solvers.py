"""Fixed-step solvers of the probability-flow ODE in t: Euler and Heun.

The PF-ODE of a linear process is dx/dt = alpha'(t) x0_hat + sigma'(t) eps_hat (from one network
evaluation; `LinearProcess.probability_flow_velocity`), equal to f x - g^2/2 score but finite
where alpha = 0, so these start at t = 1 on flow matching, where the PF-ODE is the learned
velocity field itself. Both integrate in t from the grid's start down to eps; the grid
(`time_grids`: uniform in t, EDM's rho schedule, uniform in log-SNR, DDPM's respaced steps) decides
where the steps go, the solver how accurate each one is.

- `ode_euler`: first order, one evaluation per step, N. On flow matching with the uniform grid,
  eps = 0 and no denoising, it is SiT's/torchdiffeq's "euler" with N + 1 grid points.
- `ode_heun_t`: Heun's method (explicit trapezoid) in t, second order, two evaluations per step,
  2N (every step corrected). On flow matching as above it is torchdiffeq's "heun2", SiT's Heun.
  It is NOT EDM's sampler, which steps in sigma~ = sigma / alpha on x / alpha and ends with an
  uncorrected step to sigma = 0 (`edm_heun`). Which is more accurate depends on the process: on
  the same sigma~ points at 35 NFE, EDM's is ~3x more accurate on VE, whose PF-ODE in t is far
  from straight, while on VP this one is ~3x more accurate for the test mixtures
  (tests/test_edm.py, benchmarks/samplers.py); on EDM's process (t = sigma) they coincide.

(Euler in the variables (x / alpha, sigma / alpha) rather than (x, t) is DDIM; see
`ddim_sampler.py`. It is much more accurate per step, especially for VE: prefer `dpm_solver` or
`edm_heun` for few steps.)
"""

from __future__ import annotations

import jax

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import LinearProcess
from diffjax.sampling.result import SampleResult, batch_time, finish, predict
from diffjax.sampling.time_grids import resolve_eps, time_grid as make_time_grid

Array = jax.Array


def pf_ode_drift(model, process: LinearProcess, x: Array, t) -> Array:
    """dx/dt of the probability-flow ODE at the scalar time t (one network evaluation)."""
    pred = predict(model, process, x, t)
    return process.probability_flow_velocity(pred.x0, pred.eps, batch_time(t, x))


def euler_ode_solve(model, process: LinearProcess, x: Array, grid: Array) -> Array:
    """Euler steps along `grid` (decreasing times), starting from x at grid[0]."""

    def step(x, ts):
        t, t_next = ts
        return x + (t_next - t) * pf_ode_drift(model, process, x, t), None

    x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:]))
    return x


def heun_ode_solve(model, process: LinearProcess, x: Array, grid: Array) -> Array:
    """Heun steps along `grid`, each corrected: 2 (len(grid) - 1) evaluations."""

    def step(x, ts):
        t, t_next = ts
        dt = t_next - t
        d = pf_ode_drift(model, process, x, t)
        d_next = pf_ode_drift(model, process, x + dt * d, t_next)
        return x + 0.5 * dt * (d + d_next), None

    x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:]))
    return x


def ode_euler(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearProcess,
    shape: tuple[int, ...],
    *,
    num_steps: int = 100,
    eps: float | None = None,
    time_grid: str = "uniform",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """Euler on the PF-ODE in t from a prior draw. NFE = num_steps (+1 with `denoise`)."""
    eps = resolve_eps(sde, eps)
    grid = make_time_grid(time_grid, sde, num_steps, eps, rho=rho)
    x = euler_ode_solve(score_fn, sde, sde.prior_sample(rng, shape), grid)
    return finish(sde, score_fn, x, int(num_steps), eps, denoise)


def ode_heun_t(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearProcess,
    shape: tuple[int, ...],
    *,
    num_steps: int = 50,
    eps: float | None = None,
    time_grid: str = "edm",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """Heun's method on the PF-ODE in t (not EDM's). NFE = 2 num_steps (+1 with `denoise`)."""
    eps = resolve_eps(sde, eps)
    grid = make_time_grid(time_grid, sde, num_steps, eps, rho=rho)
    x = heun_ode_solve(score_fn, sde, sde.prior_sample(rng, shape), grid)
    return finish(sde, score_fn, x, 2 * int(num_steps), eps, denoise)
