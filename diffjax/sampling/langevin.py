"""The Langevin corrector of score_sde's predictor-corrector sampler (Song et al., 2021, Alg. 4/5).

At a fixed time t, a few steps of unadjusted Langevin dynamics targeting p_t,
    x <- x + step * score(x, t) + sqrt(2 step) z,
    step = 2 alpha (snr ||z|| / ||score||)^2,
pull the predictor's output back towards the marginal it is supposed to follow. The step size is
set so that the ratio of the noise to the drift, the "signal-to-noise ratio", is `snr`
(0.16 for CIFAR-10 in score_sde).

`alpha`: score_sde uses alpha = 1 for VE and alpha_i = 1 - beta_i of the DDPM discretisation for VP,
and had no value for sub-VP (its corrector crashed there). All three come out of one formula: the
forward transition over a grid step, x_t | x_s ~ N(a x_s, v I), has a = alpha(t) / alpha(s), and
alpha_langevin = a^2. For VP, a^2 = 1 - v = 1 - beta_i exactly; for VE a = 1; for sub-VP, whose
drift is VP's, a^2 is the same factor as for VP, which is what "1 - beta_i" means for a drift
exp(-int beta / 2) per step.

Norms: as in score_sde, ||z|| and ||score|| are per-example norms averaged over the batch. The
batch mean is a plug-in estimate of E||score||, which is what the snr rule is about; a per-example
ratio would be cleaner in principle (a sample would not depend on its batch-mates), but in low
dimension ||score|| of a single example is often near zero (at a mode), which gives a huge step
and diverges. The mean is one scalar all-reduce per step under batch sharding, never a gather.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax.diffusion.parameterization import ScoreFn
from diffjax.diffusion.processes import LinearProcess as LinearSDE
from diffjax.sampling.result import batch_time

Array = jax.Array
# constrain(x, t, rng) -> x: re-imposes known values (inpainting) after every update.
Constraint = Callable[[Array, Array, Array], Array]


def per_example_norm(x: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=-1))


def langevin_step_size(score: Array, noise: Array, alpha: Array, snr: float) -> Array:
    """The scalar step 2 alpha (snr mean||z|| / mean||score||)^2, means over the batch."""
    # A zero score (all examples exactly at a mode) would give an infinite step; the floor keeps
    # the update finite, and any step there is harmless because the drift term vanishes.
    score_norm = jnp.maximum(jnp.mean(per_example_norm(score)), 1e-20)
    ratio = snr * jnp.mean(per_example_norm(noise)) / score_norm
    return 2.0 * alpha * ratio**2


def langevin_correct(
    rng: Array,
    score_fn: ScoreFn,
    sde: LinearSDE,
    x: Array,
    t: Array,
    alpha: Array,
    *,
    snr: float,
    num_steps: int,
    constrain: Constraint | None = None,
) -> Array:
    """`num_steps` Langevin updates of x at time t (scalar), num_steps network evaluations."""
    del sde  # the target p_t is fully described by score_fn(., t)
    t_batch = batch_time(t, x)

    def body(j, x):
        key = jax.random.fold_in(rng, j)
        noise_key, constrain_key = jax.random.split(key)
        score = score_fn(x, t_batch)
        noise = jax.random.normal(noise_key, x.shape, x.dtype)
        step = langevin_step_size(score, noise, alpha, snr)
        x = x + step * score + jnp.sqrt(2.0 * step) * noise
        if constrain is not None:
            x = constrain(x, t, constrain_key)
        return x

    return jax.lax.fori_loop(0, num_steps, body, x)
