"""Continuous-time diffusion SDEs (Song et al., 2021): VP, sub-VP and VE.

All three are linear SDEs, dx = f(t) x dt + g(t) dw, whose perturbation kernel is
p(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I). Everything a loss or a sampler needs follows from
the four scalars f, g, alpha and sigma, so each SDE states only those and `LinearSDE` derives the
rest (drifts, log-SNR, prior).

Conventions:
- `t` is a per-example array of shape [B] (a scalar broadcasts); `x` is [B, ...].
- The VE kernel std is sigma(t) itself, not sqrt(sigma(t)^2 - sigma_min^2): as in score_sde, the
  process at t = 0 is the data already smoothed by N(0, sigma_min^2), which keeps log sigma finite
  for the network's noise conditioning near t = 0.
- Objects are frozen dataclasses of Python floats: hashable, so they can be static arguments of
  `jax.jit`, and every method is a pure, jittable array function.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp

Array = jax.Array


def broadcast_to_data(per_example: Array, x: Array) -> Array:
    """Reshapes a [B] (or scalar) array so that it broadcasts against x of shape [B, ...]."""
    per_example = jnp.asarray(per_example, dtype=x.dtype)
    if per_example.ndim == 0:
        return per_example
    return per_example.reshape(per_example.shape + (1,) * (x.ndim - per_example.ndim))


class LinearSDE:
    """Shared algebra of dx = f(t) x dt + g(t) dw with kernel N(alpha x0, sigma^2 I)."""

    name: ClassVar[str]
    T: float

    # --- the four scalars each SDE defines -------------------------------------------------
    def drift_coeff(self, t: Array) -> Array:
        raise NotImplementedError

    def diffusion(self, t: Array) -> Array:
        raise NotImplementedError

    def marginal_coeffs(self, t: Array) -> tuple[Array, Array]:
        """(alpha(t), sigma(t)) of the kernel p(x_t | x_0) = N(alpha x_0, sigma^2 I)."""
        raise NotImplementedError

    def prior_std(self) -> float:
        raise NotImplementedError

    def t_from_log_snr(self, log_snr: Array) -> Array:
        raise NotImplementedError

    # --- derived ---------------------------------------------------------------------------
    def drift(self, x: Array, t: Array) -> Array:
        return broadcast_to_data(self.drift_coeff(t), x) * x

    def marginal_mean(self, x0: Array, t: Array) -> Array:
        alpha, _ = self.marginal_coeffs(t)
        return broadcast_to_data(alpha, x0) * x0

    def marginal_std(self, t: Array) -> Array:
        return self.marginal_coeffs(t)[1]

    def perturb(self, x0: Array, t: Array, noise: Array) -> Array:
        """A draw of x_t given x_0 and standard normal `noise`."""
        alpha, sigma = self.marginal_coeffs(t)
        return broadcast_to_data(alpha, x0) * x0 + broadcast_to_data(sigma, x0) * noise

    def log_snr(self, t: Array) -> Array:
        """lambda(t) = log(alpha^2 / sigma^2), decreasing in t; DPM-Solver's time variable."""
        alpha, sigma = self.marginal_coeffs(t)
        return 2.0 * (jnp.log(alpha) - jnp.log(sigma))

    def reverse_drift(self, x: Array, t: Array, score: Array) -> Array:
        """Drift of the reverse-time SDE, f x - g^2 score (integrated from T down to 0)."""
        g2 = broadcast_to_data(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - g2 * score

    def probability_flow_drift(self, x: Array, t: Array, score: Array) -> Array:
        """Drift of the probability-flow ODE, f x - 1/2 g^2 score."""
        g2 = broadcast_to_data(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - 0.5 * g2 * score

    def prior_sample(self, rng: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return self.prior_std() * jax.random.normal(rng, shape, dtype)

    def prior_logp(self, z: Array) -> Array:
        """Per-example log-density of the prior N(0, prior_std^2 I)."""
        dim = math.prod(z.shape[1:])
        var = self.prior_std() ** 2
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=-1)
        return -0.5 * dim * jnp.log(2.0 * jnp.pi * var) - 0.5 * sq / var


def _vp_log_mean_coeff(t: Array, beta_min: float, beta_max: float) -> Array:
    return -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min


def _vp_t_from_log_mean_coeff(lmc: Array, beta_min: float, beta_max: float) -> Array:
    # Positive root of (beta_max - beta_min)/4 t^2 + beta_min/2 t + lmc = 0.
    delta = beta_max - beta_min
    return (-0.5 * beta_min + jnp.sqrt(0.25 * beta_min**2 - delta * lmc)) / (0.5 * delta)


class _LinearBetaSchedule(LinearSDE):
    """The VP family's drift -beta(t)/2 with beta linear in t, and its mean coefficient."""

    beta_min: float
    beta_max: float

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def log_mean_coeff(self, t: Array) -> Array:
        return _vp_log_mean_coeff(jnp.asarray(t), self.beta_min, self.beta_max)

    def prior_std(self):
        return 1.0


@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearBetaSchedule):
    """Variance preserving: beta(t) linear in t; the continuous limit of DDPM."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    name: ClassVar[str] = "vp"

    def diffusion(self, t):
        return jnp.sqrt(self.beta(t))

    def marginal_coeffs(self, t):
        lmc = self.log_mean_coeff(t)
        # -expm1 keeps sigma accurate at small t, where 1 - exp(2 lmc) cancels.
        return jnp.exp(lmc), jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def log_snr(self, t):
        lmc = self.log_mean_coeff(t)
        return 2.0 * lmc - jnp.log(-jnp.expm1(2.0 * lmc))

    def t_from_log_snr(self, log_snr):
        # alpha^2 = sigmoid(lambda) for a variance-preserving kernel.
        lmc = 0.5 * jax.nn.log_sigmoid(log_snr)
        return _vp_t_from_log_mean_coeff(lmc, self.beta_min, self.beta_max)


@dataclasses.dataclass(frozen=True)
class SubVPSDE(_LinearBetaSchedule):
    """sub-VP: the VP drift with a smaller diffusion, so sigma(t) = 1 - alpha(t)^2."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0
    name: ClassVar[str] = "subvp"

    def diffusion(self, t):
        t = jnp.asarray(t)
        discount = -jnp.expm1(-2.0 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
        return jnp.sqrt(self.beta(t) * discount)

    def marginal_coeffs(self, t):
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), -jnp.expm1(2.0 * lmc)

    def t_from_log_snr(self, log_snr):
        # sigma / alpha = (1 - u^2) / u = exp(-lambda / 2) with u = alpha; take the root in (0, 1).
        ratio = jnp.exp(-0.5 * log_snr)
        alpha = 2.0 / (ratio + jnp.sqrt(ratio**2 + 4.0))
        return _vp_t_from_log_mean_coeff(jnp.log(alpha), self.beta_min, self.beta_max)


@dataclasses.dataclass(frozen=True)
class VESDE(LinearSDE):
    """Variance exploding: no drift, sigma(t) geometric from sigma_min to sigma_max."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0
    name: ClassVar[str] = "ve"

    def sigma(self, t: Array) -> Array:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(t)

    def drift_coeff(self, t):
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.float32))

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))

    def marginal_coeffs(self, t):
        sigma = self.sigma(t)
        return jnp.ones_like(sigma), sigma

    def log_snr(self, t):
        return -2.0 * jnp.log(self.sigma(t))

    def prior_std(self):
        return self.sigma_max

    def t_from_log_snr(self, log_snr):
        sigma = jnp.exp(-0.5 * log_snr)
        return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)


SDES: dict[str, type[LinearSDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def get_sde(sde_config) -> LinearSDE:
    """Builds the SDE named by `sde_config.name` from the fields of that config section."""
    try:
        cls = SDES[sde_config.name]
    except KeyError:
        raise ValueError(
            f"Unknown sde.name={sde_config.name!r}; choose one of {sorted(SDES)}."
        ) from None
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: float(v) for k, v in sde_config.items() if k in fields})
