"""sub-VP SDE (Song et al., 2021): VP's drift, a smaller diffusion, so sigma(t) = 1 - alpha(t)^2.

    dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw,
    alpha(t) = exp(m(t)) as for VP,  sigma(t) = 1 - alpha^2 (not its square root).

The inverse of the log-SNR in float32. sigma / alpha = (1 - e^{2m}) / e^m = -2 sinh(m), so
    m = -asinh(exp(-lambda / 2) / 2),
and t follows from the rationalised quadratic root (`vp.t_from_log_mean_coeff`). The earlier
route, log of alpha = 2 / (r + sqrt(r^2 + 4)) with r = exp(-lambda/2), took the log of a number
within 1e-6 of 1 near t = 1e-5 and then cancelled in the textbook root, which made float32 grids
non-monotone and DPM-Solver return inf/NaN.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from diffjax.diffusion.processes.base import as_time
from diffjax.diffusion.processes.vp import LinearBetaSchedule, t_from_log_mean_coeff


@dataclasses.dataclass(frozen=True)
class SubVPSDE(LinearBetaSchedule):
    """sub-VP: the VP drift with a smaller diffusion, so sigma(t) = 1 - alpha(t)^2."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    name: ClassVar[str] = "subvp"

    def diffusion(self, t):
        t = as_time(t)
        discount = -jnp.expm1(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return jnp.sqrt(self.beta(t) * discount)

    def marginal_coeffs(self, t):
        m = self.log_mean_coeff(t)
        return jnp.exp(m), -jnp.expm1(2.0 * m)

    def log_snr(self, t):
        m = self.log_mean_coeff(t)
        return 2.0 * m - 2.0 * jnp.log(-jnp.expm1(2.0 * m))

    def t_from_log_snr(self, log_snr):
        return self.t_from_noise_to_signal(jnp.exp(-0.5 * as_time(log_snr)))

    def t_from_noise_to_signal(self, sigma_tilde):
        m = -jnp.arcsinh(0.5 * as_time(sigma_tilde))
        return t_from_log_mean_coeff(m, self.beta_min, self.beta_max)
