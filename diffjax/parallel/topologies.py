"""TPU slices by the names Cloud TPU gives them, as abstract devices for compiling on any host.

`compile_target("v5p-256")` resolves a slice name to the arguments of
`jax.experimental.topologies.get_topology_desc` and returns its compile-only devices (through
libtpu; no TPU is needed) with the chip's facts, so `--mode=compile` can build the real mesh and
compile the real train step for a pod on a laptop, as MaxText's `train_compile.py` does.

Names, as the TPU documentation spells them:
    v4-N, v5p-N        N TensorCores, N/2 chips (megacore: one JAX device per chip), 3-D torus:
                       v5p-8 = 2x2x1, v5p-16 = 2x2x2, v5p-32 = 2x2x4, v5p-64 = 2x4x4, ...
    v5e-N, v5litepod-N, v6e-N
                       N chips, one device each, 2-D: v5e-4 = 2x2, v5e-8 = 2x4, v5e-16 = 4x4, ...
    v5p:4x4x12, v6e:8x16 ...  any other shape, written as JAX's own topology name
    cpu                this host's CPU devices (no libtpu needed; memory from the host's RAM)
Power-of-two chip counts take the shapes of MaxText's table (`accelerator_to_spec_map.py`);
others must be written as shapes. Every host holds 2x2x1 chips, as in MaxText (a real v6e-8 is
one host of 8 chips: only the process indices of the abstract devices differ, not the program).

Chip facts: peak dense bf16 FLOP/s from the Cloud TPU pages; `usable_hbm_gib` is the HBM XLA
itself reports as available when a compile runs out of memory (libtpu 0.0.42.1), which is less
than the nominal size.
Imports: nothing of diffjax (libtpu only when a TPU slice is asked for).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
from typing import Any, Sequence

import jax


class TopologyError(ValueError):
    """A slice name that does not parse, or TPU compilation that is not installed."""


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str  # "v4", "v5p", "v5e", "v6e", "cpu"
    jax_prefix: str  # the prefix of JAX's topology name ("v5p:2x2x1")
    peak_bf16_flops: float | None  # per chip, dense
    hbm_gib: float | None  # nominal HBM per chip
    usable_hbm_gib: float | None  # what XLA reports as available per chip
    dims: int  # 3-D torus (v4, v5p) or 2-D (v5e, v6e)
    cores_per_chip_in_name: int  # v5p-8 counts TensorCores: 4 chips
    chip_config: str  # "megacore" (one device per chip, both cores) or "default"
    hbm_bytes_per_second: float | None = None  # per chip, for a roofline bound


# HBM bandwidth: the Cloud TPU system-architecture pages (1200, 2765, 819, 1640 GB/s).
CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "v4", 275e12, 32.0, 30.75, 3, 2, "megacore", 1200e9),
    "v5p": Chip("v5p", "v5p", 459e12, 95.0, 95.74, 3, 2, "megacore", 2765e9),
    "v5e": Chip("v5e", "v5e", 197e12, 16.0, 15.75, 2, 1, "default", 819e9),
    "v6e": Chip("v6e", "v6e", 918e12, 32.0, 31.25, 2, 1, "default", 1640e9),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v5": "v5p", "v6": "v6e"}
CPU = Chip("cpu", "cpu", None, None, None, 1, 1, "default")
HOST_BOUNDS = (2, 2, 1)  # chips per host (MaxText's value for every generation)
LIBTPU_INSTALL = 'pip install "libtpu==0.0.42.*"  (or: make libtpu)'


@dataclasses.dataclass
class CompileTarget:
    """What `--mode=compile` compiles for: abstract devices and the chip they stand for."""

    name: str  # the name as given ("v5p-8")
    chip: Chip
    shape: tuple[int, ...]  # chips per slice along each torus axis ((n,) for cpu)
    num_slices: int
    devices: list[Any]

    @property
    def num_chips(self) -> int:
        return len(self.devices)

    @property
    def num_hosts(self) -> int:
        return len({d.process_index for d in self.devices})

    @property
    def jax_topology(self) -> str:
        return f"{self.chip.jax_prefix}:{'x'.join(map(str, self.shape))}"

    def describe(self) -> str:
        if self.chip is CPU:
            return f"{self.num_chips} CPU device(s) of this host"
        slices = f" x {self.num_slices} slices (DCN)" if self.num_slices > 1 else ""
        return (f"{self.name}: {self.jax_topology}{slices}, {self.num_chips} chips "
                f"({self.devices[0].device_kind}), {self.num_hosts} host(s)")


def _grow(shape: list[int]) -> list[int]:
    """The next power-of-two slice shape: double the last of the smallest axes (3-D: 2x2x2 ->
    2x2x4 -> 2x4x4 -> 4x4x4 -> 4x4x8) or, in 2-D, the last axis when both are equal (2x2 -> 2x4
    -> 4x4 -> 4x8), as Cloud TPU's slice shapes grow."""
    smallest = min(shape)
    index = max(i for i, s in enumerate(shape) if s == smallest)
    shape = list(shape)
    shape[index] *= 2
    return shape


def slice_shape(chip: Chip, chips: int, name: str) -> tuple[int, ...]:
    """The torus shape of a slice of `chips` chips (power-of-two counts; see the module doc)."""
    if chip.dims == 3:
        shape = [2, 2, 1]
        if chips < 4:
            raise TopologyError(f"{name}: the smallest {chip.generation} slice is "
                                f"{chip.generation}-8 (4 chips).")
        if chips > 4:
            shape = [2, 2, 2]
    else:
        shape = [1, 1] if chips == 1 else [2, 2]
    while math.prod(shape) < chips:
        shape = _grow(shape)
    if math.prod(shape) != chips:
        example = f"{chip.generation}:{'x'.join(['4'] * chip.dims)}"
        raise TopologyError(f"{name}: {chips} chips is not a power-of-two slice; write its "
                            f"shape instead, e.g. --config.compile.topology={example}.")
    return tuple(shape)


def parse(name: str) -> tuple[Chip, tuple[int, ...]]:
    """(chip, slice shape) of a slice name such as "v5p-256", "v5litepod-16" or "v6e:8x16"."""
    text = name.strip().lower()
    shaped = re.fullmatch(r"(v[0-9a-z]+):(\d+(?:x\d+)+)", text)
    counted = re.fullmatch(r"(v[0-9a-z]+)-(\d+)", text)
    match = shaped or counted
    generation = match and ALIASES.get(match.group(1), match.group(1))
    if not match or generation not in CHIPS:
        raise TopologyError(
            f"Unknown TPU topology {name!r}; use a slice name such as v4-8, v5p-256, v5e-16 "
            f"(v5litepod-16), v6e-8, a shape such as v5p:4x4x12, or cpu.")
    chip = CHIPS[generation]
    if shaped:
        shape = tuple(int(s) for s in match.group(2).split("x"))
        if len(shape) != chip.dims or min(shape) < 1:
            raise TopologyError(f"{name}: a {chip.generation} slice has {chip.dims} axes, e.g. "
                                f"{chip.generation}:{'x'.join(['2'] * chip.dims)}.")
        return chip, shape
    count = int(match.group(2))
    if count % chip.cores_per_chip_in_name:
        raise TopologyError(f"{name}: {chip.generation}-N counts TensorCores, two per chip; "
                            f"N must be even.")
    return chip, slice_shape(chip, count // chip.cores_per_chip_in_name, name)


def libtpu_available() -> bool:
    """Whether the libtpu wheel is installed (found without loading it)."""
    return importlib.util.find_spec("libtpu") is not None


def accelerator_type(chip: Chip, chips: int) -> str:
    """Cloud TPU's name of a slice of `chips` chips: v5p-8, v5litepod-16, v6e-8, v4-8."""
    prefix = "v5litepod" if chip.generation == "v5e" else chip.generation
    return f"{prefix}-{chips * chip.cores_per_chip_in_name}"


def _quiet_libtpu_on_this_host(chip: Chip, chips: int) -> None:
    """libtpu, loaded only to compile, on a host with no TPU: it would look for worker hostnames
    and an accelerator type (six lines of warnings) and take its one-process lock file (so two
    compiles on one host would fail); none of that concerns a compile-only client, whose
    topology comes from get_topology_desc alone (checked: these do not change it)."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type(chip, chips))


def compile_target(name: str, num_slices: int = 1) -> CompileTarget:
    """Abstract devices of `num_slices` slices of `name` ("cpu": this host's devices)."""
    if num_slices < 1:
        raise TopologyError(f"compile.num_slices={num_slices} must be >= 1.")
    if name.strip().lower() == "cpu":
        if num_slices != 1:
            raise TopologyError("compile.num_slices > 1 needs a TPU topology, not cpu.")
        devices = jax.devices("cpu")
        return CompileTarget("cpu", CPU, (len(devices),), 1, devices)
    chip, shape = parse(name)
    if not libtpu_available():
        raise TopologyError(f"Compiling for {name} needs libtpu (TPU compiler, no TPU needed): "
                            f"{LIBTPU_INSTALL}.")
    from jax.experimental import topologies

    _quiet_libtpu_on_this_host(chip, math.prod(shape))
    bounds = tuple(min(b, s) for b, s in zip(HOST_BOUNDS, (*shape, 1, 1)))
    topology = f"{chip.jax_prefix}:{'x'.join(map(str, shape))}"
    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=topology, chip_config_name=chip.chip_config,
            chips_per_host_bounds=bounds, num_slices=num_slices)
    except Exception as error:  # libtpu's own words: an impossible shape, a lock
        raise TopologyError(f"libtpu cannot describe {topology} x {num_slices} slice(s): "
                            f"{str(error).splitlines()[0]}") from None
    return CompileTarget(name, chip, shape, num_slices, list(description.devices))


def host_memory_gib_per_device(devices: Sequence[Any]) -> float:
    """This host's RAM shared by its CPU devices: the budget a `cpu` compile is checked against."""
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * page_size / 2**30 / max(1, len(devices))
