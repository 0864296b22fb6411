"""Classifier guidance: one affine change of every parameterisation's output, and, with an exact
p(y | x_t) for a mixture whose components are the classes, the sampled class shares it predicts
(s = 0: the mixture's; s = 1: exactly the class-conditional distribution's)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gaussian_mixture import GaussianMixture

from diffjax.diffusion.classifier_guidance import classifier_logits, score_guidance
from diffjax.diffusion.parameterization import (PARAMETERIZATIONS, input_scale, make_score_fn,
                                                noise_conditioning)
from diffjax.diffusion.processes import VPSDE, EDMProcess, RectifiedFlow, TrigFlow
from diffjax.sampling import get_sampler

PROCESSES = [VPSDE(), EDMProcess(), RectifiedFlow(), TrigFlow()]


def smooth_net(x_in, noise_cond, labels):
    return jnp.tanh(1.3 * x_in + 0.2 * noise_cond.reshape(-1, 1))


@pytest.mark.parametrize("name", sorted(PARAMETERIZATIONS))
def test_guidance_is_one_affine_change_of_the_output(name):
    """score + g, and the guided output is the parameterisation's own output for the guided
    (x0, eps), which still satisfy x = alpha x0 + sigma eps."""
    param = PARAMETERIZATIONS[name]
    x = jax.random.normal(jax.random.key(0), (6, 3))
    g = jax.random.normal(jax.random.key(1), (6, 3))
    for process in PROCESSES:
        t = jnp.linspace(0.2, 0.8, 6) * process.T
        plain = make_score_fn(process, smooth_net, parameterization=name)
        guided = make_score_fn(process, smooth_net, parameterization=name,
                               score_guidance=lambda x, t: g)
        a, b = plain.predict(x, t), guided.predict(x, t)
        c = guided.coefficients(x, t)
        np.testing.assert_allclose(b.score, a.score + g, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(c.alpha * b.x0 + c.sigma * b.eps, x, rtol=1e-3, atol=2e-3)
        x0, eps = param.predict(b.output, x, c)
        np.testing.assert_allclose(x0, b.x0, rtol=1e-3, atol=1e-4, err_msg=process.name)
        np.testing.assert_allclose(eps, b.eps, rtol=1e-3, atol=1e-4, err_msg=process.name)


def overlapping_classes() -> GaussianMixture:
    return GaussianMixture(weights=np.array([0.4, 0.6]),
                           means=np.array([[-0.6, 0.0], [0.6, 0.2]]),
                           covs=np.array([[[0.3, 0.05], [0.05, 0.2]],
                                          [[0.25, -0.05], [-0.05, 0.3]]]))


def exact_models(mixture, process, labels, scale):
    """The exact diffusion model (as an eps "network") and the exact classifier: the
    posterior responsibilities of the components, as logits of (x_in, noise_cond)."""
    def net(x_in, noise_cond, labels_):
        t = noise_cond / 999.0
        return mixture.predict(process, x_in, t).eps

    def classifier(x_in, noise_cond):
        t = noise_cond / 999.0
        x = x_in / input_scale(process, t, 0.5)[:, None]
        return jnp.log(mixture.responsibilities(process, x, t))

    guidance = score_guidance(classifier, process, labels, scale)
    return make_score_fn(process, net, parameterization="eps", score_guidance=guidance)


def test_exact_classifier_guidance_shifts_the_class_shares_as_predicted():
    process = VPSDE()
    mixture = overlapping_classes()
    n = 4000
    labels = jnp.zeros((n,), jnp.int32)  # ask for class 0 (weight 0.4)
    classify = lambda x: np.argmax(np.asarray(  # noqa: E731
        mixture.responsibilities(process, jnp.asarray(x), 1e-3)), -1)
    draws, components = mixture.sample(jax.random.key(2), 40000)
    unconditional_share = np.mean(classify(draws) == 0)
    conditional_share = np.mean(classify(draws[np.asarray(components) == 0]) == 0)

    @jax.jit
    def sample(scale):  # one compilation for every scale (0 adds a zero gradient)
        model = exact_models(mixture, process, labels, scale)
        return get_sampler("dpm_solver")(jax.random.key(3), model, process, (n, 2),
                                         num_steps=25, denoise=False).samples

    shares = {s: float(np.mean(classify(sample(s)) == 0)) for s in (0.0, 1.0, 2.0)}
    assert abs(shares[0.0] - unconditional_share) < 0.03, (shares, unconditional_share)
    assert abs(shares[1.0] - conditional_share) < 0.03, (shares, conditional_share)
    assert shares[2.0] > shares[1.0] + 0.02 > shares[0.0] + 0.2
    # The classifier itself: p(y | x_t) of the exact classifier is the posterior.
    x = draws[:8]
    t = jnp.full((8,), 0.5)
    logits = classifier_logits(lambda x_in, c: jnp.log(mixture.responsibilities(
        process, x_in / input_scale(process, c / 999.0, 0.5)[:, None], c / 999.0)),
        process, x, t)
    np.testing.assert_allclose(jax.nn.softmax(logits), mixture.responsibilities(process, x, t),
                               rtol=1e-4)
    assert float(noise_conditioning(process, t)[0]) == pytest.approx(499.5)
