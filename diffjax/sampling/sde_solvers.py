"""Stochastic samplers of the reverse-time SDE: Euler–Maruyama, reverse diffusion, and the
predictor–corrector (PC) combination of either with Langevin correction (Song et al., 2021).

All three run one loop, `reverse_sde_loop`: at each grid time t_i (from T down to eps) it
optionally corrects at t_i, then predicts from t_i to t_{i+1}. NFE is counted from what actually
ran: num_steps predictor evaluations plus num_steps * corrector_steps corrector evaluations
(score_sde counted the corrector's evaluations even when none ran).

Reverse diffusion needs a discretisation of the *forward* SDE, x_{i+1} = x_i + f_i(x_i) + G_i z_i,
which score_sde wrote down for VP and VE only. For any linear SDE the exact one is the transition
kernel between grid times s < t, x_t | x_s ~ N(a x_s, v I) with
    a = alpha(t) / alpha(s),   v = sigma(t)^2 - a^2 sigma(s)^2,
i.e. f_i(x) = (a - 1) x and G_i^2 = v. It reproduces score_sde's VP (a = sqrt(1 - beta_i),
v = beta_i) and VE (a = 1, v = sigma_t^2 - sigma_s^2) choices and gives sub-VP its own. The
reverse-diffusion step is then x_s = x_t - f_i(x_t) + G_i^2 score(x_t, t) + G_i z.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import LinearProcess as LinearSDE, as_time, broadcast_to_data
from diffjax.sampling.langevin import Constraint, langevin_correct
from diffjax.sampling.result import SampleResult, batch_time, finish, predict
from diffjax.sampling.time_grids import resolve_eps, time_grid

Array = jax.Array


def forward_transition(sde: LinearSDE, s, t) -> tuple[Array, Array]:
    """(a, v) of the exact kernel x_t | x_s ~ N(a x_s, v I) for s < t."""
    s, t = as_time(s), as_time(t)
    alpha_s, _ = sde.marginal_coeffs(s)
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    a = alpha_t / alpha_s
    # v = sigma_t^2 (1 - a^2 sigma_s^2 / sigma_t^2) and a^2 sigma_s^2 / sigma_t^2 is the SNR ratio;
    # written with expm1 so that v keeps its relative precision over the short steps near eps.
    v = -(sigma_t**2) * jnp.expm1(sde.log_snr(t) - sde.log_snr(s))
    return a, v


# A predictor moves x from t to t_next < t: predictor(rng, score_fn, sde, x, t, t_next) -> x,
# one network evaluation.
Predictor = Callable[[Array, ScoreFn, LinearSDE, Array, Array, Array], Array]


def euler_maruyama_step(rng, score_fn, sde, x, t, t_next):
    t_batch = batch_time(t, x)
    dt = t_next - t  # negative: integrating backwards in time
    drift = sde.reverse_drift(x, t_batch, predict(score_fn, sde, x, t).score)
    g = broadcast_to_data(sde.diffusion(t_batch), x)
    noise = jax.random.normal(rng, x.shape, x.dtype)
    return x + drift * dt + g * jnp.sqrt(-dt) * noise


def reverse_diffusion_step(rng, score_fn, sde, x, t, t_next):
    a, v = forward_transition(sde, t_next, t)
    score = predict(score_fn, sde, x, t).score
    noise = jax.random.normal(rng, x.shape, x.dtype)
    x_mean = x - (a - 1.0) * x + v * score
    return x_mean + jnp.sqrt(v) * noise


PREDICTORS: dict[str, Predictor] = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
}


def get_predictor(name: str) -> Predictor:
    try:
        return PREDICTORS[name]
    except KeyError:
        raise ValueError(
            f"Unknown sampling.predictor={name!r}; choose one of {sorted(PREDICTORS)}."
        ) from None


def reverse_sde_loop(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    predictor: str,
    num_steps: int,
    eps: float,
    time_grid_name: str = "uniform",
    rho: float = 7.0,
    snr: float = 0.16,
    corrector_steps: int = 0,
    constrain: Constraint | None = None,
) -> tuple[Array, int]:
    """Predictor(-corrector) sweep from the prior at t_max (T, or 0.999 for flow, whose reverse
    SDE is singular at T) to eps. Returns (x_eps, nfe).

    `constrain(x, t, rng)` is applied after the initial draw and after every predictor and
    corrector update, with the time x is now at; inpainting uses it to re-impose known pixels.
    """
    predict = get_predictor(predictor)
    corrector_steps = int(corrector_steps)
    if corrector_steps < 0:
        raise ValueError(f"sampling.corrector_steps={corrector_steps} must be >= 0.")
    grid = time_grid(time_grid_name, sde, num_steps, eps, rho=rho, start=sde.t_max)
    init_key, constrain_key, loop_key = jax.random.split(rng, 3)
    x = sde.prior_sample(init_key, shape)
    if constrain is not None:
        x = constrain(x, grid[0], constrain_key)

    def step(x, inputs):
        t, t_next, key = inputs
        corrector_key, predictor_key, constrain_key = jax.random.split(key, 3)
        if corrector_steps > 0:
            a, _ = forward_transition(sde, t_next, t)
            x = langevin_correct(
                corrector_key, score_fn, sde, x, t, a**2,
                snr=snr, num_steps=corrector_steps, constrain=constrain,
            )
        x = predict(predictor_key, score_fn, sde, x, t, t_next)
        if constrain is not None:
            x = constrain(x, t_next, constrain_key)
        return x, None

    keys = jax.random.split(loop_key, int(num_steps))
    x, _ = jax.lax.scan(step, x, (grid[:-1], grid[1:], keys))
    return x, int(num_steps) * (1 + corrector_steps)


def euler_maruyama(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1000,
    eps: float | None = None,
    time_grid: str = "uniform",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """Euler–Maruyama on the reverse SDE. NFE = num_steps (+1 with `denoise`).

    Unlike score_sde (N grid points but dt = -1/N), the steps add up to exactly T - eps.
    """
    eps = resolve_eps(sde, eps)
    x, nfe = reverse_sde_loop(
        rng, score_fn, sde, shape, predictor="euler_maruyama",
        num_steps=num_steps, eps=eps, time_grid_name=time_grid, rho=rho,
    )
    return finish(sde, score_fn, x, nfe, eps, denoise)


def reverse_diffusion(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1000,
    eps: float | None = None,
    time_grid: str = "uniform",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """The reverse-diffusion predictor alone (ancestral-style). NFE = num_steps (+1)."""
    eps = resolve_eps(sde, eps)
    x, nfe = reverse_sde_loop(
        rng, score_fn, sde, shape, predictor="reverse_diffusion",
        num_steps=num_steps, eps=eps, time_grid_name=time_grid, rho=rho,
    )
    return finish(sde, score_fn, x, nfe, eps, denoise)


def predictor_corrector(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 1000,
    eps: float | None = None,
    predictor: str = "reverse_diffusion",
    snr: float = 0.16,
    corrector_steps: int = 1,
    time_grid: str = "uniform",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """PC sampling: Langevin correction at each t_i, then a predictor step.

    NFE = num_steps * (1 + corrector_steps) (+1 with `denoise`).
    """
    eps = resolve_eps(sde, eps)
    x, nfe = reverse_sde_loop(
        rng, score_fn, sde, shape, predictor=predictor,
        num_steps=num_steps, eps=eps, time_grid_name=time_grid, rho=rho,
        snr=snr, corrector_steps=corrector_steps,
    )
    return finish(sde, score_fn, x, nfe, eps, denoise)
