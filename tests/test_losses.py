"""Denoising score matching: its minimiser is the true score (Gaussian data, closed form)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.losses import dsm_loss
from diffjax.score import make_score_fn, noise_conditioning
from diffjax.sde import SubVPSDE, VESDE, VPSDE

DATA_STD = 0.6


def gaussian_score(sde, scale=1.0):
    """scale * the exact score of p_t when x0 ~ N(0, DATA_STD^2 I)."""

    def score_fn(x, t):
        alpha, sigma = sde.marginal_coeffs(t)
        var = (alpha**2 * DATA_STD**2 + sigma**2).reshape(-1, *([1] * (x.ndim - 1)))
        return -scale * x / var

    return score_fn


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=lambda s: s.name)
@pytest.mark.parametrize("weighting", [False, True])
def test_true_score_minimises_the_loss(sde, weighting):
    """d/dc E[loss(c * true score)] = 0 at c = 1, for both weightings."""
    x0 = DATA_STD * jax.random.normal(jax.random.key(0), (40000, 4))

    def expected_loss(c):
        return jnp.mean(dsm_loss(jax.random.key(1), gaussian_score(sde, c), sde, x0, eps=1e-3,
                                 likelihood_weighting=weighting))

    grad_at_one = jax.grad(expected_loss)(1.0)
    curvature = jax.grad(jax.grad(expected_loss))(1.0)
    # A unit step in c moves the loss by ~curvature; the optimum must sit within 3% of c = 1.
    assert abs(float(grad_at_one) / float(curvature)) < 0.03


def test_noise_parameterisation_gives_epsilon_loss():
    """With a noise-predicting network, the unweighted loss is || z_hat - z ||^2."""
    sde = VPSDE()
    x0 = jax.random.normal(jax.random.key(2), (8, 3, 3, 1))
    predicted = jnp.full(x0.shape, 0.25)
    score_fn = make_score_fn(sde, lambda x, c, y: predicted, parameterization="noise")
    t_rng, z_rng = jax.random.split(jax.random.key(3))
    z = jax.random.normal(z_rng, x0.shape)
    loss = dsm_loss(jax.random.key(3), score_fn, sde, x0, reduce_mean=False)
    np.testing.assert_allclose(loss, jnp.sum((predicted - z) ** 2, axis=(1, 2, 3)), rtol=1e-4)
    mean_loss = dsm_loss(jax.random.key(3), score_fn, sde, x0, reduce_mean=True)
    np.testing.assert_allclose(mean_loss, loss / 9, rtol=1e-5)


def test_likelihood_weighting_rescales_by_g2_over_sigma2():
    sde = SubVPSDE()
    x0 = jax.random.normal(jax.random.key(4), (16, 5))
    score_fn = gaussian_score(sde, 0.8)
    plain = dsm_loss(jax.random.key(5), score_fn, sde, x0)
    weighted = dsm_loss(jax.random.key(5), score_fn, sde, x0, likelihood_weighting=True)
    t = jax.random.uniform(jax.random.split(jax.random.key(5))[0], (16,), minval=1e-5, maxval=1.0)
    ratio = sde.diffusion(t) ** 2 / sde.marginal_std(t) ** 2
    np.testing.assert_allclose(weighted, plain * ratio, rtol=1e-4)


def test_noise_conditioning_is_time_for_vp_and_log_sigma_for_ve():
    t = jnp.array([0.25, 0.5])
    np.testing.assert_allclose(noise_conditioning(VPSDE(), t), 999 * t)
    np.testing.assert_allclose(noise_conditioning(VESDE(), t), jnp.log(VESDE().sigma(t)), rtol=1e-6)


def test_ema_warmup_reaches_the_configured_decay():
    import ml_collections

    from diffjax.training.step import ema_decay

    config = ml_collections.ConfigDict(dict(ema_decay=0.999, ema_warmup=True))
    assert float(ema_decay(config, jnp.asarray(0))) == pytest.approx(0.1)
    assert float(ema_decay(config, jnp.asarray(2000))) == pytest.approx(2001 / 2010)
    assert float(ema_decay(config, jnp.asarray(100_000))) == pytest.approx(0.999)
    config.ema_warmup = False
    assert float(ema_decay(config, jnp.asarray(0))) == pytest.approx(0.999)
