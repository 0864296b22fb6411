"""Sampling a ControlNet run (`model.controlnet`): every image follows a conditioning image.

`make_controlnet_generate_fn` is `make_generate_fn` with one more input: `generate(params, rng,
labels, cond)`, cond [batch, H, W, C] in [0, 1] (what `diffjax.data.conditions` computes), so
`draw_batch(..., extra_inputs=(cond,))` drives it like inpainting. `split_conditions` takes the
conditioning of the first images of a split, the inputs of grids, `--mode=sample` and the
measurements; `condition_errors` scores samples against them.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import data as data_lib, sampling
from diffjax.data.conditions import condition_error, from_uint8, get_condition
from diffjax.experiment import score_fn_for
from diffjax.parallel.sharding import batch_sharding, replicated
from diffjax.sampling.generate import _on_devices, _padded_size, image_shape


def make_controlnet_generate_fn(config, model, sde, mesh, batch_size: int,
                                sampling_config=None) -> Callable:
    """`generate(params, rng, labels, cond) -> (samples, nfe)` for a ControlNet network."""
    sampling_config = sampling_config or config.sampling
    padded = _padded_size(mesh, batch_size)
    shape = image_shape(config, padded)

    def generate(params, rng, labels, cond):
        score_fn = score_fn_for(config, model, sde, params,
                                labels={"labels": labels, "cond": cond})
        result = sampling.sample(sampling_config, rng, score_fn, sde, shape)
        return jax.lax.with_sharding_constraint(result.samples, batch_sharding(mesh)), result.nfe

    jitted = jax.jit(generate, out_shardings=(batch_sharding(mesh), replicated(mesh)))

    def generate_any_size(params, rng, labels, cond):
        samples, nfe = jitted(params, rng, _on_devices(mesh, labels, padded),
                              _on_devices(mesh, jnp.asarray(cond, jnp.float32), padded))
        return samples[:batch_size], nfe

    return generate_any_size


def split_conditions(config, count: int, split: str | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(conditioning images float32 [count, H, W, C] in [0, 1], the uint8 originals, labels) of
    the first `count` images of `split` (default data.eval_split), repeated if it is smaller."""
    split = split or config.data.eval_split
    images, labels, total = [], [], 0
    for batch in data_lib.iterate_split(config.data, split, count):
        images.append(batch["image"])
        labels.append(batch["label"])
        total += len(batch["image"])
        if total >= count:
            break
    originals = np.resize(np.concatenate(images), (count, *images[0].shape[1:]))
    labels = np.resize(np.concatenate(labels), (count,)).astype(np.int32)
    cond = get_condition(config.model.controlnet)(from_uint8(originals))
    return np.asarray(cond, np.float32), originals.astype(np.uint8), labels


def condition_errors(config, cond: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Per-image MSE between each conditioning image and the same transform of the uint8
    sample drawn for it."""
    return np.asarray(condition_error(config.model.controlnet, jnp.asarray(cond),
                                      from_uint8(pixels)))

