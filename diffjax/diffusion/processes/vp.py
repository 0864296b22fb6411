"""Variance preserving SDE (Song et al., 2021): the continuous limit of DDPM with beta(t) linear.

    dx = -beta(t)/2 x dt + sqrt(beta(t)) dw,   beta(t) = beta_min + t (beta_max - beta_min),
    alpha(t) = exp(m(t)),  sigma(t) = sqrt(1 - alpha^2),
    m(t) = -t^2 (beta_max - beta_min)/4 - t beta_min/2.

Numerics (float32 matters: the samplers' grids are built from these). sigma uses -expm1, exact as
t -> 0 where 1 - exp(2m) cancels; the inverse of the log-SNR goes through log_sigmoid (for alpha^2
= sigmoid(lambda)) and the rationalised root of the quadratic m(t) = m, which has no cancellation
at small t (the textbook root (-b + sqrt(b^2 - 4ac)) / 2a loses all digits there).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes.base import (LinearProcess, as_time, variance_preserving_coeffs,
                                              variance_preserving_log_snr)


def t_from_log_mean_coeff(m, beta_min: float, beta_max: float):
    """The t >= 0 with m(t) = m <= 0:
    -2m / (beta_min/2 + sqrt(beta_min^2/4 - (beta_max - beta_min) m)).

    (Rationalised root of (beta_max - beta_min)/4 t^2 + beta_min/2 t + m = 0; also valid for a
    constant beta.)
    """
    return -2.0 * m / (0.5 * beta_min + jnp.sqrt(0.25 * beta_min**2 - (beta_max - beta_min) * m))


class LinearBetaSchedule(LinearProcess):
    """The VP family's drift -beta(t)/2 with beta linear in t, and its log mean coefficient m(t)."""

    beta_min: float
    beta_max: float

    def beta(self, t):
        return self.beta_min + as_time(t) * (self.beta_max - self.beta_min)

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def log_mean_coeff(self, t):
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def prior_std(self):
        return 1.0


@dataclasses.dataclass(frozen=True)
class VPSDE(LinearBetaSchedule):
    """Variance preserving: beta(t) linear in t; the continuous limit of DDPM."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    name: ClassVar[str] = "vp"

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))

    def marginal_coeffs(self, t):
        return variance_preserving_coeffs(self.log_mean_coeff(t))

    def log_snr(self, t):
        return variance_preserving_log_snr(self.log_mean_coeff(t))

    def t_from_log_snr(self, log_snr):
        # alpha^2 = sigmoid(lambda) for a variance-preserving kernel.
        m = 0.5 * jax.nn.log_sigmoid(as_time(log_snr))
        return t_from_log_mean_coeff(m, self.beta_min, self.beta_max)

    def t_from_noise_to_signal(self, sigma_tilde):
        # alpha^2 = 1 / (1 + sigma~^2).
        m = -0.5 * jnp.log1p(as_time(sigma_tilde) ** 2)
        return t_from_log_mean_coeff(m, self.beta_min, self.beta_max)
