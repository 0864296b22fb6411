"""Multistep DPM-Solver in data prediction (DPM-Solver++ (Lu et al., 2022b), orders 1-3).

Which variant, and why. Both DPM-Solver papers give exponential integrators of the PF-ODE; we use
the *data-prediction* form with *multistep* (Adams-like) reuse of past network outputs, so every
step costs exactly one evaluation whatever the order. Data prediction keeps the integrand
x0_hat bounded (it is a clean-image estimate), which is what makes the high orders stable at
10-20 steps. Recommended: order 3, ~20 steps, time grid uniform in log-SNR (the default).
Published CIFAR-10 numbers for this family: FID 4.70 at 10 NFE, 2.87 at 20 NFE.

Derivation (ours, so that the coefficients can be checked). Write lambda = log(alpha / sigma)
(half of `sde.log_snr`, which is log(alpha^2 / sigma^2)) and D(lambda) = x0_hat = E[x_0 | x_t].
Every linear SDE satisfies g^2 = d sigma^2/dt - 2 f sigma^2, under which the PF-ODE becomes
    d(x / sigma) / d lambda = e^lambda D(lambda),
so, exactly, from lambda_i to lambda_{i+1} = lambda_i + h,
    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sigma_{i+1} int_{lambda_i}^{lambda_i + h} e^lambda D.
Expanding D to second order around lambda_i and integrating term by term
(u = lambda_{i+1} - lambda, and sigma_{i+1} e^lambda_{i+1} = alpha_{i+1}),
    sigma_{i+1} int e^lambda (lambda - lambda_i)^k / k! = alpha_{i+1} int_0^h e^-u (h-u)^k / k! du,
which gives
    x_{i+1} = (sigma_{i+1}/sigma_i) x_i + alpha_{i+1} (c0 D_i + c1 D'_i + c2 D''_i),
    c0 = 1 - e^-h,  c1 = h - 1 + e^-h,  c2 = h^2/2 - h + 1 - e^-h.
The derivatives come from the Newton interpolant through the last `order` outputs (D_i, D_{i-1},
D_{i-2} at lambda_i, lambda_{i-1}, lambda_{i-2}):
    order 1: D' = D'' = 0                         -> DDIM (eta = 0), local error O(h^2);
    order 2: D' = [D_i, D_{i-1}]                   -> local error O(h^3);
    order 3: D' = [D_i, D_{i-1}] + [D_i, D_{i-1}, D_{i-2}] (lambda_i - lambda_{i-1}),
             D'' = 2 [D_i, D_{i-1}, D_{i-2}]        -> local error O(h^4),
with [.] Newton divided differences in lambda. The first steps lack history and run at order
1, then 2. This is DPM-Solver++(2M)/(3M) with the exact phi-function weights (Lu et al.'s
"taylor" variant) rather than their first-order-accurate approximations of c1; both have the
stated order, and a test measures it.

Works unchanged for VP, sub-VP and VE: only alpha(t), sigma(t) and the log-SNR enter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.sampling.result import SampleResult, batch_time, finish
from diffjax.sampling.time_grids import resolve_eps, time_grid as make_time_grid
from diffjax.sde import LinearSDE
from diffjax.score import ScoreFn, score_to_denoised

Array = jax.Array

ORDERS = (1, 2, 3)


def exponential_weights(h: Array) -> tuple[Array, Array, Array]:
    """(c0, c1, c2) = int_0^h e^-u (h - u)^k / k! du for k = 0, 1, 2."""
    em1 = jnp.expm1(-h)  # e^-h - 1, accurate for small h
    return -em1, h + em1, 0.5 * h * h - h - em1


def dpm_solver(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    shape: tuple[int, ...],
    *,
    num_steps: int = 20,
    order: int = 3,
    eps: float | None = None,
    time_grid: str = "log_snr",
    rho: float = 7.0,
    denoise: bool = True,
) -> SampleResult:
    """Multistep DPM-Solver++ of the given order. NFE = num_steps (+1 with `denoise`)."""
    order = int(order)
    if order not in ORDERS:
        raise ValueError(f"sampling.order={order} is not supported; choose one of {ORDERS}.")
    eps = resolve_eps(sde, eps)
    grid = make_time_grid(time_grid, sde, num_steps, eps, rho=rho)
    lam = 0.5 * sde.log_snr(grid)
    alpha, sigma = sde.marginal_coeffs(grid)

    # The lambdas one and two steps back, clamped at the start where they are never used.
    index = jnp.arange(int(num_steps))
    lam_back1 = lam[jnp.maximum(index - 1, 0)]
    lam_back2 = lam[jnp.maximum(index - 2, 0)]

    def step(carry, inputs):
        x, d_back1, d_back2 = carry
        i, t, lam_i, lam_next, lam_b1, lam_b2, sigma_i, sigma_next, alpha_next = inputs
        t_batch = batch_time(t, x)
        d_i = score_to_denoised(sde, x, score_fn(x, t_batch), t_batch)

        # With fewer than `order` outputs so far, the highest available order is i + 1.
        use2 = (order >= 2) & (i >= 1)
        use3 = (order >= 3) & (i >= 2)
        h_b1 = jnp.where(use2, lam_i - lam_b1, 1.0)  # placeholders avoid 0/0 where unused
        h_b2 = jnp.where(use3, lam_b1 - lam_b2, 1.0)
        dd1 = (d_i - d_back1) / h_b1
        dd2 = (dd1 - (d_back1 - d_back2) / h_b2) / (h_b1 + h_b2)
        zero = jnp.zeros_like(d_i)
        d_prime = jnp.where(use3, dd1 + dd2 * h_b1, jnp.where(use2, dd1, zero))
        d_second = jnp.where(use3, 2.0 * dd2, zero)

        c0, c1, c2 = exponential_weights(lam_next - lam_i)
        x_next = (sigma_next / sigma_i) * x + alpha_next * (c0 * d_i + c1 * d_prime + c2 * d_second)
        return (x_next, d_i, d_back1), None

    x = sde.prior_sample(rng, shape)
    zeros = jnp.zeros_like(x)
    inputs = (
        index, grid[:-1], lam[:-1], lam[1:], lam_back1, lam_back2,
        sigma[:-1], sigma[1:], alpha[1:],
    )
    (x, _, _), _ = jax.lax.scan(step, (x, zeros, zeros), inputs)
    return finish(sde, score_fn, x, int(num_steps), eps, denoise)
