"""Every objective's loss: minimised by the exact optimum, equal to its published formula, with the
published time distributions, and DDPM's learned-variance term equal to DiT's."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from gaussian_mixture import two_d_mixture

from diffjax.diffusion.losses import (ddpm_vb_term, diffusion_loss, dsm_loss, loss_options,
                                      sample_times)
from diffjax.diffusion.parameterization import (PARAMETERIZATIONS, Prediction, coefficients,
                                                get_parameterization, make_score_fn,
                                                noise_conditioning)
from diffjax.diffusion.processes import (VESDE, VPSDE, CosineVP, DiscreteDDPM, EDMProcess,
                                         RectifiedFlow, SubVPSDE)

DATA_STD = 0.6
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# noise_cond -> t, per process, so that a stand-in network can compute the exact optimum.
COND_TO_TIME = {
    "vp": lambda p, c: c / 999.0, "subvp": lambda p, c: c / 999.0,
    "cosine": lambda p, c: c / 999.0,
    "ve": lambda p, c: p.t_from_noise_to_signal(jnp.exp(c)),
    "ddpm": lambda p, c: (c + 1.0) / p.num_timesteps,
    "flow": lambda p, c: 1.0 - c,
    "edm": lambda p, c: jnp.exp(4.0 * c),
}


def optimal_net(process, parameterization, scale=1.0, sigma_data=None):
    """net(x_in, noise_cond, labels) returning scale * the exact optimum of `parameterization`
    for data N(0, DATA_STD^2 I): E[target | x_t], a function of the posterior means."""
    param = get_parameterization(parameterization)

    def net(x_in, noise_cond, labels):
        t = COND_TO_TIME[process.name](process, noise_cond)
        alpha, sigma = (v.reshape(-1, 1) for v in process.marginal_coeffs(t))
        x = x_in
        if sigma_data is not None:
            x = x_in * jnp.sqrt(alpha**2 * sigma_data**2 + sigma**2)
        var = alpha**2 * DATA_STD**2 + sigma**2
        x0_hat, eps_hat = alpha * DATA_STD**2 / var * x, sigma / var * x
        c = coefficients(process, t, x, 0.5 if sigma_data is None else sigma_data)
        return scale * param.target(x0_hat, eps_hat, x, c)

    return net


CASES = [  # (process, parameterization, loss options)
    (VPSDE(), "eps", {}),
    (VPSDE(), "score", {}),
    (VPSDE(), "x0", {}),
    (VPSDE(), "v", {}),
    (VPSDE(), "eps", dict(likelihood_weighting=True)),
    (SubVPSDE(), "score", dict(likelihood_weighting=True)),
    (VESDE(sigma_max=5.0), "eps", {}),
    (VESDE(sigma_max=5.0), "edm", {}),
    (CosineVP(), "v", {}),
    (DiscreteDDPM(), "eps", {}),
    (RectifiedFlow(), "velocity", {}),
    (RectifiedFlow(), "velocity", dict(time_sampling="logit_normal")),
    (RectifiedFlow(), "x0", {}),
    (EDMProcess(), "edm", {}),
    (EDMProcess(), "eps", dict(time_sampling="uniform")),
]


@pytest.mark.parametrize("process,parameterization,options", CASES,
                         ids=[f"{p.name}-{q}-{'-'.join(map(str, o)) if o else 'default'}"
                              for p, q, o in CASES])
def test_exact_optimum_minimises_the_loss(process, parameterization, options):
    """d/dc E[loss(c * optimum)] = 0 at c = 1: the optimum is the minimiser, in every
    parameterisation and weighting (the loss is a weighted MSE of an affine function of c)."""
    x0 = DATA_STD * jax.random.normal(jax.random.key(0), (40000, 4))
    sigma_data = 0.5 if parameterization == "edm" else None

    def expected_loss(c):
        model = make_score_fn(process, optimal_net(process, parameterization, c, sigma_data),
                              parameterization=parameterization, sigma_data=sigma_data)
        return jnp.mean(diffusion_loss(jax.random.key(1), model, process, x0, eps=1e-3,
                                       reduce_mean=True, **options))

    grad_at_one = jax.grad(expected_loss)(1.0)
    curvature = jax.grad(jax.grad(expected_loss))(1.0)
    assert np.isfinite(float(curvature)) and float(curvature) > 0
    assert abs(float(grad_at_one) / float(curvature)) < 0.03


def _draws(process, rng, x0, **options):
    """(t, eps) exactly as diffusion_loss draws them."""
    t_rng, z_rng = jax.random.split(rng)
    t = sample_times(t_rng, x0.shape[0], process, 1e-5, **options)
    return t, jax.random.normal(z_rng, x0.shape, x0.dtype)


def test_eps_loss_is_the_noise_mse_and_reductions_are_score_sdes():
    process = VPSDE()
    x0 = jax.random.normal(jax.random.key(2), (8, 3, 3, 1))
    predicted = jnp.full(x0.shape, 0.25)
    model = make_score_fn(process, lambda x, c, y: predicted, parameterization="noise")
    _, z = _draws(process, jax.random.key(3), x0)
    summed = dsm_loss(jax.random.key(3), model, process, x0, reduce_mean=False)
    # score_sde: reduce_mean=False is 0.5 * the sum over pixels, True the mean.
    np.testing.assert_allclose(summed, 0.5 * jnp.sum((predicted - z) ** 2, axis=(1, 2, 3)),
                               rtol=1e-5)
    mean = dsm_loss(jax.random.key(3), model, process, x0, reduce_mean=True)
    np.testing.assert_allclose(mean, jnp.mean((predicted - z) ** 2, axis=(1, 2, 3)), rtol=1e-5)


def test_edm_loss_is_edms_formula():
    """EDMLoss: sigma = exp(P_mean + P_std n), weight (sigma^2 + sd^2)/(sigma sd)^2, sum over
    pixels of weight (D - y)^2, with D = c_skip x + c_out F(c_in x, ln(sigma)/4)."""
    process, sd = EDMProcess(), 0.5
    x0 = jax.random.normal(jax.random.key(4), (16, 4, 4, 2))
    features = jax.random.normal(jax.random.key(5), (4 * 4 * 2,))

    def net(x_in, c_noise, labels):  # any smooth function of both inputs
        return jnp.tanh(x_in * features.reshape(4, 4, 2) + c_noise[:, None, None, None])

    model = make_score_fn(process, net, parameterization="edm", sigma_data=sd)
    loss = diffusion_loss(jax.random.key(6), model, process, x0, reduce_mean=False)
    t, n = _draws(process, jax.random.key(6), x0)  # default for edm: log-normal
    sigma = t.reshape(-1, 1, 1, 1)
    y = x0 + sigma * n
    c_in = 1 / jnp.sqrt(sd**2 + sigma**2)
    c_skip, c_out = sd**2 / (sigma**2 + sd**2), sigma * sd / jnp.sqrt(sigma**2 + sd**2)
    denoised = c_skip * y + c_out * net(c_in * y, jnp.log(t) / 4, None)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    edm = jnp.sum(weight * (denoised - x0) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(loss, 0.5 * edm, rtol=2e-4)  # diffjax's reduce_mean=False: 0.5 sum
    # sigma ~ log-normal(P_mean, P_std)
    log_sigma = np.log(np.asarray(sample_times(jax.random.key(7), 100_000, process)))
    assert abs(log_sigma.mean() + 1.2) < 0.02 and abs(log_sigma.std() - 1.2) < 0.02


def test_flow_loss_is_the_velocity_mse_with_sits_and_sd3s_times():
    process = RectifiedFlow()
    x0 = jax.random.normal(jax.random.key(8), (16, 6))
    out = jax.random.normal(jax.random.key(9), (16, 6))
    model = make_score_fn(process, lambda x, c, y: out, parameterization="velocity")
    for options in ({}, dict(time_sampling="logit_normal")):
        loss = diffusion_loss(jax.random.key(10), model, process, x0, reduce_mean=True, **options)
        _, z = _draws(process, jax.random.key(10), x0, **options)
        np.testing.assert_allclose(loss, jnp.mean((out - (z - x0)) ** 2, -1), rtol=1e-5)
    t = np.asarray(sample_times(jax.random.key(11), 100_000, process,
                                time_sampling="logit_normal", logit_normal=(0.5, 0.8)))
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.02 and abs(logit.std() - 0.8) < 0.02
    t = np.asarray(sample_times(jax.random.key(12), 100_000, process))
    assert 1e-5 <= t.min() and t.max() <= 1.0 and abs(t.mean() - 0.5) < 0.005
    with pytest.raises(ValueError, match="logit_normal"):
        sample_times(jax.random.key(0), 4, process, time_sampling="beta")


def test_v_target_and_likelihood_weighting():
    process = VPSDE()
    x0 = jax.random.normal(jax.random.key(13), (16, 5))
    out = jax.random.normal(jax.random.key(14), (16, 5))
    model = make_score_fn(process, lambda x, c, y: out, parameterization="v")
    loss = diffusion_loss(jax.random.key(15), model, process, x0, reduce_mean=True)
    t, z = _draws(process, jax.random.key(15), x0)
    alpha, sigma = (v[:, None] for v in process.marginal_coeffs(t))
    np.testing.assert_allclose(loss, jnp.mean((out - (alpha * z - sigma * x0)) ** 2, -1),
                               rtol=1e-5)
    # Likelihood weighting: lambda = g^2 on the score error, whatever the output.
    weighted = diffusion_loss(jax.random.key(15), model, process, x0, reduce_mean=True,
                              likelihood_weighting=True)
    x_t = alpha * x0 + sigma * z
    score_hat = model(x_t, t)
    expected = process.diffusion(t) ** 2 * jnp.mean((score_hat + z / sigma) ** 2, -1)
    np.testing.assert_allclose(weighted, expected, rtol=1e-3)


@pytest.mark.parametrize("name", sorted(PARAMETERIZATIONS))
def test_parameterisations_invert(name):
    """predict(target(x0, eps)) == (x0, eps) for every parameterisation on every process."""
    param = PARAMETERIZATIONS[name]
    x0, eps = jax.random.normal(jax.random.key(16), (2, 6, 3))
    for process in (VPSDE(), VESDE(), RectifiedFlow(), EDMProcess(), DiscreteDDPM()):
        t = jnp.linspace(0.2, 0.8, 6) * process.T
        x = process.perturb(x0, t, eps)
        c = coefficients(process, t, x, 0.5)
        x0_hat, eps_hat = param.predict(param.target(x0, eps, x, c), x, c)
        np.testing.assert_allclose(x0_hat, x0, rtol=1e-4, atol=2e-4, err_msg=process.name)
        np.testing.assert_allclose(eps_hat, eps, rtol=1e-4, atol=2e-4, err_msg=process.name)


def test_noise_conditioning_per_process():
    t = jnp.array([0.25, 0.5])
    np.testing.assert_allclose(noise_conditioning(VPSDE(), t), 999 * t)
    np.testing.assert_allclose(noise_conditioning(CosineVP(), t), 999 * t)
    np.testing.assert_allclose(noise_conditioning(VESDE(), t), jnp.log(VESDE().sigma(t)),
                               rtol=1e-6)
    np.testing.assert_array_equal(noise_conditioning(DiscreteDDPM(), jnp.array([0.001, 0.5, 1.0])),
                                  [0.0, 499.0, 999.0])
    np.testing.assert_allclose(noise_conditioning(RectifiedFlow(), t), 1 - t)  # SiT's time
    np.testing.assert_allclose(noise_conditioning(EDMProcess(), t), jnp.log(t) / 4)


def test_loss_options_from_config():
    from diffjax.config.schema import base_config

    options = loss_options(base_config().training)
    assert options == dict(eps=1e-5, likelihood_weighting=False, reduce_mean=False,
                           time_sampling=None, logit_normal=(0.0, 1.0), log_normal=(-1.2, 1.2),
                           min_snr_gamma=0.0, noise_offset=0.0)


def test_learned_variance_term_is_dits():
    """DiT's training_losses with a learned variance (tools/make_ddpm_fixture.py): the KL of the
    posteriors in bits (the decoder NLL at n = 0), against diffjax's term with the same inputs."""
    ref = np.load(os.path.join(FIXTURES, "ddpm_reference.npz"))
    process = DiscreteDDPM()
    x0, n, noise = (jnp.asarray(ref[k]) for k in ("train/x0", "train/n", "train/noise"))
    t = process.step_time(n)
    x_t = process.perturb(x0, t, noise)
    mix = two_d_mixture()
    eps_hat = 0.9 * mix.predict(process, x_t, t).eps  # the fixture's model output
    alpha, sigma = (v[:, None] for v in process.marginal_coeffs(t))
    pred = Prediction(x0=(x_t - sigma * eps_hat) / alpha, eps=eps_hat, score=-eps_hat / sigma,
                      output=eps_hat, var_interp=jnp.tanh(0.3 * x_t + n[:, None] / 1000 - 0.5))
    vb = jnp.mean(ddpm_vb_term(process, t, x0, x_t, pred), -1)
    np.testing.assert_allclose(vb, ref["train/vb"], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(jnp.mean((eps_hat - noise) ** 2, -1), ref["train/mse"], rtol=1e-5)
    # Through the loss: the learned half adds exactly this term, and it trains the variance only.
    with pytest.raises(ValueError, match="sde.name=ddpm"):
        ddpm_vb_term(VPSDE(), t, x0, x_t, pred)


def test_learned_variance_loss_trains_both_halves():
    """With 2C outputs the loss is the eps MSE plus the bound term; the eps half gets no gradient
    from the bound (stop-gradient mean, as DiT), the variance half only from it."""
    process = DiscreteDDPM()
    x0 = jnp.round(jax.random.uniform(jax.random.key(17), (32, 2), minval=-1, maxval=1) * 127.5) \
        / 127.5

    def loss(params, with_variance):
        def net(x_in, cond, labels):
            eps = params["eps"] * x_in
            return jnp.concatenate([eps, jnp.tanh(params["var"] * x_in)], -1) if with_variance \
                else eps
        model = make_score_fn(process, net, learned_variance=with_variance)
        return jnp.mean(diffusion_loss(jax.random.key(18), model, process, x0, reduce_mean=True))

    params = {"eps": jnp.full((2,), 0.3), "var": jnp.full((2,), 0.2)}
    with_var = jax.grad(loss)(params, True)
    without = jax.grad(loss)(params, False)
    np.testing.assert_allclose(with_var["eps"], without["eps"], rtol=1e-5)
    assert np.all(np.abs(np.asarray(with_var["var"])) > 0)
    assert float(loss(params, True)) > float(loss(params, False))


def test_ema_warmup_reaches_the_configured_decay():
    from diffjax.training.step import ema_decay

    config = ml_collections.ConfigDict(dict(ema_decay=0.999, ema_warmup=True))
    assert float(ema_decay(config, jnp.asarray(0))) == pytest.approx(0.1)
    assert float(ema_decay(config, jnp.asarray(2000))) == pytest.approx(2001 / 2010)
    assert float(ema_decay(config, jnp.asarray(100_000))) == pytest.approx(0.999)
    config.ema_warmup = False
    assert float(ema_decay(config, jnp.asarray(0))) == pytest.approx(0.999)


def test_bits_helpers_match_closed_forms():
    from diffjax.diffusion.losses import discretized_gaussian_log_likelihood, normal_kl

    # KL of identical Gaussians is 0; of N(1, 1) to N(0, 1) is 1/2.
    assert float(normal_kl(0.0, 0.0, 0.0, 0.0)) == 0.0
    assert float(normal_kl(1.0, 0.0, 0.0, 0.0)) == pytest.approx(0.5)
    # A tiny scale puts all the mass in the bin of the mean.
    x = jnp.asarray([-1.0, 0.0, 1.0])
    ll = discretized_gaussian_log_likelihood(x, x, jnp.full(3, math.log(1e-4)))
    np.testing.assert_allclose(ll, 0.0, atol=1e-6)
