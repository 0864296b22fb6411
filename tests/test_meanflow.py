"""MeanFlow against exact answers: for Gaussian data the average velocity
u(z, r, t) = (z_t - z_r) / (t - r) of the probability-flow ODE is closed-form
(`gaussian_mixture.gaussian_flow_map`), for a mixture solved by RK4 on the exact score; the loss
is the official code's (tests/fixtures/meanflow, made by running it); the networks' JVPs
(MeanFlow's and sCM's) equal finite differences."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_mixture import gaussian_flow_map, ode_flow_map, random_mixture, two_d_mixture

from diffjax.diffusion import consistency, meanflow
from diffjax.diffusion.processes import RectifiedFlow, broadcast_to_data
from diffjax.sampling import get_sampler


class AverageVelocityModel:
    """u(z, r, t) from a flow map, the exact instantaneous velocity where r = t."""

    def __init__(self, mixture, process, flow_map, perturbation=None):
        self.mixture, self.process, self.flow_map = mixture, process, flow_map
        self.perturbation = perturbation

    def average_velocity(self, z, t, r):
        pred = self.mixture.predict(self.process, z, t)
        velocity = self.process.probability_flow_velocity(pred.x0, pred.eps, t)
        distinct = jnp.abs(t - r) > 1e-4
        span = jnp.where(distinct, t - r, 1.0)
        average = (z - self.flow_map(z, t, jnp.where(distinct, r, t - 1.0))) / \
            broadcast_to_data(span, z)
        u = jnp.where(broadcast_to_data(distinct, z) > 0, average, velocity)
        return u if self.perturbation is None else u + self.perturbation(z, t, r)


def exact_gaussian_model(mixture, process, c=0.0):
    def flow_map(z, t, r):
        return gaussian_flow_map(mixture, process, z, t, r)
    return AverageVelocityModel(mixture, process, flow_map,
                                lambda z, t, r: c * jnp.tanh(z))


def test_exact_average_velocity_satisfies_the_identity_and_minimises_the_loss():
    process = RectifiedFlow()
    mixture = random_mixture(0, 3, 1, spread=1.0, scale=0.5)
    x0 = mixture.sample(jax.random.key(0), 16000)[0]
    t, r = meanflow.sample_times(jax.random.key(1), 16000, process, ratio=1.0)
    noise = jax.random.normal(jax.random.key(2), x0.shape)
    z = process.perturb(x0, t, noise)
    model = exact_gaussian_model(mixture, process)
    pred = mixture.predict(process, z, t)
    v_exact = process.probability_flow_velocity(pred.x0, pred.eps, t)
    u, du_dt = jax.jit(lambda z, t, r, v: meanflow.average_velocity_and_derivative(
        model, z, t, r, v))(z, t, r, v_exact)
    identity = v_exact - (t - r)[:, None] * du_dt  # the MeanFlow identity's right-hand side
    np.testing.assert_allclose(identity, u, atol=2e-3 * float(jnp.max(jnp.abs(u))))

    v = meanflow.conditional_velocity(process, x0, noise, t)

    @jax.jit
    @jax.grad
    def grad(c):  # the plain (p = 0) loss: its expected gradient vanishes at the exact u
        terms = meanflow.meanflow_loss(exact_gaussian_model(mixture, process, c), z, t, r, v,
                                       norm_p=0.0)
        return jnp.mean(terms.loss)

    at_zero, plus, minus = (float(grad(c)) for c in (0.0, 0.3, -0.3))
    assert abs(at_zero) < 0.1 * abs(plus), (at_zero, plus)  # Monte-Carlo noise only
    assert plus > 0 > minus


@pytest.mark.parametrize("steps", [1, 2])
def test_samples_from_the_exact_average_velocity_reproduce_the_mixture(steps):
    process = RectifiedFlow()
    mixture = two_d_mixture()

    def flow_map(z, t, r):
        return ode_flow_map(mixture, process, z, t[0], r[0], steps=100)

    model = AverageVelocityModel(mixture, process, flow_map)
    sampler = jax.jit(lambda rng: get_sampler("meanflow")(rng, model, process, (4000, 2),
                                                          num_steps=steps))
    result = sampler(jax.random.key(3))
    assert int(result.nfe) == steps
    samples = np.asarray(result.samples)
    exact = np.asarray(mixture.sample(jax.random.key(4), 4000)[0])
    np.testing.assert_allclose(samples.mean(0), exact.mean(0), atol=0.06)
    np.testing.assert_allclose(np.cov(samples.T), np.cov(exact.T), atol=0.08)
    share = np.asarray(mixture.responsibilities(process, samples, 1e-4)).mean(0)
    np.testing.assert_allclose(share, mixture.weights, atol=0.03)


class ToyConditional:
    """A smooth stand-in network, conditional on labels, with hand-computable derivatives."""

    def __init__(self, labels, scale=1.0):
        self.labels, self.scale = labels, scale

    def average_velocity(self, z, t, r):
        shift = 0.0 if self.labels is None else 0.1 * self.labels[:, None]
        return self.scale * jnp.tanh(z * (1 + t - r)[:, None] + t[:, None] ** 2) + shift


def test_loss_is_the_official_codes():
    """Gsunshine/meanflow's forward, written out: (t, r) with 75% r = t, the guided velocity
    omega v + (1 - omega - kappa) u_null + kappa u_cond, the first Binomial(B, 0.1) labels
    dropped to plain v, u_tgt = v_g - clip(t - r, 0, 1) du/dt (finite differences here), the
    squared error summed over pixels and divided by sg(loss + 0.01)^1."""
    process = RectifiedFlow()
    batch, num_classes = 512, 10
    x0 = jax.random.normal(jax.random.key(5), (batch, 6))
    labels = jax.random.randint(jax.random.key(6), (batch,), 0, num_classes)
    options = dict(null_label=num_classes, label_dropout=0.1, ratio=0.25,
                   logit_normal=(-0.4, 1.0), norm_p=1.0, norm_eps=0.01, omega=1.5, kappa=0.3,
                   guidance_interval=(0.1, 0.8))
    terms = meanflow.meanflow_training_loss(
        jax.random.key(7), lambda y, train: ToyConditional(y), process, x0, labels, **options)

    time_rng, noise_rng, drop_rng = jax.random.split(jax.random.key(7), 3)
    t, r = meanflow.sample_times(time_rng, batch, process, ratio=0.25)
    assert float(jnp.mean(t == r)) == 0.75 and bool(jnp.all(r <= t))
    e = jax.random.normal(noise_rng, x0.shape)
    z = (1 - t)[:, None] * x0 + t[:, None] * e
    v = e - x0
    null = jnp.full_like(labels, num_classes)
    inside = ((t >= 0.1) & (t <= 0.8))[:, None]
    u_null = ToyConditional(null).average_velocity(z, t, t)
    u_cond = ToyConditional(labels).average_velocity(z, t, t)
    v_g = jnp.where(inside, 1.5 * v + (1 - 1.5 - 0.3) * u_null + 0.3 * u_cond, v)
    num_drop = jnp.sum(jax.random.uniform(drop_rng, (batch,)) < 0.1)
    dropped = jnp.arange(batch) < num_drop
    y = jnp.where(dropped, num_classes, labels)
    v_g = jnp.where(dropped[:, None], v, v_g)
    model = ToyConditional(y)
    h = 1e-3
    du_dt = (model.average_velocity(z + h * v_g, t + h, r)
             - model.average_velocity(z - h * v_g, t - h, r)) / (2 * h)
    u = model.average_velocity(z, t, r)
    u_tgt = v_g - jnp.clip(t - r, 0, 1)[:, None] * du_dt
    loss = jnp.sum((u - u_tgt) ** 2, axis=1)
    expected = loss / (loss + 0.01)
    np.testing.assert_allclose(terms.loss, expected, rtol=2e-3, atol=1e-5)
    logit = np.log(np.asarray(t) / (1 - np.asarray(t)))
    # t is the larger of two logit-normal(-0.4, 1) draws: E[logit t] = -0.4 + 1 / sqrt(pi).
    assert abs(logit.mean() - (-0.4 + 1 / np.sqrt(np.pi))) < 0.1


FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "meanflow", "reference.npz")
OFFICIAL_CASES = {  # tools/make_meanflow_fixture.py: (omega, kappa, interval, norm_p)
    "plain": (1.0, 0.0, (0.0, 1.0), 1.0),
    "unweighted": (1.0, 0.0, (0.0, 1.0), 0.0),
    "defaults": (1.0, 0.5, (0.0, 1.0), 1.0),
    "omega": (1.5, 0.0, (0.1, 0.8), 1.0),
    "omega_kappa": (1.5, 0.3, (0.1, 0.8), 0.0),
}


class FixtureNet:
    """The fixture's tiny network u(x, t, h = t - r, y), as tools/make_meanflow_fixture.py has it."""

    def __init__(self, params, labels):
        self.params, self.labels = params, labels

    def average_velocity(self, z, t, r):
        p, h = self.params, t - r
        pre = (z.reshape(z.shape[0], -1) @ p["w"] + t[:, None] * p["w_t"] + h[:, None] * p["w_h"]
               + (t * h)[:, None] * p["w_th"] + p["embed"][self.labels] + p["bias"])
        return jnp.tanh(pre).reshape(z.shape)


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_loss_and_gradients_equal_the_official_codes(case):
    """Gsunshine/meanflow's MeanFlow.forward, run unchanged on the fixture's draws: the batch's
    mean loss, the per-example velocity loss and the loss's gradient in every parameter."""
    ref = np.load(FIXTURE)
    params = {k[len("param_"):]: jnp.asarray(ref[k]) for k in ref.files if k.startswith("param_")}
    omega, kappa, interval, norm_p = OFFICIAL_CASES[case]
    num_classes = ref["param_embed"].shape[0] - 1
    normals = jnp.stack([ref["t_normal"].reshape(-1), ref["r_normal"].reshape(-1)])

    def loss(params):
        terms = meanflow.meanflow_loss_from_draws(
            lambda y, train: FixtureNet(params, y), RectifiedFlow(), jnp.asarray(ref["imgs"]),
            jnp.asarray(ref["labels"]), normals, jnp.asarray(ref["noise"]),
            jnp.asarray(ref["drop_uniform"]), null_label=num_classes, label_dropout=0.1,
            ratio=0.25, logit_normal=(-0.4, 1.0), norm_p=norm_p, norm_eps=0.01, omega=omega,
            kappa=kappa, guidance_interval=interval)
        return jnp.mean(terms.loss), terms.velocity_error

    (value, v_loss), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    np.testing.assert_allclose(value, ref[f"{case}_loss"], rtol=2e-6)
    np.testing.assert_allclose(v_loss, ref[f"{case}_v_loss"], rtol=2e-5, atol=1e-6)
    for name, grad in grads.items():
        expected = ref[f"{case}_grad_{name}"]
        scale = np.abs(expected).max()
        assert scale > 0, name
        np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


def test_network_tangents_equal_finite_differences():
    """MeanFlow's du/dt and sCM's cos sin dF/dt from jax.jvp through a tiny DiT with a second
    time input (every parameter random) equal central differences. (A DiT compiles several
    times faster than the U-Net on XLA:CPU; the U-Net's second time input trains in
    tests/test_fewstep_cli.py.)"""
    from tiny_networks import random_network_model

    model = random_network_model("meanflow_dit")
    keys = jax.random.split(jax.random.key(8), 3)
    z = jax.random.normal(keys[0], (4, 8, 8, 1))
    v = jax.random.normal(keys[1], z.shape)
    t = jnp.asarray([0.3, 0.5, 0.8, 0.95])
    r = jnp.asarray([0.0, 0.5, 0.2, 0.6])
    h = 1e-3

    @jax.jit
    def tangents_and_differences(z, v):
        _, du = meanflow.average_velocity_and_derivative(model, z, t, r, v)
        u = model.average_velocity
        du_fd = (u(z + h * v, t + h, r) - u(z - h * v, t - h, r)) / (2 * h)
        angle = consistency.trigflow_angle(model.process, t, 0.5)
        _, cs_dF = consistency.output_and_tangent(model, z, angle, v, 0.5)
        F = lambda x, a: consistency.trigflow_velocity(model, x, a, 0.5) / 0.5  # noqa: E731
        dF_fd = (F(z + h * v, angle + h) - F(z - h * v, angle - h)) / (2 * h)
        cos_sin = (jnp.cos(angle) * jnp.sin(angle))[:, None, None, None]
        return du, du_fd, cs_dF, cos_sin * dF_fd

    du, du_fd, cs_dF, cs_dF_fd = tangents_and_differences(z, v)
    for analytic, numeric in ((du, du_fd), (cs_dF, cs_dF_fd)):
        scale = float(jnp.max(jnp.abs(numeric)))
        assert scale > 1e-3, "the network must depend on its inputs"
        np.testing.assert_allclose(analytic, numeric, atol=1e-2 * scale)
