"""Few-step samplers: consistency models (1, 2 or N steps) and MeanFlow's average-velocity jumps.

- `consistency` (Song et al., 2023, Algorithm 1; sCM's 1- and 2-step sampling): x ~ prior at
  t_0 = T, then for i = 0 .. N-1: x0 = f(x, t_i), the model's x0 prediction (which is the
  consistency function: `diffusion.consistency`), and unless it is the last step
  x = alpha(t_{i+1}) x0 + sigma(t_{i+1}) z with fresh noise z. NFE = N exactly. Any diffjax model
  works (for a diffusion model this is "denoise and re-noise"); for a consistency model it is the
  paper's sampler. sCM's 2-step sampling uses t_1 = 1.1 on TrigFlow
  (`--config.sampling.intermediate_times=1.1`).
- `meanflow` (Geng et al., 2025, Algorithm 2 and its multi-step form): x ~ prior at t_0 = T, then
  x <- x - (t_i - t_{i+1}) u(x, t_{i+1}, t_i) down to t_N = 0. NFE = N exactly. With a model
  that has no second time input, u is its instantaneous velocity and this is Euler on the
  probability-flow ODE.

Times between the steps: `intermediate_times="t1,t2,..."` (decreasing, in the process's time;
the first N - 1 are used), or by default the interior points of `time_grid`: "edm" (rho = 7 in
sigma~, from sigma~(t_max) to sigma~(eps)) for `consistency`, "uniform" in t for `meanflow` (the
official 2-step schedule 1, 0.5, 0 on flow matching).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import ScoreFn, as_model_fn
from diffjax.diffusion.processes import LinearProcess, float_dtype
from diffjax.sampling.result import SampleResult, batch_time, predict
from diffjax.sampling.time_grids import resolve_eps, time_grid as make_time_grid

Array = jax.Array


def parse_times(text: str, num_steps: int, process: LinearProcess) -> list[float] | None:
    """The first num_steps - 1 times of "t1,t2,...", checked; None when `text` is empty."""
    text = str(text or "").strip()
    if not text:
        return None
    try:
        times = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"sampling.intermediate_times={text!r} is not a comma-separated list "
                         f"of times, e.g. 1.1 or 0.8,0.4.") from None
    needed = num_steps - 1
    if len(times) < needed:
        raise ValueError(f"sampling.intermediate_times={text!r} has {len(times)} times; "
                         f"{num_steps} steps need {needed}. Give more, or leave it empty for the "
                         f"default grid.")
    times = times[:needed]
    bounds = [process.T] + times + [0.0]
    if any(not a > b for a, b in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"sampling.intermediate_times={text!r} must decrease strictly inside "
                         f"(0, T={process.T:g}) for sde.name={process.name}.")
    return times


def step_times(process: LinearProcess, num_steps: int, intermediate_times: str, *,
               time_grid: str, eps: float, rho: float) -> Array:
    """[num_steps + 1] times: T, the N - 1 intermediate ones, then the grid's end."""
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"sampling.num_steps={num_steps} must be >= 1.")
    grid = make_time_grid(time_grid, process, num_steps, eps, rho=rho)
    given = parse_times(intermediate_times, num_steps, process)
    if given is not None:
        grid = grid.at[1:num_steps].set(jnp.asarray(given, grid.dtype))
    return grid.at[0].set(process.T)


def consistency(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearProcess,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1,
    eps: float | None = None,
    time_grid: str | None = None,
    rho: float = 7.0,
    intermediate_times: str = "",
) -> SampleResult:
    """Multistep consistency sampling; NFE = num_steps."""
    eps = resolve_eps(sde, eps)
    times = step_times(sde, num_steps, intermediate_times, time_grid=time_grid or "edm",
                       eps=eps, rho=rho)
    model = as_model_fn(score_fn, sde)
    prior_rng, noise_rng = jax.random.split(rng)
    x = sde.prior_sample(prior_rng, shape, float_dtype())
    x0 = predict(model, sde, x, times[0]).x0

    def step(x0, scanned):
        index, t = scanned
        noise = jax.random.normal(jax.random.fold_in(noise_rng, index), shape, x0.dtype)
        x = sde.perturb(x0, batch_time(t, x0), noise)
        return predict(model, sde, x, t).x0, None

    if num_steps > 1:
        x0, _ = jax.lax.scan(step, x0, (jnp.arange(1, num_steps), times[1:num_steps]))
    return SampleResult(samples=x0, nfe=jnp.asarray(num_steps, jnp.int32))


def meanflow(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearProcess,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1,
    time_grid: str | None = None,
    rho: float = 7.0,
    intermediate_times: str = "",
) -> SampleResult:
    """MeanFlow's jumps z_r = z_t - (t - r) u(z_t, r, t) from T to 0; NFE = num_steps."""
    model = score_fn if hasattr(score_fn, "average_velocity") else as_model_fn(score_fn, sde)
    times = step_times(sde, num_steps, intermediate_times, time_grid=time_grid or "uniform",
                       eps=0.0 if sde.allows_zero_eps else resolve_eps(sde, None), rho=rho)
    times = times.at[-1].set(0.0)
    x = sde.prior_sample(rng, shape, float_dtype())

    def step(x, ts):
        t, r = ts
        u = model.average_velocity(x, batch_time(t, x), batch_time(r, x))
        return x - (t - r).astype(x.dtype) * u, None

    x, _ = jax.lax.scan(step, x, (times[:-1], times[1:]))
    return SampleResult(samples=x, nfe=jnp.asarray(num_steps, jnp.int32))
