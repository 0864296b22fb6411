"""DDPM ancestral sampling (Ho et al., 2020), as DiT's/ADM's `p_sample_loop`, on any process.

On K times t_0 > ... > t_{K-1} (and t_K = "clean"), each step samples the posterior of the
forward process with the network's x0_hat in place of x0: for s < t with a = alpha_t / alpha_s,
beta = sigma_t^2 - a^2 sigma_s^2 (the step's forward variance),
    q(x_s | x_t, x0) = N(a sigma_s^2 / sigma_t^2 x_t + alpha_s beta / sigma_t^2 x0,  beta~),
    beta~ = beta sigma_s^2 / sigma_t^2.
For DDPM's alphas_cumprod these are DiT's posterior_mean_coef1/2 and posterior_variance; on a
respaced grid they are DiT's `SpacedDiffusion` coefficients, whose betas are
1 - abar_{n_k} / abar_{n_{k-1}}. `variance` picks the reverse variance:
- "beta_tilde": beta~ (DiT's FIXED_SMALL; Ho et al.'s sigma^2 = beta~);
- "beta": beta (FIXED_LARGE);
- "learned": exp(frac log beta + (1 - frac) log beta~), frac = (v + 1)/2 with v the network's
  learned-variance half (DiT's learn_sigma, LEARNED_RANGE).
The last step goes to the clean data, where the posterior is x0_hat itself with no noise.

Grid: time_grid="discrete" (the default on DDPM) keeps the K = num_steps steps DiT's
`space_timesteps(1000, str(K))` keeps, with coefficients computed in float64 from
alphas_cumprod as DiT does: `ddpm` with num_steps=250 samples exactly as DiT's sample.py with
250 steps (K network evaluations, x_T from `rng`). On other processes the K times come from the
named grid from T to eps, and the last step is the Tweedie estimate at eps.
NFE = num_steps. `clip_denoised` clips x0_hat to [-1, 1] (ADM's default; DiT samples without).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import DiscreteDDPM, LinearProcess, float_dtype
from diffjax.sampling.result import SampleResult, predict
from diffjax.sampling.time_grids import discrete_steps, resolve_eps, time_grid as make_time_grid

Array = jax.Array

VARIANCES = ("beta_tilde", "beta", "learned")


def _posterior(alpha_t, sigma_t, alpha_s, sigma_s, xp):
    """(coef_xt, coef_x0, log beta, log beta~) of q(x_s | x_t, x0), elementwise."""
    a = alpha_t / alpha_s
    beta = sigma_t**2 - a**2 * sigma_s**2
    coef_xt = a * sigma_s**2 / sigma_t**2
    coef_x0 = alpha_s * beta / sigma_t**2
    with np.errstate(divide="ignore"):
        log_beta_tilde = xp.log(beta * sigma_s**2 / sigma_t**2)
        return coef_xt, coef_x0, xp.log(beta), log_beta_tilde


def ddpm_coefficients(process: LinearProcess, num_steps: int, eps: float, time_grid: str,
                      rho: float):
    """(times [K], coef_xt, coef_x0, log beta, log beta~ [K]) of the K ancestral steps."""
    if time_grid == "discrete":
        n = discrete_steps(process, num_steps)
        abar = process.alphas_cumprod[n]
        abar_prev = np.append(abar[1:], 1.0)  # the last step goes to the clean data
        coeffs = _posterior(np.sqrt(abar), np.sqrt(1.0 - abar), np.sqrt(abar_prev),
                            np.sqrt(1.0 - abar_prev), np)
        times = (n + 1.0) / process.num_timesteps
        return tuple(jnp.asarray(v, float_dtype()) for v in (times, *coeffs))
    times = make_time_grid(time_grid, process, num_steps - 1, eps, rho=rho) if num_steps > 1 \
        else jnp.asarray([process.T], float_dtype())
    alpha, sigma = process.marginal_coeffs(times)
    alpha_s = jnp.append(alpha[1:], 1.0)
    sigma_s = jnp.append(sigma[1:], 0.0)
    return (times, *_posterior(alpha, sigma, alpha_s, sigma_s, jnp))


def ddpm(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearProcess,
    shape: tuple[int, ...],
    *,
    num_steps: int = 250,
    eps: float | None = None,
    time_grid: str | None = None,
    rho: float = 7.0,
    variance: str = "beta_tilde",
    clip_denoised: bool = False,
) -> SampleResult:
    """Ancestral sampling with the posterior variance. NFE = num_steps."""
    if variance not in VARIANCES:
        raise ValueError(f"Unknown sampling.variance={variance!r}; choose one of {VARIANCES}.")
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"sampling.num_steps={num_steps} must be at least 1.")
    eps = resolve_eps(sde, eps)
    time_grid = time_grid or ("discrete" if isinstance(sde, DiscreteDDPM) else "log_snr")
    times, coef_xt, coef_x0, log_beta, log_beta_tilde = ddpm_coefficients(
        sde, num_steps, eps, time_grid, rho)
    keys = jax.random.split(jax.random.fold_in(rng, 1), num_steps)
    x = ancestral_loop(score_fn, sde, sde.prior_sample(rng, shape),
                       (times, coef_xt, coef_x0, log_beta, log_beta_tilde), keys,
                       lambda key, x: jax.random.normal(key, x.shape, x.dtype),
                       variance=variance, clip_denoised=clip_denoised)
    return SampleResult(samples=x, nfe=jnp.asarray(num_steps, jnp.int32))


def ancestral_loop(score_fn, sde: LinearProcess, x: Array, coefficients, noise_source,
                   draw_noise, *, variance: str = "beta_tilde", clip_denoised: bool = False):
    """The K ancestral steps from x at times[0]; step k's noise is draw_noise(noise_source[k], x).

    (Tests pass precomputed noise with draw_noise = lambda z, x: z, to replay a reference run.)
    """
    times = coefficients[0]
    last = jnp.arange(times.shape[0]) == times.shape[0] - 1

    def step(x, inputs):
        t, c_xt, c_x0, lb, lbt, is_last, source = inputs
        pred = predict(score_fn, sde, x, t)
        if variance == "learned" and pred.var_interp is None:
            raise ValueError("sampling.variance=learned needs a network with a learned variance "
                             "(model.dit.learn_sigma=True).")
        x0 = jnp.clip(pred.x0, -1.0, 1.0) if clip_denoised else pred.x0
        mean = c_xt * x + c_x0 * x0
        if variance == "beta_tilde":
            log_var = lbt
        elif variance == "beta":
            log_var = lb
        else:
            frac = (pred.var_interp + 1.0) / 2.0
            log_var = frac * lb + (1.0 - frac) * lbt
        # No noise on the last step (to the clean data), where beta~ = 0.
        std = jnp.where(is_last, 0.0, jnp.exp(0.5 * jnp.where(is_last, 0.0, log_var)))
        return mean + std * draw_noise(source, x), None

    x, _ = jax.lax.scan(step, x, (*coefficients, last, noise_source))
    return x
