"""Variance exploding SDE (Song et al., 2021): no drift, sigma(t) geometric in [sigma_min,
sigma_max].

    dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw,
    sigma(t) = sigma_min (sigma_max / sigma_min)^t.

The kernel std is sigma(t) itself, not sqrt(sigma(t)^2 - sigma_min^2): as in score_sde, the
process at t = 0 is the data already smoothed by N(0, sigma_min^2), which keeps log sigma finite
for the network's noise conditioning near t = 0.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax.numpy as jnp

from diffjax.diffusion.processes.base import LinearProcess, as_time


@dataclasses.dataclass(frozen=True)
class VESDE(LinearProcess):
    """Variance exploding: no drift, sigma(t) geometric from sigma_min to sigma_max."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    name: ClassVar[str] = "ve"
    default_eps: ClassVar[float] = 1e-5

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t):
        return self.sigma_min * jnp.exp(as_time(t) * self._log_ratio)

    def drift_coeff(self, t):
        return jnp.zeros_like(as_time(t))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def coeff_derivatives(self, t):
        sigma = self.sigma(t)
        return jnp.zeros_like(sigma), sigma * self._log_ratio

    def marginal_coeffs(self, t):
        sigma = self.sigma(t)
        return jnp.ones_like(sigma), sigma

    def log_snr(self, t):
        return -2.0 * (math.log(self.sigma_min) + as_time(t) * self._log_ratio)

    def prior_std(self):
        return self.sigma_max

    def t_from_log_snr(self, log_snr):
        return (-0.5 * as_time(log_snr) - math.log(self.sigma_min)) / self._log_ratio

    def noise_to_signal(self, t):
        return self.sigma(t)

    def t_from_noise_to_signal(self, sigma_tilde):
        # The ratio first: log(sigma / sigma_min) keeps more digits near t = 0 than a difference of
        # logs.
        return jnp.log(as_time(sigma_tilde) / self.sigma_min) / self._log_ratio
