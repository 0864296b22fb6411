"""What every diffusion process shares: the linear Gaussian kernel x_t = alpha(t) x0 + sigma(t) eps.

Every objective diffjax trains (VP, sub-VP, VE, cosine VP, discrete DDPM, flow matching, EDM) is
such a process. A process states alpha(t) and sigma(t) (and, where it has closed forms, the
drift f and diffusion g of its SDE); everything a loss or a sampler needs follows:

- the forward SDE dx = f(t) x dt + g(t) dw with f = d log alpha / dt and
  g^2 = d sigma^2 / dt - 2 f sigma^2 (the kernel solves it; `tests/test_processes.py` checks it);
- the probability-flow ODE dx/dt = f x - g^2 / 2 score, which for any linear process equals
  alpha'(t) E[x0 | x_t] + sigma'(t) E[eps | x_t] (see `probability_flow_velocity`): written
  that way it stays finite where alpha = 0 (flow matching at t = 1), where f and g are not;
- the log-SNR lambda(t) = log(alpha^2 / sigma^2), decreasing in t, and its inverse, from which
  the samplers' log-SNR and EDM grids are built;
- the prior N(0, prior_std^2 I) at the sampling start.

Conventions:
- `t` is a per-example array of shape [B] (a scalar broadcasts); `x` is [B, ...]. Arithmetic
  follows the dtype of its inputs, so it runs in float64 when x64 is enabled.
- Processes are frozen dataclasses of Python scalars: hashable, so they can be static arguments
  of `jax.jit`; every method is a pure, jittable array function.
- `T` is where sampling starts from the prior; `t_max` is the largest time with a finite
  log-SNR (T, except for flow matching, whose alpha vanishes at T = 1): samplers that step in
  log-SNR or in EDM's sigma~ = sigma / alpha start there.
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp

Array = jax.Array


def float_dtype():
    """float64 when x64 is enabled, else float32: what time grids and sampler arithmetic use."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def as_time(t) -> Array:
    """t as an array in the working float dtype (keeps float64 when x64 is on)."""
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(float_dtype())


def broadcast_to_data(per_example, x: Array) -> Array:
    """Reshapes a [B] (or scalar) array so that it broadcasts against x of shape [B, ...]."""
    per_example = jnp.asarray(per_example, dtype=x.dtype)
    if per_example.ndim == 0:
        return per_example
    return per_example.reshape(per_example.shape + (1,) * (x.ndim - per_example.ndim))


class LinearProcess:
    """Shared algebra of the kernel N(alpha(t) x0, sigma(t)^2 I) and its SDE."""

    name: ClassVar[str]
    T: float
    # Customary end time of sampling (score_sde: 1e-3 for the VP family, 1e-5 for VE).
    default_eps: ClassVar[float] = 1e-3
    # Whether sampling may end at exactly t = 0 (possible where the network output stays
    # meaningful at sigma = 0, e.g. a flow-matching velocity).
    allows_zero_eps: ClassVar[bool] = False
    # Start of the likelihood integral (score_sde: 1e-5 for every SDE).
    likelihood_eps: ClassVar[float] = 1e-5

    # --- what each process defines --------------------------------------------------------
    def marginal_coeffs(self, t) -> tuple[Array, Array]:
        """(alpha(t), sigma(t)) of the kernel p(x_t | x_0) = N(alpha x_0, sigma^2 I)."""
        raise NotImplementedError

    def t_from_log_snr(self, log_snr) -> Array:
        """The inverse of `log_snr`, in closed form (the samplers' grids are built with it)."""
        raise NotImplementedError

    def prior_std(self) -> float:
        raise NotImplementedError

    @property
    def t_max(self) -> float:
        return self.T

    def sample_uniform_time(self, rng: Array, batch: int, eps: float) -> Array:
        """Training times uniform on [eps, T] (discrete processes: uniform over their steps)."""
        return jax.random.uniform(rng, (batch,), float_dtype(), minval=eps, maxval=self.T)

    # --- derived, overridable where a closed form is better ---------------------------------
    def coeff_derivatives(self, t) -> tuple[Array, Array]:
        """(d alpha / dt, d sigma / dt), by forward-mode differentiation of `marginal_coeffs`."""
        t = as_time(t)
        _, tangents = jax.jvp(self.marginal_coeffs, (t,), (jnp.ones_like(t),))
        return tangents

    def log_snr(self, t) -> Array:
        """lambda(t) = log(alpha^2 / sigma^2), decreasing in t; DPM-Solver's time variable."""
        alpha, sigma = self.marginal_coeffs(as_time(t))
        return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

    def drift_coeff(self, t) -> Array:
        """f(t) = d log alpha / dt."""
        t = as_time(t)
        alpha, _ = self.marginal_coeffs(t)
        d_alpha, _ = self.coeff_derivatives(t)
        return d_alpha / alpha

    def diffusion(self, t) -> Array:
        """g(t) = sqrt(d sigma^2 / dt - 2 f sigma^2)."""
        t = as_time(t)
        alpha, sigma = self.marginal_coeffs(t)
        d_alpha, d_sigma = self.coeff_derivatives(t)
        return jnp.sqrt(2.0 * sigma * (d_sigma - d_alpha / alpha * sigma))

    def noise_to_signal(self, t) -> Array:
        """sigma~(t) = sigma / alpha = exp(-lambda / 2), EDM's noise level."""
        alpha, sigma = self.marginal_coeffs(as_time(t))
        return sigma / alpha

    def t_from_noise_to_signal(self, sigma_tilde) -> Array:
        sigma_tilde = as_time(sigma_tilde)
        return self.t_from_log_snr(-2.0 * jnp.log(sigma_tilde))

    # --- the SDE and its reverse --------------------------------------------------------------
    def drift(self, x: Array, t) -> Array:
        return broadcast_to_data(self.drift_coeff(t), x) * x

    def marginal_mean(self, x0: Array, t) -> Array:
        alpha, _ = self.marginal_coeffs(as_time(t))
        return broadcast_to_data(alpha, x0) * x0

    def marginal_std(self, t) -> Array:
        return self.marginal_coeffs(as_time(t))[1]

    def perturb(self, x0: Array, t, noise: Array) -> Array:
        """A draw of x_t given x_0 and standard normal `noise`."""
        alpha, sigma = self.marginal_coeffs(as_time(t))
        return broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(sigma, x0) * noise

    def reverse_drift(self, x: Array, t, score: Array) -> Array:
        """Drift of the reverse-time SDE, f x - g^2 score (integrated from T down to 0)."""
        g2 = broadcast_to_data(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - g2 * score

    def probability_flow_drift(self, x: Array, t, score: Array) -> Array:
        """Drift of the probability-flow ODE in its SDE form, f x - 1/2 g^2 score."""
        g2 = broadcast_to_data(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - 0.5 * g2 * score

    def probability_flow_velocity(self, x0_hat: Array, eps_hat: Array, t) -> Array:
        """The same drift from predictions: alpha'(t) x0_hat + sigma'(t) eps_hat.

        Substituting x = alpha x0_hat + sigma eps_hat and score = -eps_hat / sigma into
        f x - g^2 / 2 score gives this; it has no 1 / alpha, so it is finite at alpha = 0.
        """
        d_alpha, d_sigma = self.coeff_derivatives(t)
        return (broadcast_to_data(d_alpha, x0_hat) * x0_hat
                + broadcast_to_data(d_sigma, eps_hat) * eps_hat)

    # --- prior --------------------------------------------------------------------------------
    def prior_sample(self, rng: Array, shape: tuple[int, ...], dtype=None) -> Array:
        return self.prior_std() * jax.random.normal(rng, shape, dtype or float_dtype())

    def prior_logp(self, z: Array) -> Array:
        """Per-example log-density of the prior N(0, prior_std^2 I)."""
        dim = math.prod(z.shape[1:])
        var = self.prior_std() ** 2
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * dim * jnp.log(2.0 * jnp.pi * var) - 0.5 * sq / var


# Kept for code written against diffjax's first API, where every process was an SDE.
LinearSDE = LinearProcess


def variance_preserving_coeffs(log_mean_coeff: Array) -> tuple[Array, Array]:
    """(alpha, sigma) of a variance-preserving kernel from m = log alpha: sigma^2 = 1 - alpha^2,
    with expm1 so that sigma stays accurate where alpha is within float eps of 1."""
    return jnp.exp(log_mean_coeff), jnp.sqrt(-jnp.expm1(2.0 * log_mean_coeff))


def variance_preserving_log_snr(log_mean_coeff: Array) -> Array:
    """log(alpha^2 / sigma^2) of a variance-preserving kernel from m = log alpha."""
    return 2.0 * log_mean_coeff - jnp.log(-jnp.expm1(2.0 * log_mean_coeff))
