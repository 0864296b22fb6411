"""From logical axis names on parameters and activations to NamedShardings on a mesh.

Networks annotate every parameter with logical names ('embed', 'mlp', 'heads', 'conv_out', ...);
`config.mesh.rules` maps those names to mesh axes. A dimension whose size the mesh axes do not
divide is left replicated rather than failing, so one rule set serves every model size.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffjax.parallel.mesh import BATCH_AXES

Rules = Sequence[tuple[str, Any]]

# FSDP shards the "wide" dimension of each weight (mesh_spec_for picks one where no rule does);
# tensor parallelism splits heads and MLP width.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("conv_in", None),
    ("patch", None),
    ("classes", None),
    ("cond", None),
    ("norm", None),
    ("length", None),
)


def rules_from_config(mesh_config) -> tuple[tuple[str, Any], ...]:
    return tuple((str(name), axes) for name, axes in mesh_config.rules)


def _mesh_axes_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[a] for a in axes)


def mesh_spec_for(logical: PartitionSpec | None, shape: Sequence[int], mesh: Mesh,
                  rules: Rules) -> PartitionSpec:
    """The mesh PartitionSpec of one array, replicating dimensions the mesh axes do not divide.

    FSDP must cut every weight, also those whose logical names have no fsdp rule (the noise
    embedding's MLP, biases): such an array is split along its largest dimension that fsdp divides
    and no other mesh axis splits, so per-device state memory falls as 1/fsdp.
    """
    if logical is None or len(logical) == 0:
        return PartitionSpec()
    mesh_axes = nn.logical_to_mesh_axes(tuple(logical), rules)
    fitted = []
    for dim, axes in zip(shape, mesh_axes):
        size = _mesh_axes_size(mesh, axes)
        fitted.append(axes if size > 1 and dim % size == 0 else None)
    used = {a for axes in fitted if axes for a in ((axes,) if isinstance(axes, str) else axes)}
    fsdp = mesh.shape.get("fsdp", 1)
    free = [i for i, dim in enumerate(shape) if fitted[i] is None and dim % fsdp == 0]
    if fsdp > 1 and "fsdp" not in used and free:
        fitted[max(free, key=lambda i: shape[i])] = "fsdp"
    return PartitionSpec(*fitted)


def tree_shardings(logical_specs: Any, abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a pytree given its logical PartitionSpecs (from nn.get_partition_spec)."""

    def one(spec, leaf):
        return NamedSharding(mesh, mesh_spec_for(spec, getattr(leaf, "shape", ()), mesh, rules))

    return jax.tree.map(one, logical_specs, abstract_tree,
                        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def per_device_bytes(tree: Any) -> int:
    """Bytes of `tree` held by the first device: the memory FSDP is meant to cut."""
    first = jax.devices()[0]
    total = 0
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            if shard.device == first:
                total += shard.data.size * shard.data.dtype.itemsize
    return total
