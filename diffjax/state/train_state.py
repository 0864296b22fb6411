"""The training state, and its creation directly in its sharded layout.

The state holds what cannot be recomputed: step, parameters, their EMA, optimizer moments, and
the first step whose loss was not finite. The RNG is not stored: every random draw of step s
derives from fold_in(key(seed), s), so restoring the step restores the RNG.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from diffjax.parallel.sharding import Rules, tree_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    first_nonfinite_step: jax.Array  # -1 while every loss has been finite


class ShardedStateSpec(NamedTuple):
    """Abstract shapes and shardings of the state: what restore and jit need."""

    abstract: TrainState
    shardings: TrainState


def _boxed_state(model: nn.Module, optimizer: optax.GradientTransformation, rng: jax.Array,
                 example_input: tuple, trainable: Callable | None = None) -> TrainState:
    variables = model.init({"params": rng, "dropout": rng}, *example_input, train=False)
    params = variables["params"]
    if trainable is not None:  # a frozen base (LoRA, ControlNet): only this part trains
        params = trainable(params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=params,
        opt_state=optimizer.init(params),
        first_nonfinite_step=jnp.full((), -1, jnp.int32),
    )


def state_spec(model, optimizer, example_input: tuple, mesh: Mesh, rules: Rules,
               trainable: Callable | None = None) -> ShardedStateSpec:
    """Shapes and shardings of the state, from the logical axis names of the parameters.
    `trainable(params)` selects the part that trains (default: all of them)."""
    boxed = jax.eval_shape(lambda r: _boxed_state(model, optimizer, r, example_input, trainable),
                           jax.random.key(0))
    abstract = nn.unbox(boxed)
    shardings = tree_shardings(nn.get_partition_spec(boxed), abstract, mesh, rules)
    abstract = jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract, shardings)
    return ShardedStateSpec(abstract, shardings)


def create_state(model, optimizer, example_input: tuple, seed: int, spec: ShardedStateSpec,
                 trainable: Callable | None = None) -> TrainState:
    """Initialises the state already laid out on the mesh: no device ever holds all of it."""
    init = jax.jit(
        lambda r: nn.unbox(_boxed_state(model, optimizer, r, example_input, trainable)),
        out_shardings=spec.shardings,
    )
    return init(jax.random.fold_in(jax.random.key(seed), 0x1A17))


def count_params(params: Any) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(params))


def state_bytes(abstract_state: Any) -> int:
    """Bytes of the whole (global) state: about what one checkpoint takes on disk."""
    return int(sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree.leaves(abstract_state)))
