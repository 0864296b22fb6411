"""The jitted sampling function shared by training (grids), `--mode=sample` and evaluation.

`make_generate_fn` returns `generate(params, rng, labels) -> (samples, nfe)`; the batch of noise
is created sharded over the data axes of the mesh, so the whole sampler runs data-parallel and
never gathers to one device until the caller asks for the images.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from diffjax import sampling
from diffjax.parallel.sharding import batch_sharding, replicated
from diffjax.sde import LinearSDE
from diffjax.training.step import score_fn_for


def image_shape(config, batch_size: int) -> tuple[int, int, int, int]:
    d = config.data
    return (batch_size, d.image_size, d.image_size, d.num_channels)


def make_generate_fn(config, model, sde: LinearSDE, mesh: Mesh, batch_size: int,
                     sampling_config=None) -> Callable:
    """`generate(params, rng, labels)`; labels is an int32 [batch_size] array or None."""
    sampling_config = sampling_config or config.sampling
    shape = image_shape(config, batch_size)
    guidance = float(sampling_config.guidance_scale) if config.model.conditional else 0.0

    def generate(params, rng, labels):
        score_fn = score_fn_for(config, model, sde, params, labels=labels,
                                guidance_scale=guidance)
        result = sampling.sample(sampling_config, rng, score_fn, sde, shape)
        samples = jax.lax.with_sharding_constraint(result.samples, batch_sharding(mesh))
        return samples, result.nfe

    return jax.jit(generate, out_shardings=(batch_sharding(mesh), replicated(mesh)))


def sample_labels(config, rng: jax.Array, batch_size: int) -> jax.Array | None:
    """Uniformly random class labels for conditional models, None otherwise."""
    if not config.model.conditional:
        return None
    return jax.random.randint(rng, (batch_size,), 0, config.data.num_classes, jnp.int32)
