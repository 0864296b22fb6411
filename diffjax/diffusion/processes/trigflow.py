"""TrigFlow (Lu & Song, 2024, "Simplifying, Stabilizing & Scaling Continuous-Time Consistency
Models", sCM): the process of continuous-time consistency models.

    x_t = cos(t) x0 + sin(t) z,   z ~ N(0, sigma_d^2 I),   t in [0, pi/2],
i.e. alpha = cos t, sigma = sigma_d sin t in diffjax's eps-normalised form (eps = z / sigma_d),
prior N(0, sigma_d^2 I) at t = pi/2, where alpha = 0 (like flow matching at t = 1).

Its probability-flow ODE is dx_t/dt = -sin(t) x0_hat + cos(t) z_hat = sigma_d F(x_t / sigma_d, t)
with sCM's network output F (`diffjax.diffusion.parameterization`, "trigflow"), and the
consistency function is f(x_t, t) = cos(t) x_t - sin(t) sigma_d F, which is the x0 prediction of
that output. The network is conditioned on t itself (sCM's c_noise(t) = t).

TrigFlow's noise-to-signal ratio is sigma~ = sigma_d tan(t); `t_max` is where sigma~ = 80 (EDM's
sigma_max), so the samplers that need a finite log-SNR start at the same noise level as EDM.
`sigma_d` defaults to sCM's 0.5 (`model.sigma_data`, which the input scaling and the F output
use, must agree: `diffjax.config.checks`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax.numpy as jnp

from diffjax.diffusion.processes.base import LinearProcess, as_time

SIGMA_TILDE_MAX = 80.0  # EDM's sigma_max: where the log-SNR grids start


@dataclasses.dataclass(frozen=True)
class TrigFlow(LinearProcess):
    """alpha = cos t, sigma = sigma_d sin t."""

    sigma_data: float = 0.5
    name: ClassVar[str] = "trigflow"
    allows_zero_eps: ClassVar[bool] = True

    @property
    def T(self) -> float:  # noqa: N802 - the common attribute name of every process
        return 0.5 * math.pi

    @property
    def t_max(self) -> float:
        return math.atan(SIGMA_TILDE_MAX / self.sigma_data)

    def marginal_coeffs(self, t):
        t = as_time(t)
        return jnp.cos(t), self.sigma_data * jnp.sin(t)

    def coeff_derivatives(self, t):
        t = as_time(t)
        return -jnp.sin(t), self.sigma_data * jnp.cos(t)

    def drift_coeff(self, t):
        return -jnp.tan(as_time(t))

    def diffusion(self, t):
        # g^2 = d sigma^2/dt - 2 f sigma^2 = 2 sigma_d^2 (sin cos + sin^2 tan) = 2 sigma_d^2 tan t.
        return self.sigma_data * jnp.sqrt(2.0 * jnp.tan(as_time(t)))

    def log_snr(self, t):
        t = as_time(t)
        return -2.0 * jnp.log(self.sigma_data * jnp.tan(t))

    def t_from_log_snr(self, log_snr):
        return jnp.arctan(jnp.exp(-0.5 * as_time(log_snr)) / self.sigma_data)

    def noise_to_signal(self, t):
        return self.sigma_data * jnp.tan(as_time(t))

    def t_from_noise_to_signal(self, sigma_tilde):
        return jnp.arctan(as_time(sigma_tilde) / self.sigma_data)

    def prior_std(self):
        return self.sigma_data
