"""The device mesh, built from `config.mesh`: axes (data, fsdp, tensor), ICI and DCN sizes.

One ICI size may be -1 (fill with what is left). DCN sizes (`dcn_data`, `dcn_fsdp`, `dcn_tensor`)
multiply across TPU slices; when any is above 1 the mesh is built with
`mesh_utils.create_hybrid_device_mesh`, so that DCN (slow) links carry only the axes asked of them.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over every axis that holds a different slice of the data.
BATCH_AXES = ("data", "fsdp")


class MeshError(ValueError):
    """Mesh sizes that do not fit the devices; the message names the fix."""


def resolve_axis_sizes(sizes: Sequence[int], num_devices: int, what: str) -> tuple[int, ...]:
    """Replaces a single -1 by what fills `num_devices`, and checks the product."""
    sizes = [int(s) for s in sizes]
    if sizes.count(-1) > 1:
        raise MeshError(f"At most one {what} mesh size may be -1, got {sizes}.")
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"{what} mesh sizes must be positive or -1, got {sizes}.")
    if -1 in sizes:
        if num_devices % known:
            raise MeshError(
                f"Cannot fill the {what} mesh: {num_devices} devices are not divisible by "
                f"{known} (sizes {dict(zip(MESH_AXES, sizes))})."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise MeshError(
            f"{what} mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{num_devices} are available; set one of --config.mesh.data/fsdp/tensor to -1."
        )
    return tuple(sizes)


def create_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    dcn = resolve_axis_sizes(
        [mesh_config.dcn_data, mesh_config.dcn_fsdp, mesh_config.dcn_tensor],
        math.prod([mesh_config.dcn_data, mesh_config.dcn_fsdp, mesh_config.dcn_tensor]),
        "DCN",
    )
    num_slices = math.prod(dcn)
    if len(devices) % num_slices:
        raise MeshError(f"{len(devices)} devices cannot form {num_slices} slices (DCN {dcn}).")
    ici = resolve_axis_sizes(
        [mesh_config.data, mesh_config.fsdp, mesh_config.tensor],
        len(devices) // num_slices,
        "ICI",
    )
    if num_slices > 1:
        device_array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    elif devices[0].platform in ("tpu", "gpu", "cuda", "rocm"):
        device_array = mesh_utils.create_device_mesh(ici, devices)
    else:
        # CPU devices have no physical topology to optimise for.
        device_array = np.asarray(devices).reshape(ici)
    return Mesh(device_array, MESH_AXES)


def batch_axis_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)
