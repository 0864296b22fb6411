"""Classifier guidance (Dhariwal & Nichol, 2021; score_sde's controllable generation): a
noise-conditional classifier p(y | x_t), its training loss, and the guidance term
s * grad_x log p(y | x_t) that `parameterization.ModelFn` adds to the score of every prediction.

A classifier here is `classifier(x_in, noise_cond) -> logits [B, K]`, bound to a process exactly
as a diffusion network is: it is conditioned on the process's `noise_conditioning(t)` and fed
x scaled to unit variance, x / sqrt(alpha^2 sigma_data^2 + sigma^2) (EDM's c_in; every process,
so VE's sigma = 50 inputs stay O(1)). Because guidance changes the score additively, and every
parameterisation's output is affine in the score at fixed (x, t), adding the term to the score is
one affine change of the network output (`parameterization.guide_prediction`): it works for eps,
score, x0, v, velocity, EDM and TrigFlow outputs, for every sampler, and composes with
classifier-free guidance (which acts on the raw output first).

Cost: one classifier forward and backward per network evaluation, inside the sampler's compiled
program; examples stay independent (the gradient of a sum of per-example log-probabilities), so
a batch-sharded sampler stays sharded. NFE counts diffusion-network calls only.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.losses import sample_times
from diffjax.diffusion.parameterization import input_scale, noise_conditioning
from diffjax.diffusion.processes import LinearProcess, broadcast_to_data

Array = jax.Array
# classifier(x_in, noise_cond) -> logits [B, K]
ClassifierFn = Callable[[Array, Array], Array]


def classifier_logits(classifier: ClassifierFn, process: LinearProcess, x: Array, t: Array,
                      sigma_data: float | None = 0.5) -> Array:
    """Logits of p(y | x_t) for x at the per-example times t; the input scaled to unit variance
    (EDM's c_in with sigma_data), or x_t itself with sigma_data None (ADM's classifiers)."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
    x_in = x if sigma_data is None else x * broadcast_to_data(
        input_scale(process, t, sigma_data), x)
    return classifier(x_in, noise_conditioning(process, t)).astype(jnp.float32)


def classifier_loss(rng: Array, classifier: ClassifierFn, process: LinearProcess, x0: Array,
                    labels: Array, *, sigma_data: float | None = 0.5, eps: float = 1e-5,
                    time_sampling: str | None = None, **time_options) -> tuple[Array, Array]:
    """(cross-entropy [B], correct [B]) of the classifier on x_t, t drawn as the diffusion
    loss draws it (`losses.sample_times`: the process's own distribution by default)."""
    t_rng, z_rng = jax.random.split(rng)
    t = sample_times(t_rng, x0.shape[0], process, eps, time_sampling=time_sampling,
                     **time_options)
    x_t = process.perturb(x0, t, jax.random.normal(z_rng, x0.shape, x0.dtype))
    logits = classifier_logits(classifier, process, x_t, t, sigma_data)
    log_probs = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return nll, (jnp.argmax(logits, -1) == labels).astype(jnp.float32)


def score_guidance(classifier: ClassifierFn, process: LinearProcess, labels: Array,
                   scale: float, sigma_data: float | None = 0.5) -> Callable[[Array, Array], Array]:
    """(x, t) -> scale * grad_x log p(labels | x_t): the term added to the score."""

    def log_prob(x, t):
        log_probs = jax.nn.log_softmax(classifier_logits(classifier, process, x, t, sigma_data))
        return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))

    def guidance(x, t):
        return scale * jax.grad(log_prob)(x, t).astype(x.dtype)

    return guidance
