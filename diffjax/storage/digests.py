"""Digests of a checkpoint's arrays, computed on the devices, so that damaged bytes cannot restore.

Orbax stores arrays as zstd frames without a content checksum: bytes overwritten inside an array
file often fail to decode (a read error, handled as damage), but just as often decode into other
numbers, NaN among them, without any error. So every save records two 32-bit sums per array,
beside the state in the same atomic Orbax save, and every restore recomputes them on the restored
arrays and compares.

The sums, for an array whose bits read as uint32 words u_i (2- and 1-byte types widened, 8-byte
types split in two) at row-major positions i, with w_i = u_i XOR (u_i >> 16):

    a = sum_i w_i (2 i + 1)     mod 2^32
    b = sum_i w_i (2 i + 1)^2   mod 2^32

Wrap-around addition is associative and commutative, so the sums do not depend on the sharding,
on the number of devices or processes, or on XLA's reduction order. They are computed inside
`jax.jit` on the global arrays (each device sums its shard, then one all-reduce of 8 bytes per
array): no file is read back and no array is gathered on a host, so the check works the same on
gs:// and across hosts. The weights are odd, so changing any one word changes both sums; they
depend on the position, so swapped blocks are caught too; a random change of several words goes
unnoticed with a probability of about 2^-64. Changes built to cancel (a linear check has them,
e.g. one high bit flipped in two words at particular pairs of positions) can go unnoticed: this
is an integrity check against damage, not a cryptographic hash against tampering.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FORMAT = "diffjax-array-sums-1"


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words (same shape; an 8-byte type gains a last axis of 2)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}.get(x.dtype.itemsize)
    if unsigned is None or jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"no digest for arrays of {x.dtype}")
    return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _positions(shape: tuple[int, ...]) -> jax.Array:
    """Row-major position of every element, mod 2^32 (one iota per axis; XLA fuses them)."""
    position = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        position = position + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(
            stride % 2**32)
        stride *= shape[axis]
    return position


def array_sums(x: jax.Array) -> jax.Array:
    """uint32[2]: the two position-weighted sums of `x`'s bits (traceable)."""
    words = _words(x)
    # High bits folded into low ones: without it, flipping bit 31 of any two words would change
    # both sums by multiples of 2^32 (the sign bits of two floats, say).
    words = words ^ (words >> np.uint32(16))
    weight = _positions(words.shape) * np.uint32(2) + np.uint32(1)
    weighted = words * weight
    return jnp.stack([jnp.sum(weighted, dtype=jnp.uint32),
                      jnp.sum(weighted * weight, dtype=jnp.uint32)])


# One small program per distinct shape, dtype and sharding (a network has few: its blocks
# repeat), compiled once and kept in the persistent compilation cache; one program for the
# whole state would compile hundreds of fusions at once (a minute for a 500-leaf state here).
_array_sums = jax.jit(array_sums)


def leaf_digests(tree: Any) -> list[str]:
    """One digest string per leaf of `tree`, in `jax.tree.leaves` order (every process)."""
    # One at a time: several multi-device programs with collectives in flight at once can
    # deadlock XLA:CPU's in-process all-reduce (its rendezvous threads starve each other).
    # Each result is a replicated uint32 pair: every process reads its own copy.
    sums = [np.asarray(_array_sums(x)) for x in jax.tree.leaves(tree)]
    return [f"{int(a):08x}{int(b):08x}" for a, b in sums]


def record(names: list[str], tree: Any) -> dict:
    """The JSON record saved with a checkpoint: dtype and digest per named leaf."""
    leaves = jax.tree.leaves(tree)
    return {"format": FORMAT,
            "leaves": {name: {"dtype": str(leaf.dtype), "digest": digest}
                       for name, leaf, digest in zip(names, leaves, leaf_digests(tree))}}


def differences(names: list[str], tree: Any, recorded: dict) -> tuple[list[str], list[str]]:
    """(leaves whose digest differs from `recorded`, leaves that could not be checked).

    A leaf restored as another dtype than it was saved (a restore target that casts) cannot be
    compared bit for bit, nor can a record of another format (another diffjax version): those
    are reported as unchecked, not as damaged.
    """
    if not isinstance(recorded, dict):
        raise ValueError(f"the digest record is a {type(recorded).__name__}, not a dict")
    if recorded.get("format") != FORMAT:
        return [], list(names)
    saved = recorded["leaves"]
    leaves = jax.tree.leaves(tree)
    comparable = [(n, x) for n, x in zip(names, leaves)
                  if n in saved and saved[n]["dtype"] == str(x.dtype)]
    unchecked = [n for n in names if n not in dict(comparable)]
    digests = leaf_digests([x for _, x in comparable])
    differing = [n for (n, _), d in zip(comparable, digests) if saved[n]["digest"] != d]
    return differing, unchecked

