"""A Gaussian mixture whose diffused marginals, scores and log-densities are known exactly.

For data x_0 ~ sum_k w_k N(mu_k, Sigma_k) and any of our linear processes (kernel
N(alpha x_0, sigma^2 I)),
    p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I),
so the score and log p_t are closed-form at every t, and so are the posterior means
    E[x0 | x_t] = sum_k r_k (mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)),
    C_k = alpha^2 Sigma_k + sigma^2 I,
    E[eps | x_t] = -sigma score,
(r_k the posterior responsibilities): the exact optimum of every parameterisation's loss, and a
model function that stays finite where alpha = 0 (flow matching at t = 1).
Each Sigma_k = U_k diag(s_k) U_k^T is eigendecomposed once, which makes
    alpha^2 Sigma_k + sigma^2 I = U_k diag(alpha^2 s_k + sigma^2) U_k^T
trivially invertible for every (example, t): a score evaluation costs O(B K D^2), no solves.

This plays the role of a perfectly trained network in the tests and the benchmark: with it, any
deviation of a sampler's output from p_eps is the sampler's own error (plus Monte Carlo noise).
Data of shape [B, ...] is flattened to [B, D].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.diffusion.parameterization import Prediction
from diffjax.diffusion.processes import LinearProcess as LinearSDE


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
    weights: np.ndarray  # [K]
    means: np.ndarray  # [K, D]
    covs: np.ndarray  # [K, D, D], symmetric positive definite

    def __post_init__(self):
        weights = np.asarray(self.weights, np.float64)
        object.__setattr__(self, "weights", weights / weights.sum())
        object.__setattr__(self, "means", np.asarray(self.means, np.float64))
        covs = np.asarray(self.covs, np.float64)
        object.__setattr__(self, "covs", covs)
        eigvals, eigvecs = np.linalg.eigh(covs)
        object.__setattr__(self, "_eigvals", eigvals)  # [K, D]
        object.__setattr__(self, "_eigvecs", eigvecs)  # [K, D, D], columns are eigenvectors

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # --- exact marginals -------------------------------------------------------------------
    def _component_terms(self, sde: LinearSDE, x: jax.Array, t: jax.Array, posterior=False):
        """Per component: log w_k N(x; alpha mu_k, C_k) and C_k^{-1} (x - alpha mu_k)
        (and, with posterior=True, E[x0 | x_t, k])."""
        flat = jnp.reshape(x, (x.shape[0], -1))
        t = jnp.broadcast_to(jnp.asarray(t, flat.dtype), flat.shape[:1])
        alpha, sigma = sde.marginal_coeffs(t)
        dtype = flat.dtype
        means = jnp.asarray(self.means, dtype)
        eigvals = jnp.asarray(self._eigvals, dtype)
        eigvecs = jnp.asarray(self._eigvecs, dtype)
        resid = flat[:, None, :] - alpha[:, None, None] * means[None]  # [B, K, D]
        coords = jnp.einsum("kdj,bkd->bkj", eigvecs, resid)  # in each component's eigenbasis
        var = alpha[:, None, None] ** 2 * eigvals[None] + sigma[:, None, None] ** 2  # [B, K, D]
        log_norm = -0.5 * jnp.sum(coords**2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        log_weighted = jnp.log(jnp.asarray(self.weights, dtype))[None] + log_norm  # [B, K]
        precision_resid = jnp.einsum("kdj,bkj->bkd", eigvecs, coords / var)  # [B, K, D]
        if not posterior:
            return log_weighted, precision_resid
        shrunk = jnp.einsum("kdj,bkj->bkd", eigvecs, eigvals[None] * coords / var)
        x0_k = means[None] + alpha[:, None, None] * shrunk  # [B, K, D]
        return log_weighted, precision_resid, x0_k

    def log_prob(self, sde: LinearSDE, x: jax.Array, t) -> jax.Array:
        """log p_t(x), per example."""
        log_weighted, _ = self._component_terms(sde, x, t)
        return jax.nn.logsumexp(log_weighted, axis=-1)

    def score(self, sde: LinearSDE, x: jax.Array, t) -> jax.Array:
        """grad_x log p_t(x), shaped like x."""
        log_weighted, precision_resid = self._component_terms(sde, x, t)
        resp = jax.nn.softmax(log_weighted, axis=-1)  # posterior responsibilities
        return jnp.reshape(-jnp.einsum("bk,bkd->bd", resp, precision_resid), x.shape)

    def score_fn(self, sde: LinearSDE):
        """The exact score in the samplers' `score_fn(x, t)` form."""
        return lambda x, t: self.score(sde, x, t)

    def predict(self, sde: LinearSDE, x: jax.Array, t) -> Prediction:
        """Exact E[x0 | x_t], E[eps | x_t] and score, in diffjax.diffusion.parameterization's Prediction form."""
        log_weighted, precision_resid, x0_k = self._component_terms(sde, x, t, posterior=True)
        resp = jax.nn.softmax(log_weighted, axis=-1)
        score = jnp.reshape(-jnp.einsum("bk,bkd->bd", resp, precision_resid), x.shape)
        x0 = jnp.reshape(jnp.einsum("bk,bkd->bd", resp, x0_k), x.shape)
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        sigma = sde.marginal_coeffs(t)[1].reshape((-1,) + (1,) * (x.ndim - 1))
        return Prediction(x0=x0, eps=-sigma * score, score=score, output=score)

    def model_fn(self, sde: LinearSDE) -> "ExactModel":
        """The exact model: a score function with `.predict`, like diffjax's ModelFn."""
        return ExactModel(self, sde)

    def responsibilities(self, sde: LinearSDE, x: jax.Array, t) -> jax.Array:
        log_weighted, _ = self._component_terms(sde, x, t)
        return jax.nn.softmax(log_weighted, axis=-1)

    # --- exact moments and draws -------------------------------------------------------------
    def moments(self, sde: LinearSDE, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and covariance [D, D] of p_t, in float64."""
        alpha, sigma = (float(v) for v in sde.marginal_coeffs(jnp.asarray(t, jnp.float32)))
        mean = self.weights @ self.means
        centred = self.means - mean
        within = np.einsum("k,kde->de", self.weights, self.covs)
        between = np.einsum("k,kd,ke->de", self.weights, centred, centred)
        cov = alpha**2 * (within + between) + sigma**2 * np.eye(self.dim)
        return alpha * mean, cov

    def sample(self, rng: jax.Array, n: int, sde: LinearSDE | None = None, t: float = 0.0):
        """n exact draws of x_0, or of x_t when an SDE is given. Returns (x [n, D], labels [n])."""
        comp_key, noise_key, diffuse_key = jax.random.split(rng, 3)
        labels = jax.random.choice(comp_key, len(self.weights), (n,), p=jnp.asarray(self.weights))
        chol = jnp.asarray(np.linalg.cholesky(self.covs), jnp.float32)
        z = jax.random.normal(noise_key, (n, self.dim))
        means = jnp.asarray(self.means, jnp.float32)
        x0 = means[labels] + jnp.einsum("nde,ne->nd", chol[labels], z)
        if sde is None:
            return x0, labels
        noise = jax.random.normal(diffuse_key, x0.shape)
        return sde.perturb(x0, jnp.full((n,), t, jnp.float32), noise), labels


class ExactModel:
    """A perfectly trained network for `sde`: what `diffjax.diffusion.parameterization.ModelFn` gives, exactly."""

    def __init__(self, mixture: GaussianMixture, sde: LinearSDE):
        self.mixture, self.sde = mixture, sde

    @property
    def process(self) -> LinearSDE:
        return self.sde

    def predict(self, x, t) -> Prediction:
        return self.mixture.predict(self.sde, x, t)

    def __call__(self, x, t):
        return self.mixture.score(self.sde, x, t)


def random_mixture(
    seed: int, dim: int, num_components: int, *, spread: float = 2.0, scale: float = 0.5
) -> GaussianMixture:
    """A mixture with random means (std `spread`) and random full covariances of size ~scale^2."""
    rs = np.random.RandomState(seed)
    means = spread * rs.randn(num_components, dim) / np.sqrt(max(dim / 2, 1))
    covs = []
    for _ in range(num_components):
        q, _ = np.linalg.qr(rs.randn(dim, dim))
        eig = scale**2 * rs.uniform(0.3, 1.0, dim)
        covs.append((q * eig) @ q.T)
    weights = rs.uniform(0.5, 1.5, num_components)
    return GaussianMixture(weights, means, np.stack(covs))


def two_d_mixture() -> GaussianMixture:
    """The 2-D test mixture: two well-separated, correlated, unequally weighted components."""
    return GaussianMixture(
        weights=np.array([0.3, 0.7]),
        means=np.array([[-1.5, -0.5], [1.0, 1.0]]),
        covs=np.array([[[0.30, 0.12], [0.12, 0.20]], [[0.25, -0.10], [-0.10, 0.35]]]),
    )


# --- flow maps of the probability-flow ODE (consistency functions, average velocities) -------

def gaussian_flow_map(mixture: GaussianMixture, sde: LinearSDE, x: jax.Array, t, s) -> jax.Array:
    """The probability-flow ODE's map from time t to time s, exactly, for Gaussian data (one
    component): in the eigenbasis of Sigma the coordinate (x - alpha mu) / sqrt(alpha^2 s_i +
    sigma^2) is constant along every ODE trajectory, so
        x_s = alpha_s mu + U diag(sqrt((alpha_s^2 s_i + sigma_s^2) / (alpha_t^2 s_i +
              sigma_t^2))) U^T (x_t - alpha_t mu).
    With s = 0 it is the exact consistency function; (x_t - x_s) / (t - s) is the exact average
    velocity of MeanFlow. Differentiable in x, t and s (jax.jvp works through it)."""
    if len(mixture.weights) != 1:
        raise ValueError("the flow map is closed-form for one Gaussian component only")
    flat = jnp.reshape(x, (x.shape[0], -1))
    dtype = flat.dtype
    t = jnp.broadcast_to(jnp.asarray(t, dtype), flat.shape[:1])
    s = jnp.broadcast_to(jnp.asarray(s, dtype), flat.shape[:1])
    alpha_t, sigma_t = sde.marginal_coeffs(t)
    alpha_s, sigma_s = sde.marginal_coeffs(s)
    mean = jnp.asarray(mixture.means[0], dtype)
    eigvals = jnp.asarray(mixture._eigvals[0], dtype)
    eigvecs = jnp.asarray(mixture._eigvecs[0], dtype)
    coords = (flat - alpha_t[:, None] * mean) @ eigvecs
    ratio = jnp.sqrt((alpha_s[:, None] ** 2 * eigvals + sigma_s[:, None] ** 2)
                     / (alpha_t[:, None] ** 2 * eigvals + sigma_t[:, None] ** 2))
    out = alpha_s[:, None] * mean + (ratio * coords) @ eigvecs.T
    return jnp.reshape(out, x.shape)


def ode_flow_map(mixture: GaussianMixture, sde: LinearSDE, x: jax.Array, t: float, s: float,
                 steps: int = 200) -> jax.Array:
    """The same map for any mixture, by RK4 on the exact probability-flow ODE (scalar t, s)."""
    model = mixture.model_fn(sde)

    def velocity(x, time):
        time = jnp.full(x.shape[:1], time, x.dtype)
        pred = model.predict(x, time)
        return sde.probability_flow_velocity(pred.x0, pred.eps, time)

    h = (s - t) / steps

    def body(i, x):
        time = t + i * h
        k1 = velocity(x, time)
        k2 = velocity(x + 0.5 * h * k1, time + 0.5 * h)
        k3 = velocity(x + 0.5 * h * k2, time + 0.5 * h)
        k4 = velocity(x + h * k3, time + h)
        return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.lax.fori_loop(0, steps, body, x)
