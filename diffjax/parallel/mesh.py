"""The device mesh, built from `config.mesh`: axes (data, fsdp, tensor), ICI and DCN sizes.

One ICI size may be -1 (fill with what is left). DCN sizes (`dcn_data`, `dcn_fsdp`, `dcn_tensor`)
multiply across TPU slices (across processes on GPU/CPU); when any is above 1 the mesh is built with
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
    dcn = tuple(int(getattr(mesh_config, f"dcn_{axis}")) for axis in MESH_AXES)
    if any(s < 1 for s in dcn):
        # -1 is for ICI sizes only: the number of slices is never inferred.
        raise MeshError(
            f"DCN mesh sizes must be positive, got {dict(zip(MESH_AXES, dcn))}; set "
            f"--config.mesh.dcn_data/dcn_fsdp/dcn_tensor to the number of slices along each axis "
            f"(1 = not split across slices)."
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
        device_array = _hybrid_device_array(ici, dcn, devices)
    elif devices[0].platform in ("tpu", "gpu", "cuda", "rocm"):
        device_array = mesh_utils.create_device_mesh(ici, devices)
    else:
        # CPU devices have no physical topology to optimise for.
        device_array = np.asarray(devices).reshape(ici)
    return Mesh(device_array, MESH_AXES)


def _hybrid_device_array(ici: tuple[int, ...], dcn: tuple[int, ...],
                         devices: Sequence[jax.Device]) -> np.ndarray:
    """ICI axes within each DCN unit, DCN axes across units.

    A unit is a TPU slice (`slice_index`); elsewhere (GPU nodes, CPU processes) it is a process,
    so a GPU cluster runs one process per node to put DCN axes between nodes. (Multi-process CPU
    devices carry a `slice_index` too, but it is 0 in every process.)
    """
    by_slice = devices[0].platform == "tpu"
    units = len({d.slice_index if by_slice else d.process_index for d in devices})
    if units != math.prod(dcn):
        kind = "TPU slices" if by_slice else "processes"
        raise MeshError(
            f"DCN mesh {dict(zip(MESH_AXES, dcn))} needs {math.prod(dcn)} {kind}, but the "
            f"{len(devices)} devices span {units}; set --config.mesh.dcn_data/dcn_fsdp/"
            f"dcn_tensor so that their product is {units} (all 1 on a single slice or host)."
        )
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=not by_slice)


def batch_axis_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)
