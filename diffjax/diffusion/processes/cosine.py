"""Cosine VP (Nichol & Dhariwal, 2021) as a continuous-time process, as DPM-Solver's
NoiseScheduleVP('cosine') defines it:

    log alpha(t) = log cos((t + s) / (1 + s) pi/2) - log cos(s / (1 + s) pi/2),  s = 0.008,
    sigma(t) = sqrt(1 - alpha^2),  t in [0, T], T = 0.9946.

T < 1 because alpha(1) = 0 exactly: log alpha and the log-SNR diverge there. DPM-Solver stops at
T = 0.9946 (log-SNR about -10.4, sigma~ ~ 180), "which works well" (their words); so do we.
The network is conditioned on 999 t, like the VP family.

Inverse of the log-SNR: alpha^2 = sigmoid(lambda) gives log alpha, then
t = (1 + s) 2/pi arccos(alpha cos(...)) - s with arccos(y) = 2 arcsin(sqrt((1 - y)/2)) and
1 - y = -expm1(log alpha + log cos(s/(1+s) pi/2)): no cancellation near t = 0, where arccos of a
number close to 1 would lose half the digits in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes.base import LinearProcess, as_time


@dataclasses.dataclass(frozen=True)
class CosineVP(LinearProcess):
    """Continuous cosine schedule, variance preserving."""

    s: float = 0.008
    T: float = 0.9946
    name: ClassVar[str] = "cosine"

    @property
    def _log_alpha_0(self) -> float:
        return math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def _angle(self, t):
        return (as_time(t) + self.s) / (1.0 + self.s) * (math.pi / 2.0)

    def log_mean_coeff(self, t):
        return jnp.log(jnp.cos(self._angle(t))) - self._log_alpha_0

    def marginal_coeffs(self, t):
        m = self.log_mean_coeff(t)
        return jnp.exp(m), jnp.sqrt(-jnp.expm1(2.0 * m))

    def drift_coeff(self, t):
        return -jnp.tan(self._angle(t)) * (math.pi / 2.0 / (1.0 + self.s))

    def diffusion(self, t):
        return jnp.sqrt(-2.0 * self.drift_coeff(t))  # VP: g^2 = -2 f

    def log_snr(self, t):
        m = self.log_mean_coeff(t)
        return 2.0 * m - jnp.log(-jnp.expm1(2.0 * m))

    def t_from_log_snr(self, log_snr):
        m = 0.5 * jax.nn.log_sigmoid(as_time(log_snr))
        one_minus_cos = -jnp.expm1(m + self._log_alpha_0)
        angle = 2.0 * jnp.arcsin(jnp.sqrt(0.5 * one_minus_cos))
        return angle * (2.0 * (1.0 + self.s) / math.pi) - self.s

    def prior_std(self):
        return 1.0
