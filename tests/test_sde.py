"""The SDEs against closed forms (REFERENCE.md) and against simulation of the forward SDE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax.diffusion.processes import PROCESSES, VESDE, VPSDE, SubVPSDE

ALL = [VPSDE(), SubVPSDE(), VESDE()]
TIMES = jnp.array([1e-5, 1e-3, 0.1, 0.5, 0.9, 1.0])


def test_vp_marginals_match_reference_formula():
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    t = np.asarray(TIMES, np.float64)
    lmc = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    alpha, sigma = sde.marginal_coeffs(TIMES)
    np.testing.assert_allclose(alpha, np.exp(lmc), rtol=1e-6)
    np.testing.assert_allclose(sigma, np.sqrt(1 - np.exp(2 * lmc)), rtol=1e-4)


def test_subvp_std_is_not_square_rooted():
    sde = SubVPSDE()
    t = np.asarray(TIMES, np.float64)
    lmc = -0.25 * t**2 * 19.9 - 0.05 * t
    np.testing.assert_allclose(sde.marginal_std(TIMES), 1 - np.exp(2 * lmc), rtol=1e-4)


def test_ve_sigma_and_diffusion():
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    t = np.asarray(TIMES, np.float64)
    sigma = 0.01 * (50.0 / 0.01) ** t
    np.testing.assert_allclose(sde.marginal_std(TIMES), sigma, rtol=1e-5)
    np.testing.assert_allclose(sde.diffusion(TIMES), sigma * math.sqrt(2 * math.log(5000.0)),
                               rtol=1e-5)
    np.testing.assert_allclose(sde.drift(jnp.ones((6, 3)), TIMES), 0.0)


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_kernel_variance_obeys_the_linear_sde(sde):
    """d sigma^2/dt = 2 f sigma^2 + g^2 and d log alpha/dt = f: the kernel solves the SDE."""
    t = jnp.linspace(0.05, 0.95, 7)
    d_var = jax.vmap(jax.grad(lambda s: sde.marginal_std(s) ** 2))(t)
    d_log_alpha = jax.vmap(jax.grad(lambda s: jnp.log(sde.marginal_coeffs(s)[0])))(t)
    f, g = sde.drift_coeff(t), sde.diffusion(t)
    np.testing.assert_allclose(d_var, 2 * f * sde.marginal_std(t) ** 2 + g**2, rtol=2e-3)
    np.testing.assert_allclose(d_log_alpha, f, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_forward_simulation_matches_marginals(sde):
    """Euler–Maruyama simulation of dx = f x dt + g dw from x0 reproduces N(alpha x0, sigma^2)."""
    n, steps, t_end = 20000, 1000, 0.6
    x0 = 1.5
    # VE's kernel assumes the t = 0 marginal already carries N(0, sigma_min^2) (module docstring).
    start_std = sde.marginal_std(0.0) if isinstance(sde, VESDE) else 0.0
    key = jax.random.key(0)
    x = x0 + start_std * jax.random.normal(jax.random.fold_in(key, 10**6), (n,))
    dt = t_end / steps

    def step(x, i):
        t = i * dt
        noise = jax.random.normal(jax.random.fold_in(key, i), (n,))
        return x + sde.drift_coeff(t) * x * dt + sde.diffusion(t) * jnp.sqrt(dt) * noise, None

    x, _ = jax.lax.scan(step, x, jnp.arange(steps))
    alpha, sigma = sde.marginal_coeffs(t_end)
    std_err = float(sigma) / math.sqrt(n)
    assert abs(float(jnp.mean(x)) - float(alpha) * x0) < 5 * std_err + 2e-3 * abs(float(alpha))
    np.testing.assert_allclose(float(jnp.std(x)), float(sigma), rtol=0.03)


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_log_snr_inverse(sde):
    t = jnp.linspace(1e-3, 1.0, 50)
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=2e-3, atol=2e-4)
    assert bool(jnp.all(jnp.diff(sde.log_snr(t)) < 0)), "log-SNR must decrease in t"


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_prior(sde):
    z = sde.prior_sample(jax.random.key(1), (4, 3, 2, 2))
    expected = stats.norm(scale=sde.prior_std()).logpdf(np.asarray(z)).reshape(4, -1).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(z), expected, rtol=1e-5)
    # The prior is the marginal at T for data at the origin (up to VP's exp(-10) residual).
    np.testing.assert_allclose(sde.marginal_std(sde.T), sde.prior_std(), rtol=1e-3)


@pytest.mark.parametrize("sde", ALL, ids=lambda s: s.name)
def test_drifts_with_the_exact_score_of_a_gaussian(sde):
    """For x0 ~ N(0, s^2) the score is known; the PF-ODE preserves the marginal's variance flow."""
    s2, t = 0.7**2, jnp.full((5,), 0.4)
    alpha, sigma = sde.marginal_coeffs(t)
    var = alpha**2 * s2 + sigma**2
    x = jnp.linspace(-2, 2, 5)[:, None]
    score = -x / var[:, None]
    f, g2 = sde.drift_coeff(t)[:, None], sde.diffusion(t)[:, None] ** 2
    np.testing.assert_allclose(sde.reverse_drift(x, t, score), f * x - g2 * score, rtol=1e-6)
    # Along the PF-ODE x_t = sqrt(var_t) u, so dx/dt = x d log sqrt(var)/dt.
    d_var = jax.vmap(jax.grad(lambda s: sde.marginal_coeffs(s)[0] ** 2 * s2
                              + sde.marginal_coeffs(s)[1] ** 2))(t)
    np.testing.assert_allclose(sde.probability_flow_drift(x, t, score),
                               x * (0.5 * d_var / var)[:, None], rtol=2e-3, atol=1e-5)


def test_registry_names():
    assert {name: cls.name for name, cls in PROCESSES.items()} == {
        name: name for name in ("vp", "subvp", "ve", "cosine", "ddpm", "flow", "edm", "trigflow")}
