"""Every process against closed forms: its kernel solves its SDE, the inverse maps invert, every
time grid is strictly monotone in float32, the PF-ODE written with predictions equals the SDE
form, and the new schedules equal their references' formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffjax.diffusion.processes import (PROCESSES, VPSDE, CosineVP, DiscreteDDPM, EDMProcess,
                                         LinearProcess, RectifiedFlow, SubVPSDE, get_process)
from diffjax.sampling.time_grids import resolve_eps, time_grid

ALL = {name: cls() for name, cls in PROCESSES.items()}


def interior_times(process, n=9):
    """Times strictly inside (eps, t_max), where every process is smooth."""
    eps = resolve_eps(process, None)
    lo, hi = max(eps, 1e-3 * process.T), process.t_max
    return jnp.asarray(np.geomspace(lo, hi, n + 2)[1:-1], jnp.float32)


@pytest.mark.parametrize("name", ALL)
def test_kernel_solves_the_sde(name):
    """d log alpha/dt = f and d sigma^2/dt = 2 f sigma^2 + g^2, with f and g as each process states
    them (closed forms where it has them), against autodiff of its alpha(t), sigma(t)."""
    process = ALL[name]
    t = interior_times(process)
    if name == "ddpm":  # piecewise: differentiate inside a segment, not across a knot
        t = (jnp.floor(t * 1000) + 0.5) / 1000
    d_log_alpha = jax.vmap(jax.grad(lambda s: jnp.log(process.marginal_coeffs(s)[0])))(t)
    d_var = jax.vmap(jax.grad(lambda s: process.marginal_coeffs(s)[1] ** 2))(t)
    f, g = process.drift_coeff(t), process.diffusion(t)
    sigma = process.marginal_std(t)
    np.testing.assert_allclose(d_log_alpha, f, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(d_var, 2 * f * sigma**2 + g**2, rtol=2e-3, atol=1e-6)
    d_alpha, d_sigma = process.coeff_derivatives(t)
    alpha_grad = jax.vmap(jax.grad(lambda s: process.marginal_coeffs(s)[0]))(t)
    sigma_grad = jax.vmap(jax.grad(lambda s: process.marginal_coeffs(s)[1]))(t)
    np.testing.assert_allclose(d_alpha, alpha_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(d_sigma, sigma_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_probability_flow_velocity_equals_the_sde_form(name):
    """alpha' x0 + sigma' eps == f x - g^2/2 score, x = alpha x0 + sigma eps, score = -eps/sigma."""
    process = ALL[name]
    t = interior_times(process, 5)
    x0, eps = jax.random.normal(jax.random.key(0), (2, 5, 3))
    x = process.perturb(x0, t, eps)
    score = -eps / process.marginal_std(t)[:, None]
    np.testing.assert_allclose(process.probability_flow_velocity(x0, eps, t),
                               process.probability_flow_drift(x, t, score), rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", ALL)
def test_inverse_maps(name):
    process = ALL[name]
    eps = resolve_eps(process, None)
    t = jnp.asarray(np.geomspace(eps, process.t_max, 60), jnp.float32)
    if name == "ddpm":  # interpolation is exact on the knots (and between them)
        t = jnp.asarray((np.arange(1, 1001, 7) / 1000.0), jnp.float32)
    lam = process.log_snr(t)
    assert bool(jnp.all(jnp.diff(lam) < 0)), "log-SNR must decrease in t"
    np.testing.assert_allclose(process.t_from_log_snr(lam), t, rtol=2e-3, atol=1e-6)
    sigma_tilde = process.noise_to_signal(t)
    np.testing.assert_allclose(process.t_from_noise_to_signal(sigma_tilde), t, rtol=2e-3,
                               atol=1e-6)
    alpha, sigma = process.marginal_coeffs(t)
    np.testing.assert_allclose(sigma_tilde, sigma / alpha, rtol=1e-5)


def test_subvp_inverse_is_accurate_near_eps_in_float32():
    """The old route (log of alpha within 1e-6 of 1, then the textbook root) was 6% off here."""
    process = SubVPSDE()
    t = jnp.asarray([1e-5, 2e-5, 5e-5, 1e-4], jnp.float32)
    np.testing.assert_allclose(process.t_from_log_snr(process.log_snr(t)), t, rtol=2e-4)
    np.testing.assert_allclose(VPSDE().t_from_log_snr(VPSDE().log_snr(t)), t, rtol=2e-4)


@pytest.mark.parametrize("name", ALL)
def test_every_grid_is_strictly_monotone_in_float32(name):
    process = ALL[name]
    grids = ["uniform", "edm", "log_snr"] + (["discrete"] if name == "ddpm" else [])
    eps_values = {resolve_eps(process, None)}
    if name in ("vp", "subvp", "cosine"):
        eps_values.add(1e-5)  # the sub-VP bug's end time
    for eps in eps_values:
        for grid_name in grids:
            for n in (3, 18, 100, 999):
                grid = np.asarray(time_grid(grid_name, process, n, eps))
                assert grid.dtype == np.float32
                assert grid.shape == (n + 1,)
                assert np.all(np.diff(grid) < 0), (grid_name, n, eps, grid[-5:])
                assert np.all(np.isfinite(grid))


@pytest.mark.parametrize("name", ["vp", "subvp", "ddpm", "edm"])
def test_grids_and_coefficients_follow_x64(name):
    process = ALL[name]
    with jax.enable_x64(True):
        eps = resolve_eps(process, None)
        for grid_name in ("uniform", "edm", "log_snr"):
            grid = time_grid(grid_name, process, 10, eps)
            assert grid.dtype == jnp.float64, grid_name
            alpha, sigma = process.marginal_coeffs(grid)
            assert alpha.dtype == sigma.dtype == jnp.float64
            assert process.log_snr(grid).dtype == jnp.float64
        assert process.prior_sample(jax.random.key(0), (2, 3)).dtype == jnp.float64
    # float64 grids are float32 grids to float32 precision
    np.testing.assert_allclose(np.asarray(time_grid("log_snr", process, 10, eps)),
                               np.asarray(grid, np.float32), rtol=2e-5)


def test_cosine_is_dpm_solvers_schedule():
    """DPM-Solver's NoiseScheduleVP('cosine') (dpm_solver_jax.py), transcribed in float64."""
    s, t_end = 0.008, 0.9946
    process = CosineVP()
    assert process.T == t_end
    t = np.linspace(1e-3, t_end, 11)
    log_alpha = np.log(np.cos((t + s) / (1 + s) * math.pi / 2)) - math.log(
        math.cos(s / (1 + s) * math.pi / 2))
    sigma = np.sqrt(1 - np.exp(2 * log_alpha))
    alpha_ours, sigma_ours = process.marginal_coeffs(jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(alpha_ours, np.exp(log_alpha), rtol=1e-5)
    np.testing.assert_allclose(sigma_ours, sigma, rtol=1e-4)
    lam = 2 * (log_alpha - np.log(sigma))
    # DPM-Solver's inverse_lambda (its lambda is half ours)
    half = lam / 2
    log_alpha_back = -0.5 * np.logaddexp(-2.0 * half, 0.0)
    t_back = np.arccos(np.exp(log_alpha_back + math.log(math.cos(s / (1 + s) * math.pi / 2)))) \
        * 2 * (1 + s) / math.pi - s
    np.testing.assert_allclose(t_back, t, rtol=1e-9)
    np.testing.assert_allclose(process.t_from_log_snr(jnp.asarray(lam, jnp.float32)), t,
                               rtol=1e-3)


def test_ddpm_schedule_and_step_times():
    process = DiscreteDDPM()
    n = np.arange(1000)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(process.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-14)
    t = process.step_time(jnp.asarray(n))
    alpha, sigma = process.marginal_coeffs(t)
    np.testing.assert_allclose(alpha, np.sqrt(process.alphas_cumprod), rtol=2e-6)
    np.testing.assert_allclose(sigma, np.sqrt(1 - process.alphas_cumprod), rtol=2e-5)
    # The network sees exactly n on every step.
    np.testing.assert_array_equal(np.asarray(process.timestep(t)), n.astype(np.float32))
    # Training times are the steps, uniformly.
    times = process.sample_uniform_time(jax.random.key(0), 50_000, 1e-5)
    steps = np.round(np.asarray(times) * 1000 - 1).astype(int)
    np.testing.assert_allclose(np.asarray(times), (steps + 1) / 1000, rtol=1e-6)
    assert steps.min() == 0 and steps.max() == 999
    counts = np.bincount(steps // 100, minlength=10)
    assert np.all(np.abs(counts - 5000) < 5 * np.sqrt(5000)), counts
    # The clean-data knot: alpha(0) = 1, sigma(0) = 0.
    alpha0, sigma0 = process.marginal_coeffs(jnp.zeros(1))
    assert float(alpha0[0]) == 1.0 and float(sigma0[0]) == 0.0
    cosine = DiscreteDDPM(beta_schedule="cosine")
    assert cosine.betas.max() == pytest.approx(0.999)
    with pytest.raises(ValueError, match="linear"):
        DiscreteDDPM(beta_schedule="quad")


def test_discrete_linear_schedule_agrees_with_continuous_vp():
    """Ho et al.'s betas 1e-4..0.02 over 1000 steps are the VP SDE's beta(t) = 0.1 + 19.9 t
    sampled at t_n = (n + 1)/N, to first order: the log-SNRs agree to 1% of their range and the
    probability-flow solutions from the same x_T agree to ~1e-2."""
    ddpm, vp = DiscreteDDPM(), VPSDE()
    t = jnp.linspace(1e-3, 1.0, 200)
    lam_ddpm, lam_vp = np.asarray(ddpm.log_snr(t)), np.asarray(vp.log_snr(t))
    assert np.max(np.abs(lam_ddpm - lam_vp)) < 0.01 * (lam_vp.max() - lam_vp.min())
    # alphas_cumprod is the product of (1 - beta) where VP integrates beta: the largest gap is
    # at t = 1, sum beta^2 / 2 ~ 0.07 in log abar.
    np.testing.assert_allclose(np.asarray(ddpm.marginal_coeffs(t)[0]),
                               np.asarray(vp.marginal_coeffs(t)[0]), rtol=0.04)


def test_flow_and_edm_closed_forms():
    flow, edm = RectifiedFlow(), EDMProcess()
    t = jnp.asarray([0.0, 0.25, 0.5, 1.0])
    alpha, sigma = flow.marginal_coeffs(t)
    np.testing.assert_allclose(alpha, 1 - t)
    np.testing.assert_allclose(sigma, t)
    d_alpha, d_sigma = flow.coeff_derivatives(t)
    np.testing.assert_allclose(d_alpha, -1.0)
    np.testing.assert_allclose(d_sigma, 1.0)
    assert flow.prior_std() == 1.0 and flow.T == 1.0 and flow.t_max < 1.0
    # The PF velocity is finite at t = 1, where f and g are not.
    v = flow.probability_flow_velocity(jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.ones(1))
    np.testing.assert_allclose(v, -1.0)
    assert not np.isfinite(float(flow.drift_coeff(1.0)))
    t = jnp.asarray([0.002, 1.0, 80.0])
    alpha, sigma = edm.marginal_coeffs(t)
    np.testing.assert_allclose(alpha, 1.0)
    np.testing.assert_allclose(sigma, t)
    assert edm.T == 80.0 and edm.prior_std() == 80.0 and edm.default_eps == 0.002
    np.testing.assert_allclose(edm.diffusion(t) ** 2, 2 * t, rtol=1e-6)


def test_get_process_from_config():
    config = ml_collections.ConfigDict(dict(name="edm", beta_min=0.1, beta_max=20.0,
                                            sigma_min=None, sigma_max=None, num_timesteps=1000,
                                            beta_schedule="linear"))
    assert get_process(config) == EDMProcess()
    config.name, config.sigma_max = "ve", 8.0
    assert get_process(config).sigma_max == 8.0 and get_process(config).sigma_min == 0.01
    config.name, config.num_timesteps, config.beta_schedule = "ddpm", 500, "cosine"
    assert get_process(config) == DiscreteDDPM(num_timesteps=500, beta_schedule="cosine")
    config.name = "rf"
    with pytest.raises(ValueError, match="flow"):
        get_process(config)
    # Hashable, so processes are static jit arguments.
    assert len({process for process in ALL.values()}) == len(ALL)
    assert all(isinstance(process, LinearProcess) for process in ALL.values())


def test_resolve_eps():
    assert resolve_eps(RectifiedFlow(), 0.0) == 0.0
    with pytest.raises(ValueError, match=r"\(0, T=1.0\)"):
        resolve_eps(VPSDE(), 0.0)
    assert resolve_eps(DiscreteDDPM(), None) == 1e-3
    assert resolve_eps(EDMProcess(), None) == 0.002
