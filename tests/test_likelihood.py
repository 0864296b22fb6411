"""PF-ODE likelihoods against the exact log-density of a Gaussian mixture at t = eps."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_mixture import GaussianMixture, two_d_mixture

from diffjax.diffusion.processes import (VESDE, VPSDE, CosineVP, DiscreteDDPM, EDMProcess,
                                         RectifiedFlow, SubVPSDE)
from diffjax.evaluation.likelihood import bits_per_dim, bpd_offset, dequantize, likelihood_fn

SDES = {"vp": VPSDE(), "subvp": SubVPSDE(), "ve": VESDE()}
MIXTURE = two_d_mixture()
# Zero-mean data Gaussian: p_T is then the prior up to ~1e-4 nats for all three SDEs, so even
# the plain API (prior in place of p_T) must reproduce its log-density.
GAUSSIAN = GaussianMixture(np.ones(1), np.zeros((1, 2)), np.array([[[0.5, 0.2], [0.2, 0.3]]]))
EPS = 1e-5  # likelihood_fn's default start time


def _likelihood(sde, x, density=MIXTURE, rng=0, exact_prior=False, **kwargs):
    if exact_prior:
        kwargs["prior_logp"] = lambda z: density.log_prob(sde, z, sde.T)
    fn = functools.partial(likelihood_fn, sde, density.score_fn(sde), **kwargs)
    return jax.jit(fn)(x, jax.random.PRNGKey(rng))


def _test_points(density, sde):
    # Typical points (exact draws) and a few far in the tails, where the flow is least gentle.
    x, _ = density.sample(jax.random.PRNGKey(5), 60, sde, sde.likelihood_eps)
    tails = jnp.array([[3.0, 3.0], [-3.5, 1.0], [0.0, -3.0], [4.0, -2.0]], jnp.float32)
    return jnp.concatenate([x, tails])


@pytest.mark.parametrize("sde_name", SDES)
def test_exact_trace_matches_analytic_log_density(sde_name):
    sde = SDES[sde_name]
    # The data Gaussian through the public API.
    x = _test_points(GAUSSIAN, sde)
    result = _likelihood(sde, x, GAUSSIAN, exact_trace=True)
    exact = np.asarray(GAUSSIAN.log_prob(sde, x, EPS))
    np.testing.assert_allclose(np.asarray(result.logp), exact, rtol=2e-4, atol=5e-3)
    # Exact NFE bookkeeping of the shared adaptive solver: f0 plus 6 per attempted step.
    assert int(result.nfe) % 6 == 1 and int(result.nfe) > 7

    # The bimodal mixture, with the exact p_T in place of the prior (which would be off by up to
    # ~0.03 nats here, see likelihood_fn): what is left is the ODE error, which at
    # rtol = atol = 1e-5 is ~2e-3 nats in float32 and converges to 0 in float64.
    x = _test_points(MIXTURE, sde)
    result = _likelihood(sde, x, MIXTURE, exact_trace=True, exact_prior=True)
    exact = np.asarray(MIXTURE.log_prob(sde, x, EPS))
    np.testing.assert_allclose(np.asarray(result.logp), exact, rtol=2e-4, atol=5e-3)


@pytest.mark.parametrize("sde_name,probe", [("vp", "rademacher"), ("ve", "gaussian")])
def test_hutchinson_is_unbiased(sde_name, probe):
    sde = SDES[sde_name]
    # One point, 2000 independent probes (one per copy): the mean of the per-probe estimates
    # must match the exact log-density within Monte Carlo error.
    point = jnp.array([[0.4, 0.3]], jnp.float32)
    x = jnp.tile(point, (2000, 1))
    result = _likelihood(sde, x, GAUSSIAN, probe=probe, rtol=1e-4, atol=1e-4)
    logp = np.asarray(result.logp, np.float64)
    exact = float(GAUSSIAN.log_prob(sde, point, EPS)[0])
    se = logp.std() / math.sqrt(len(logp))
    assert logp.std() > 1e-3  # the probes really differ
    assert abs(logp.mean() - exact) < 4.5 * se + 2e-3, (logp.mean(), exact, se)


def test_bits_per_dim_offsets():
    # 256 levels: cells of width 1/256 on [0, 1] (8 bits) and 2/256 on [-1, 1] (7 bits).
    assert bpd_offset((0.0, 1.0)) == 8.0
    assert bpd_offset((-1.0, 1.0)) == 7.0
    assert bpd_offset(None) == 0.0
    # Data uniform over the 256 levels carries exactly 8 bits/dim: its dequantised density is
    # 1 on [0, 1] and 1/2 on [-1, 1].
    dim = 12
    np.testing.assert_allclose(bits_per_dim(jnp.zeros(3), dim, bpd_offset((0.0, 1.0))), 8.0)
    log_half = jnp.full(3, dim * math.log(0.5))
    np.testing.assert_allclose(bits_per_dim(log_half, dim, bpd_offset((-1.0, 1.0))), 8.0,
                               rtol=1e-6)


def test_dequantize_fills_each_level_cell():
    k = np.arange(256)
    for lo, hi in ((0.0, 1.0), (-1.0, 1.0)):
        stored = jnp.tile(jnp.asarray(lo + (hi - lo) * k / 255.0, jnp.float32), (200, 1))
        y = np.asarray(dequantize(jax.random.PRNGKey(0), stored, (lo, hi)), np.float64)
        within = (y - lo) / (hi - lo) * 256.0 - k  # position inside level k's cell, in cells
        assert within.min() > -1e-4 and within.max() < 1 + 1e-4
        # Uniform inside the cell: mean 1/2, variance 1/12 (51200 draws).
        assert abs(within.mean() - 0.5) < 0.01 and abs(within.var() - 1 / 12) < 0.005


def test_bpd_of_quantised_data_uses_the_offset():
    sde = SDES["vp"]
    # Stored data in [-1, 1] (levels k / 255); the model density is the mixture's.
    x = jnp.round((jnp.array([[0.1, -0.4], [0.7, 0.9]]) + 1) / 2 * 255) / 255 * 2 - 1
    result = _likelihood(sde, x, MIXTURE, rng=3, exact_trace=True, exact_prior=True,
                         data_range=(-1.0, 1.0))
    # Recreate the dequantised input exactly as likelihood_fn draws it.
    _, dequant_key = jax.random.split(jax.random.PRNGKey(3))
    x_deq = dequantize(dequant_key, x, (-1.0, 1.0))
    exact = np.asarray(MIXTURE.log_prob(sde, x_deq, EPS))
    np.testing.assert_allclose(np.asarray(result.logp), exact, atol=1e-2)
    expected_bpd = -exact / (2 * math.log(2)) + 7.0
    np.testing.assert_allclose(np.asarray(result.bpd), expected_bpd, atol=1e-2)


@pytest.mark.parametrize("process", [CosineVP(), DiscreteDDPM(), RectifiedFlow(), EDMProcess()],
                         ids=lambda p: p.name)
def test_exact_trace_on_the_new_processes(process):
    """The PF-ODE from predictions (alpha' x0_hat + sigma' eps_hat) integrates to T even where
    alpha(T) = 0 (flow); each process's own start time (DDPM 1/N, EDM sigma_min, 1e-5 else)."""
    x = _test_points(GAUSSIAN, process)[:16]
    fn = functools.partial(likelihood_fn, process, GAUSSIAN.model_fn(process), exact_trace=True)
    result = jax.jit(fn)(x, jax.random.PRNGKey(0))
    exact = np.asarray(GAUSSIAN.log_prob(process, x, process.likelihood_eps))
    np.testing.assert_allclose(np.asarray(result.logp), exact, rtol=2e-4, atol=5e-3)
