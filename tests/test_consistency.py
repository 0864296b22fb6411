"""sCM's consistency objective and the consistency sampler against exact answers: for Gaussian
data the probability-flow ODE's flow map, hence the consistency function, is closed-form
(`gaussian_mixture.gaussian_flow_map`); for a mixture it is solved to high accuracy by RK4 on the
exact score. The networks' JVPs are checked against central differences in test_meanflow.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_mixture import (GaussianMixture, gaussian_flow_map, ode_flow_map, random_mixture,
                              two_d_mixture)

from diffjax.diffusion import consistency
from diffjax.diffusion.parameterization import Prediction
from diffjax.diffusion.processes import (VPSDE, EDMProcess, RectifiedFlow, TrigFlow,
                                         broadcast_to_data)
from diffjax.sampling import get_sampler

SIGMA_D = 0.5


class ConsistencyModel:
    """A model function whose x0 prediction is the map f(x, t) (a consistency function)."""

    def __init__(self, process, f):
        self.process, self.f = process, f

    def predict(self, x, t):
        x0 = self.f(x, t)
        alpha, sigma = (broadcast_to_data(v, x) for v in self.process.marginal_coeffs(t))
        eps = (x - alpha * x0) / sigma
        return Prediction(x0=x0, eps=eps, score=-eps / sigma, output=x0)


def gaussian_data(seed=0, dim=3, n=8000):
    mixture = random_mixture(seed, dim, 1, spread=1.0, scale=0.5)
    return mixture, mixture.sample(jax.random.key(seed), n)[0]


def perturbed_model(process, mixture, c):
    """The exact consistency function plus c sin(t) tanh(x) (still identity at t = 0)."""
    def f(x, t):
        exact = gaussian_flow_map(mixture, process, x, t, 0.0)
        return exact + c * broadcast_to_data(jnp.sin(t), x) * jnp.tanh(x)
    return ConsistencyModel(process, f)


@pytest.mark.parametrize("process", [TrigFlow(), VPSDE(), EDMProcess(), RectifiedFlow()],
                         ids=["trigflow", "vp", "edm", "flow"])
def test_exact_consistency_function_zeroes_the_distillation_tangent(process):
    """sCD with the exact teacher: g = cos(t) df/dt vanishes for the true consistency function
    (in any process's coordinates), so the loss's gradient does; a perturbed f is pulled back."""
    mixture, x0 = gaussian_data()
    teacher = mixture.model_fn(process)

    def loss(c):
        terms = consistency.consistency_loss(
            jax.random.key(1), perturbed_model(process, mixture, c), x0, sigma_data=SIGMA_D,
            teacher=teacher, step=10**6, prior_weighting=False, eps=1e-3)
        return jnp.mean(terms.loss), terms.tangent_norm

    grad = jax.jit(jax.grad(loss, has_aux=True))
    grad0, tangent_norm = grad(0.0)
    assert float(jnp.max(tangent_norm)) < 2e-3
    grad_plus, grad_minus = grad(0.3)[0], grad(-0.3)[0]
    assert abs(float(grad0)) < 0.01 * abs(float(grad_plus))
    assert float(grad_plus) > 0 > float(grad_minus), (grad_plus, grad_minus)


def test_consistency_training_gradient_vanishes_in_expectation():
    """sCT: g is zero-mean given x_t at the true f (symmetric Gaussian posterior), so the
    Monte-Carlo gradient is small next to a perturbed model's; tangent normalisation on."""
    process = TrigFlow()
    mixture, x0 = gaussian_data(seed=2)

    @jax.jit
    @jax.grad
    def grad(c):
        terms = consistency.consistency_loss(
            jax.random.key(3), perturbed_model(process, mixture, c), x0, sigma_data=SIGMA_D,
            step=10**6, prior_weighting=False, eps=1e-3)
        return jnp.mean(terms.loss)

    def grad_at(c):
        return float(grad(c))

    assert abs(grad_at(0.0)) < 0.1 * abs(grad_at(0.3))
    assert grad_at(0.3) > 0 > grad_at(-0.3)


def test_loss_matches_the_papers_formula():
    """The loss equals sCM's, term by term, written out from Algorithm 1 (prior weighting,
    tangent warm-up r, normalisation c, adaptive weight u) with a finite-difference dF/dt."""
    process = TrigFlow()
    mixture = two_d_mixture()
    x0 = mixture.sample(jax.random.key(4), 64)[0]
    model = perturbed_model(process, GaussianMixture(
        [1.0], mixture.means[:1], mixture.covs[:1]), 0.2)
    log_variance = lambda t_hat: 0.3 * jnp.cos(3 * t_hat)  # noqa: E731
    terms = jax.jit(lambda x0: consistency.consistency_loss(
        jax.random.key(5), model, x0, sigma_data=SIGMA_D, log_variance=log_variance, step=30,
        tangent_warmup_steps=100, tangent_norm_c=0.1, log_normal=(-1.0, 1.4), eps=1e-3))(x0)
    # Re-draw exactly as the loss does.
    angle_rng, noise_rng = jax.random.split(jax.random.key(5))
    t = consistency.sample_angles(angle_rng, 64, process, SIGMA_D, log_normal=(-1.0, 1.4),
                                  eps=1e-3)
    np.testing.assert_allclose(t, terms.t_hat, rtol=1e-6)
    z = SIGMA_D * jax.random.normal(noise_rng, x0.shape)
    cos, sin = jnp.cos(t)[:, None], jnp.sin(t)[:, None]
    x_t = cos * x0 + sin * z
    dxdt = cos * z - sin * x0

    @jax.jit
    def F(x, tt):
        return consistency.trigflow_velocity(model, x, tt, SIGMA_D) / SIGMA_D

    h = 1e-3
    dF = (F(x_t + h * dxdt, t + h) - F(x_t - h * dxdt, t - h)) / (2 * h)
    g = -cos**2 * (SIGMA_D * F(x_t, t) - dxdt) - 0.3 * cos * sin * (x_t + SIGMA_D * dF)
    norm = jnp.linalg.norm(g, axis=-1)
    g = g / (norm[:, None] + 0.1)
    u = log_variance(t)
    expected = jnp.exp(-u) / (SIGMA_D * jnp.tan(t)) * jnp.mean(g**2, -1) + u
    np.testing.assert_allclose(terms.tangent_norm, norm, rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(terms.loss, expected, rtol=5e-3, atol=1e-4)


@pytest.mark.parametrize("process, steps", [(TrigFlow(), 1), (RectifiedFlow(), 2)],
                         ids=["trigflow-1step", "flow-2steps"])
def test_samples_from_the_exact_consistency_function_reproduce_the_mixture(process, steps):
    mixture = two_d_mixture()

    def f(x, t):
        return ode_flow_map(mixture, process, x, t[0], 0.0, steps=100)

    model = ConsistencyModel(process, f)
    sampler = jax.jit(lambda rng: get_sampler("consistency")(rng, model, process, (4000, 2),
                                                            num_steps=steps))
    result = sampler(jax.random.key(6))
    assert int(result.nfe) == steps
    samples = np.asarray(result.samples)
    exact = np.asarray(mixture.sample(jax.random.key(7), 4000)[0])
    np.testing.assert_allclose(samples.mean(0), exact.mean(0), atol=0.06)
    np.testing.assert_allclose(np.cov(samples.T), np.cov(exact.T), atol=0.08)
    # The share of each component (by the exact posterior at t = 0) is the mixture's weight.
    share = np.asarray(mixture.responsibilities(process, samples, 1e-4)).mean(0)
    np.testing.assert_allclose(share, mixture.weights, atol=0.03)
