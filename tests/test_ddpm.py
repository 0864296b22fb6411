"""Discrete DDPM against DiT's `diffusion/` (tools/make_ddpm_fixture.py) and the closed form.

The fixture holds DiT's alphas_cumprod (linear and cosine), its respaced steps, and its
`p_sample_loop` / `ddim_sample_loop` runs with respacing "25" on the exact noise prediction of a
Gaussian mixture, with every torch.randn_like replaced by stored noise, for the three variance
types (beta~, beta, learned range). diffjax replays the same noise.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_mixture import GaussianMixture, two_d_mixture

from diffjax.diffusion.parameterization import make_score_fn
from diffjax.diffusion.processes import DiscreteDDPM
from diffjax.diffusion.processes.ddpm import space_timesteps
from diffjax.sampling import ddim, ddpm
from diffjax.sampling.ddim_sampler import ddim_step
from diffjax.sampling.ddpm_sampler import ancestral_loop, ddpm_coefficients
from diffjax.sampling.time_grids import time_grid

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "ddpm_reference.npz")
MIXTURE = two_d_mixture()


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


class LearnedVarianceModel:
    """The fixture's model: exact eps, and variance channels tanh(0.3 x + n / 1000 - 0.5)."""

    def __init__(self, process):
        self.process = process

    def predict(self, x, t):
        pred = MIXTURE.predict(self.process, x, t)
        n = self.process.timestep(t)
        return pred._replace(var_interp=jnp.tanh(0.3 * x + n[:, None] / 1000.0 - 0.5))

    def __call__(self, x, t):
        return self.predict(x, t).score


def test_schedules_and_respacing_are_dits(reference):
    for name, schedule in (("linear", "linear"), ("squaredcos_cap_v2", "cosine")):
        np.testing.assert_allclose(DiscreteDDPM(beta_schedule=schedule).alphas_cumprod,
                                   reference[f"alphas_cumprod/{name}"], rtol=1e-15)
    for count in (1, 2, 7, 25, 50, 100, 250, 1000):
        np.testing.assert_array_equal(space_timesteps(1000, count),
                                      reference[f"space_timesteps/{count}"])
    # The "discrete" grid: those steps at t_n = (n + 1)/N, decreasing, num_steps + 1 of them.
    grid = np.asarray(time_grid("discrete", DiscreteDDPM(), 24, 1e-3))
    np.testing.assert_allclose(grid, (reference["space_timesteps/25"][::-1] + 1) / 1000,
                               rtol=1e-6)


@pytest.mark.parametrize("variance", ["beta_tilde", "beta", "learned"])
def test_ancestral_sampling_is_dits_p_sample_loop(reference, variance):
    process = DiscreteDDPM()
    coefficients = ddpm_coefficients(process, 25, 1e-3, "discrete", 7.0)
    x = ancestral_loop(LearnedVarianceModel(process), process, jnp.asarray(reference["x_T"]),
                       coefficients, jnp.asarray(reference[f"p_sample/{variance}/noise"]),
                       lambda z, x: z, variance=variance)
    # float32 on both sides; measured max |difference| 4.8e-7 (values up to 3).
    np.testing.assert_allclose(np.asarray(x), reference[f"p_sample/{variance}"], atol=5e-6)


def test_ddim_is_dits_ddim_sample_loop(reference):
    x_T = jnp.asarray(reference["x_T"])

    @dataclasses.dataclass(frozen=True)
    class Replay(DiscreteDDPM):
        def prior_sample(self, rng, shape, dtype=None):
            return x_T

    process = Replay()
    # DiT's 25 respaced steps = 24 steps between them + the last one to the data (Tweedie).
    out = ddim(jax.random.key(0), MIXTURE.model_fn(process), process, x_T.shape, num_steps=24,
               time_grid="discrete", denoise=True)
    assert int(out.nfe) == 25
    np.testing.assert_allclose(np.asarray(out.samples), reference["ddim/0"], atol=5e-5)
    # eta = 1, replaying DiT's noise step by step.
    grid = time_grid("discrete", process, 24, 1e-3)
    noises = jnp.asarray(reference["ddim/1/noise"])
    x = x_T
    for i in range(24):
        x = ddim_step(MIXTURE.model_fn(process), process, x, grid[i], grid[i + 1], eta=1.0,
                      noise=noises[i])
    x = MIXTURE.predict(process, x, jnp.full((16,), grid[-1])).x0
    np.testing.assert_allclose(np.asarray(x), reference["ddim/1"], atol=5e-5)


def test_ancestral_step_is_the_closed_form_posterior():
    """On all 1000 steps the coefficients are Ho et al.'s eq. 7, and with the exact model for
    Gaussian data one step from x_n draws from N(mu~(x_n, E[x0 | x_n]), beta~_n)."""
    process = DiscreteDDPM()
    abar = process.alphas_cumprod
    betas = process.betas
    times, coef_xt, coef_x0, log_beta, log_beta_tilde = (
        np.asarray(v, np.float64) for v in ddpm_coefficients(process, 1000, 1e-3, "discrete", 7))
    n = np.arange(999, -1, -1)
    abar_prev = np.append(1.0, abar[:-1])[n]
    np.testing.assert_allclose(times, (n + 1) / 1000, rtol=1e-6)
    np.testing.assert_allclose(coef_x0, np.sqrt(abar_prev) * betas[n] / (1 - abar[n]), rtol=1e-5)
    np.testing.assert_allclose(coef_xt, np.sqrt(1 - betas[n]) * (1 - abar_prev) / (1 - abar[n]),
                               rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_beta), betas[n], rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_beta_tilde[:-1]),
                               ((1 - abar_prev) / (1 - abar[n]) * betas[n])[:-1], rtol=1e-5)
    # One step from a fixed x_n, 40000 times, for data N(0.3, 0.5^2): the sample mean and
    # variance are the closed-form posterior's (a second, identity step ends the loop).
    data = GaussianMixture(np.ones(1), np.full((1, 1), 0.3), np.full((1, 1, 1), 0.25))
    k, count = 500, 40000  # step n = 499 -> 498
    x_n = jnp.full((count, 1), 0.7)
    step = [v[k] for v in (times, coef_xt, coef_x0, log_beta, log_beta_tilde)]
    identity = [times[k + 1], 1.0, 0.0, 0.0, 0.0]
    coefficients = tuple(jnp.asarray([a, b], jnp.float32) for a, b in zip(step, identity))
    x_prev = np.asarray(ancestral_loop(data.model_fn(process), process, x_n, coefficients,
                                       jax.random.split(jax.random.key(1), 2),
                                       lambda key, x: jax.random.normal(key, x.shape)),
                        np.float64)[:, 0]
    alpha, sigma = np.sqrt(abar[499]), np.sqrt(1 - abar[499])
    x0_hat = alpha * 0.25 / (alpha**2 * 0.25 + sigma**2) * (0.7 - alpha * 0.3) + 0.3
    mean, var = coef_xt[k] * 0.7 + coef_x0[k] * x0_hat, np.exp(log_beta_tilde[k])
    assert abs(x_prev.mean() - mean) < 4.5 * np.sqrt(var / count)
    assert abs(x_prev.var() - var) < 4.5 * var * np.sqrt(2 / count)


def test_learned_variance_dit_samples():
    """A DiT with 2C outputs (DiT's learn_sigma layout) through ModelFn: the first C channels are
    eps, the last C the variance interpolation, which the ancestral sampler reads."""
    from diffjax.models.dit import DiT

    process = DiscreteDDPM()
    model = DiT(patch_size=2, hidden_size=32, depth=1, num_heads=2, learn_sigma=True)
    x = jnp.zeros((2, 8, 8, 1))
    params = nn.unbox(model.init(jax.random.key(0), x, jnp.zeros(2), None, train=False))["params"]
    # Away from adaLN-Zero's zero output, so both halves carry signal.
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
                          params)
    net = lambda x_in, c, y: model.apply({"params": params}, x_in, c, y, train=False)  # noqa: E731
    fn = make_score_fn(process, net, learned_variance=True)

    @jax.jit
    def run(rng):
        pred = fn.predict(jax.random.normal(rng, (2, 8, 8, 1)), jnp.full((2,), 0.5))
        samples = [ddpm(rng, fn, process, (2, 8, 8, 1), num_steps=3, variance=v).samples
                   for v in ("learned", "beta_tilde")]
        return pred, samples

    pred, (learned, small) = run(jax.random.key(3))
    assert pred.eps.shape == pred.var_interp.shape == (2, 8, 8, 1)
    assert np.all(np.isfinite(np.asarray(learned)))
    assert not np.allclose(np.asarray(learned), np.asarray(small))
