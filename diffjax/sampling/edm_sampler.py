"""EDM's sampler (Karras et al., 2022, Algorithms 1 and 2): Heun in sigma~ with optional churn.

EDM writes any linear process as x = alpha(t) x~ with x~ = x0 + sigma~ eps, sigma~ = sigma / alpha,
whose PF-ODE is dx~/dsigma~ = (x~ - D(x~; sigma~)) / sigma~ = eps_hat: straight lines when the
data is a point, which is why steps in sigma~ can be so accurate. With N = num_steps noise levels on
EDM's rho grid, i = 0..N-1,
    sigma~_i = (sigma~_max^(1/rho) + i/(N-1) (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho,
between sigma~_max = sigma~(t_max) and sigma~_min = sigma~(eps), and sigma~_N = 0:

    for i = 0..N-1:
        gamma = min(S_churn / N, sqrt(2) - 1) if S_min <= sigma~_i <= S_max else 0
        sigma^ = sigma~_i (1 + gamma);  x^ = x~_i + sqrt(sigma^^2 - sigma~_i^2) S_noise z_i
        d = eps_hat(x^, sigma^);  x~_{i+1} = x^ + (sigma~_{i+1} - sigma^) d             (Euler)
        if i < N - 1:
            x~_{i+1} = x^ + (sigma~_{i+1} - sigma^) (d + eps_hat(x~_{i+1}, sigma~_{i+1})) / 2

The network is evaluated at x = alpha(t) x~ with t = t(sigma~) of the process, so the sampler runs
on every process; on EDM's (alpha = 1, sigma = t) it is EDM's `edm_sampler` line for line (the
tests compare it against a transcription of Algorithm 2 under shared noise). The last step, to
sigma = 0 without correction, lands on D(x^; sigma^), the Tweedie estimate: no separate denoising.
NFE = 2 N - 1: EDM's 18 steps are 35 evaluations. S_churn = 0 (the default) is Algorithm 1,
deterministic. The noise z_i is drawn from the i-th of `jax.random.split(fold_in(rng, 1), N)`
(drawn, and multiplied by zero, when gamma = 0).
EDM's settings: CIFAR-10 N = 18, S_churn = 0; ImageNet-64 N = 256, S_churn = 40, S_min = 0.05,
S_max = 50, S_noise = 1.003.
The churn spread sqrt(sigma^^2 - sigma~_i^2) is computed as sigma~_i sqrt(gamma (2 + gamma)),
exactly 0 at gamma = 0: with the subtraction, XLA's fused sigma^^2 - sigma~^2 left a rounding
remainder whose root (~sigma~ sqrt(ulp)) added noise on every step without churn (measured 3e-8
to 9e-8 relative per network input in float64, 1e-3 in float32; now 1e-14 and 5e-6 against a
float64 transcription of Algorithm 2, tests/test_edm.py).

`euler_discrete` is Algorithm 2 without its correction and without churn on a given table of
noise levels: diffusers' `EulerDiscreteScheduler`, whose latents are x~ and whose network is a
variance-preserving one fed alpha x~ = x~ / sqrt(sigma~^2 + 1).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import LinearProcess
from diffjax.sampling.result import SampleResult, Trajectory, model_call, output_prediction, predict
from diffjax.sampling.time_grids import edm_sigmas, resolve_eps

Array = jax.Array


def euler_in_sigma(x_tilde: Array, d: Array, sigma, sigma_next) -> Array:
    """EDM's Euler step x~ + (sigma~_next - sigma~) d along dx~/dsigma~ = d."""
    return x_tilde + (sigma_next - sigma) * d


def edm_heun(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearProcess,
    shape: tuple[int, ...],
    *,
    num_steps: int = 18,
    eps: float | None = None,
    rho: float = 7.0,
    S_churn: float = 0.0,  # noqa: N803 - EDM's names
    S_min: float = 0.0,  # noqa: N803
    S_max: float = math.inf,  # noqa: N803
    S_noise: float = 1.0,  # noqa: N803
) -> SampleResult:
    """Heun in sigma~ with churn (Karras et al. Alg. 2). NFE = 2 num_steps - 1."""
    num_steps = int(num_steps)
    if num_steps < 1:
        raise ValueError(f"sampling.num_steps={num_steps} must be at least 1.")
    eps = resolve_eps(sde, eps)
    if eps <= 0:
        raise ValueError("edm_heun ends with its own step to sigma = 0; set sampling.eps > 0 "
                         "(the smallest noise level sigma_min).")
    sigmas = edm_sigmas(sde, num_steps, eps, rho=rho)
    sigmas_next = jnp.concatenate([sigmas[1:], jnp.zeros_like(sigmas[:1])])
    gamma_max = min(float(S_churn) / num_steps, math.sqrt(2.0) - 1.0)
    gammas = jnp.where((sigmas >= S_min) & (sigmas <= S_max), gamma_max, 0.0)
    keys = jax.random.split(jax.random.fold_in(rng, 1), num_steps)

    def eps_hat(x_tilde, sigma_tilde):
        t = sde.t_from_noise_to_signal(sigma_tilde)
        alpha, _ = sde.marginal_coeffs(t)
        return predict(score_fn, sde, alpha * x_tilde, t).eps

    def churn(x_tilde, sigma, gamma, key):
        sigma_hat = sigma * (1.0 + gamma)
        noise = jax.random.normal(key, x_tilde.shape, x_tilde.dtype)
        # sqrt(sigma^^2 - sigma^2) without the subtraction: at gamma = 0 XLA's fused
        # sigma^^2 - sigma^2 can leave a rounding remainder whose square root, ~sigma sqrt(ulp),
        # would add noise on every step where EDM adds exactly none.
        spread = sigma * jnp.sqrt(gamma * (2.0 + gamma))
        return x_tilde + spread * S_noise * noise, sigma_hat

    def heun_step(x_tilde, inputs):
        sigma, sigma_next, gamma, key = inputs
        x_hat, sigma_hat = churn(x_tilde, sigma, gamma, key)
        d = eps_hat(x_hat, sigma_hat)
        x_next = euler_in_sigma(x_hat, d, sigma_hat, sigma_next)
        d_next = eps_hat(x_next, sigma_next)
        return euler_in_sigma(x_hat, 0.5 * d + 0.5 * d_next, sigma_hat, sigma_next), None

    t_start = sde.t_from_noise_to_signal(sigmas[0])
    alpha_start, _ = sde.marginal_coeffs(t_start)
    x_tilde = sde.prior_sample(rng, shape) / alpha_start
    x_tilde, _ = jax.lax.scan(heun_step, x_tilde, (sigmas[:-1], sigmas_next[:-1], gammas[:-1],
                                                   keys[:-1]))
    # Last step: Euler to sigma~ = 0, which is D(x^; sigma^).
    x_hat, sigma_hat = churn(x_tilde, sigmas[-1], gammas[-1], keys[-1])
    x_tilde = euler_in_sigma(x_hat, eps_hat(x_hat, sigma_hat), sigma_hat, 0.0)
    return SampleResult(samples=x_tilde, nfe=jnp.asarray(2 * num_steps - 1, jnp.int32))


class NoiseLevels(NamedTuple):
    """A discrete schedule in sigma~: host arrays, the timesteps [N] the network sees and the
    noise levels [N + 1], decreasing, the last 0 (or the smallest train level)."""

    timesteps: np.ndarray
    sigmas: np.ndarray


def euler_discrete(model_fn, x_tilde: Array, levels: NoiseLevels, *,
                   parameterization: str = "eps",
                   record: bool = False) -> tuple[Array, Trajectory | None]:
    """Euler in sigma~ along `levels` from x~ (diffusers' `EulerDiscreteScheduler.step`, churn off).

    model_fn(x_in, t) is a variance-preserving network fed x_in = x~ / sqrt(sigma~^2 + 1) (its
    alpha = 1 / sqrt(sigma~^2 + 1), sigma = sigma~ alpha; output read as `parameterization`):
        d = (x~ - x0_hat) / sigma~,  x~_next = x~ + (sigma~_next - sigma~) d.
    Arithmetic in x~'s dtype from the table values (diffusers casts the latents to float32 inside
    `step`; here float64 latents stay float64). NFE = N. Returns x~ and, with record=True, the
    `Trajectory`.
    """
    dtype = x_tilde.dtype

    def step(x, inputs):
        t, sigma, sigma_next = inputs
        scale = jnp.sqrt(sigma**2 + 1)
        x_in = x / scale
        output = model_call(model_fn, x_in, t)
        x0, _ = output_prediction(parameterization, output, x_in, 1 / scale, sigma / scale)
        x_next = euler_in_sigma(x, (x - x0) / sigma, sigma, sigma_next)
        return x_next, (Trajectory(x_in, t, output, x_next) if record else None)

    sigmas = jnp.asarray(levels.sigmas, dtype)
    inputs = (jnp.asarray(levels.timesteps, jnp.float32), sigmas[:-1], sigmas[1:])
    return jax.lax.scan(step, x_tilde, inputs)
