"""Flow matching (rectified flow) against SiT's conventions and against its ODE's exact solution.

The exact model of a Gaussian mixture (tests/gaussian_mixture.py) gives the velocity field
E[eps - x0 | x_t] of the linear interpolant; Euler and Heun on it (`ode_euler`, `ode_heun_t` on
the uniform grid from t = 1 to 0) must converge at orders 1 and 2 to a fine solve, and match
SiT's forward-time integrators; the velocity <-> score map must equal SiT's
`get_score_from_velocity`; SiT's SDE sampler must equal its Euler-Maruyama transcription.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from gaussian_mixture import two_d_mixture

from diffjax.diffusion.parameterization import make_score_fn
from diffjax.diffusion.processes import RectifiedFlow
from diffjax.sampling import SAMPLERS, sit_sde

FLOW = RectifiedFlow()
MIXTURE = two_d_mixture()
ODE = dict(time_grid="uniform", eps=0.0, denoise=False)


def run(name, n=256, rng=1, **options):
    fn = functools.partial(SAMPLERS[name], score_fn=MIXTURE.model_fn(FLOW), sde=FLOW,
                           shape=(n, 2), **options)
    return np.asarray(jax.jit(fn)(jax.random.key(rng)).samples, np.float64)


def test_euler_and_heun_converge_at_orders_one_and_two():
    reference = run("ode_heun_t", num_steps=2000, **ODE)
    error = lambda name, k: np.sqrt(np.mean((run(name, num_steps=k, **ODE)  # noqa: E731
                                             - reference) ** 2))
    euler = error("ode_euler", 100) / error("ode_euler", 200)
    heun = error("ode_heun_t", 50) / error("ode_heun_t", 100)
    print(f"\nflow: error ratio when halving the step: Euler {euler:.2f}, Heun {heun:.2f}")
    assert 1.7 <= euler <= 2.4, euler
    assert 3.3 <= heun <= 5.0, heun


def test_euler_is_sits_forward_euler():
    """SiT integrates x' = v_SiT(x, s) from s = 0 (noise) to 1 with v_SiT = x0 - eps = -u."""
    steps, rng = 10, jax.random.key(2)
    ours = run("ode_euler", rng=2, num_steps=steps, **ODE)
    x = np.asarray(jax.random.normal(rng, (256, 2)), np.float64)
    s_grid = np.linspace(0.0, 1.0, steps + 1)
    for s, s_next in zip(s_grid[:-1], s_grid[1:]):
        t = jnp.full((256,), 1.0 - s, jnp.float32)
        pred = MIXTURE.predict(FLOW, jnp.asarray(x, jnp.float32), t)
        v_sit = np.asarray(pred.x0 - pred.eps, np.float64)
        x = x + (s_next - s) * v_sit
    np.testing.assert_allclose(ours, x, atol=2e-5)


def test_velocity_and_score_are_sits():
    """SiT's ICPlan.get_score_from_velocity and get_noise_from_velocity (alpha_s = s, sigma_s =
    1 - s in SiT's time s = 1 - t; its velocity is -ours), transcribed."""
    out = jax.random.normal(jax.random.key(3), (5, 3))
    x = jax.random.normal(jax.random.key(4), (5, 3))
    t = jnp.asarray([0.0, 0.1, 0.5, 0.9, 1.0])
    model = make_score_fn(FLOW, lambda x_in, c, y: out, parameterization="velocity")
    pred = model.predict(x, t)
    s = (1.0 - t)[:, None]
    v_sit = -out
    # alpha = s, d_alpha = 1, sigma = 1 - s, d_sigma = -1
    score_sit = (s * v_sit - x) / ((1 - s) ** 2 - s * -1 * (1 - s))
    noise_sit = (s * v_sit - x) / (s * -1 - (1 - s))
    np.testing.assert_allclose(pred.eps, noise_sit, rtol=1e-5, atol=1e-6)
    interior = slice(0, 4)  # the score is -eps / t: infinite at t = 0
    np.testing.assert_allclose(pred.score[1:4], score_sit[1:4], rtol=1e-5, atol=1e-5)
    # Finite where the SDE form is not: at t = 1, x0 = x - u, eps = x.
    np.testing.assert_allclose(pred.x0[-1], x[-1] - out[-1], rtol=1e-6)
    np.testing.assert_allclose(pred.eps[-1], x[-1], rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(pred.x0[interior])))


def test_sit_sde_is_euler_maruyama_with_sits_diffusion():
    """SiT's sample_sde: w(s) = norm (1 - s) ("sigma"), Euler-Maruyama on
    dx = [v_SiT + w score] ds + sqrt(2 w) dW on linspace(0, 1 - 0.04, N), then the "Mean" step."""
    steps, n, rng = 20, 128, jax.random.key(5)
    ours = sit_sde(rng, MIXTURE.model_fn(FLOW), FLOW, (n, 2), num_steps=steps)
    assert int(ours.nfe) == steps
    init_key, loop_key = jax.random.split(rng)
    x = np.asarray(jax.random.normal(init_key, (n, 2)), np.float64)
    keys = jax.random.split(loop_key, steps - 1)
    s_grid = np.linspace(0.0, 1.0 - 0.04, steps)

    def drift(x, s):
        pred = MIXTURE.predict(FLOW, jnp.asarray(x, jnp.float32), jnp.full((n,), 1.0 - s))
        w = 1.0 - s
        return np.asarray(pred.x0 - pred.eps) + w * np.asarray(pred.score), w

    for i, (s, s_next) in enumerate(zip(s_grid[:-1], s_grid[1:])):
        d, w = drift(x, s)
        dw = np.asarray(jax.random.normal(keys[i], (n, 2))) * np.sqrt(s_next - s)
        x = x + d * (s_next - s) + np.sqrt(2 * w) * dw
    x = x + drift(x, s_grid[-1])[0] * 0.04
    np.testing.assert_allclose(np.asarray(ours.samples), x, atol=5e-4)
