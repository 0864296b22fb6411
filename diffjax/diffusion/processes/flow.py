"""Flow matching / rectified flow with the linear interpolant (Lipman et al., 2023; Liu et al.,
2023; SiT, Ma et al., 2024; SD3, Esser et al., 2024):

    x_t = (1 - t) x0 + t eps,   alpha = 1 - t, sigma = t, t in [0, 1], prior N(0, I) at t = 1.

The conditional velocity dx_t/dt = eps - x0 is what a velocity-parameterised network learns
(`diffjax.diffusion.parameterization`, "velocity"); its conditional expectation is the probability-flow ODE's drift,
so Euler on dx/dt = v(x, t) from t = 1 to 0 is the usual flow sampler.

Conventions against SiT's code. SiT runs time the other way (s = 1 - t: noise at s = 0, data at
s = 1) and its network predicts ds-velocity x0 - eps = -v. diffjax conditions the network on
what SiT feeds it, 1 - t = s (`diffjax.diffusion.parameterization.noise_conditioning`), so a SiT checkpoint is a
diffjax velocity network after negating its final linear layer (weights and bias), which is exact.

The SDE form is singular at t = 1 (f = -1/(1 - t), g^2 = 2t / (1 - t)) and the log-SNR is -inf
there, so the SDE samplers (euler_maruyama, reverse_diffusion, pc) and everything on a log-SNR or
sigma~ grid (dpm_solver, edm_heun, time_grid="log_snr"/"edm") start at t_max = 0.999
(sigma~ = 999), where the prior differs from p_t by alpha = 1e-3; the prediction-based samplers
on the uniform grid (ode_euler, ode_heun_t, ddim, ddpm with time_grid="uniform"), ode_adaptive
and sit_sde start at t = 1 exactly.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffjax.diffusion.processes.base import LinearProcess, as_time


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(LinearProcess):
    """alpha = 1 - t, sigma = t."""

    T: float = 1.0
    name: ClassVar[str] = "flow"
    allows_zero_eps: ClassVar[bool] = True
    t_max: ClassVar[float] = 0.999

    def marginal_coeffs(self, t):
        t = as_time(t)
        return 1.0 - t, t

    def coeff_derivatives(self, t):
        t = as_time(t)
        return -jnp.ones_like(t), jnp.ones_like(t)

    def drift_coeff(self, t):
        return -1.0 / (1.0 - as_time(t))

    def diffusion(self, t):
        t = as_time(t)
        return jnp.sqrt(2.0 * t / (1.0 - t))

    def log_snr(self, t):
        t = as_time(t)
        return 2.0 * (jnp.log1p(-t) - jnp.log(t))

    def t_from_log_snr(self, log_snr):
        return jax.nn.sigmoid(-0.5 * as_time(log_snr))

    def noise_to_signal(self, t):
        t = as_time(t)
        return t / (1.0 - t)

    def t_from_noise_to_signal(self, sigma_tilde):
        sigma_tilde = as_time(sigma_tilde)
        return sigma_tilde / (1.0 + sigma_tilde)

    def prior_std(self):
        return 1.0
