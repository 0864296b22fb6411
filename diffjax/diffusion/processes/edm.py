"""EDM's process (Karras et al., 2022): x = x0 + sigma eps with time equal to noise level.

    alpha = 1, sigma(t) = t, t in [sigma_min, sigma_max] = [0.002, 80], prior N(0, sigma_max^2 I).

The SDE is dx = sqrt(2t) dw (f = 0, g^2 = d sigma^2 / dt = 2t) and its probability-flow ODE is
EDM's dx/dsigma = (x - D(x; sigma)) / sigma. What makes EDM's models EDM's lives elsewhere: the
preconditioning c_skip/c_out/c_in/c_noise in `diffjax.diffusion.parameterization` ("edm" parameterisation), the
log-normal training distribution of sigma and the weight (sigma^2 + sigma_data^2) /
(sigma sigma_data)^2 in `diffjax.diffusion.losses`, and Heun with churn in `diffjax.sampling.edm`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from diffjax.diffusion.processes.base import LinearProcess, as_time


@dataclasses.dataclass(frozen=True)
class EDMProcess(LinearProcess):
    """sigma(t) = t, alpha = 1."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name: ClassVar[str] = "edm"

    @property
    def T(self) -> float:  # noqa: N802 - the common attribute name of every process
        return self.sigma_max

    @property
    def likelihood_eps(self) -> float:
        return self.sigma_min

    @property
    def default_eps(self) -> float:
        return self.sigma_min

    def marginal_coeffs(self, t):
        t = as_time(t)
        return jnp.ones_like(t), t

    def coeff_derivatives(self, t):
        t = as_time(t)
        return jnp.zeros_like(t), jnp.ones_like(t)

    def drift_coeff(self, t):
        return jnp.zeros_like(as_time(t))

    def diffusion(self, t):
        return jnp.sqrt(2.0 * as_time(t))

    def log_snr(self, t):
        return -2.0 * jnp.log(as_time(t))

    def t_from_log_snr(self, log_snr):
        return jnp.exp(-0.5 * as_time(log_snr))

    def noise_to_signal(self, t):
        return as_time(t)

    def t_from_noise_to_signal(self, sigma_tilde):
        return as_time(sigma_tilde)

    def prior_std(self):
        return self.sigma_max
