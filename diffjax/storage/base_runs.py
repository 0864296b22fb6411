"""A frozen base network taken from another diffjax run: the EMA parameters of its newest
checkpoint, restored straight into their sharded layout, and the base's identity.

LoRA adapters (`model.lora.base`) and ControlNets (`model.controlnet_base`) train on top of a
network that never changes. Only `ema_params` is read from the base's checkpoint (Orbax partial
restore: the optimizer moments stay on disk), each array directly in its sharding, so no device
ever holds more than its shard. The identity (folder, step, SHA-256 of the weights) goes into
every checkpoint of the run on top, so a resumed or sampled run refuses a base that changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from diffjax.storage import filesystem as fs, workdir as workdir_lib

RECORD_KEY = "frozen_base"  # in the data-iterator record of each checkpoint


@dataclasses.dataclass(frozen=True)
class BaseIdentity:
    folder: str
    step: int
    sha256: str
    kind: str = ""  # "lora" or "controlnet"

    def record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, recorded: dict[str, Any] | None, where: str) -> None:
        """One line when `recorded` (a checkpoint's record) names other base weights."""
        if not recorded:
            return
        if recorded.get("sha256") != self.sha256:
            raise ValueError(
                f"{where} was trained on the base {recorded.get('folder')} (step "
                f"{recorded.get('step')}, sha256 {str(recorded.get('sha256'))[:12]}...) but the "
                f"configured base {self.folder} (step {self.step}) has other weights (sha256 "
                f"{self.sha256[:12]}...); point the base at the run it was trained on.")


def newest_step(workdir: str, what: str) -> int:
    directory = workdir_lib.checkpoints_dir(fs.absolute(workdir))
    steps = sorted(int(n) for n in fs.listdir(directory) if n.isdigit()) \
        if fs.is_dir(directory) else []
    if not steps:
        raise FileNotFoundError(f"{what}={workdir!r} has no checkpoint in {directory}; pass "
                                f"the --workdir of a finished diffjax training run.")
    return steps[-1]


def restore_ema_params(workdir: str, abstract_params: Any, what: str) -> tuple[Any, int]:
    """(EMA parameters of the newest checkpoint, its step); `abstract_params` are
    ShapeDtypeStructs with shardings (what the network expects)."""
    step = newest_step(workdir, what)
    path = fs.join(workdir_lib.checkpoints_dir(fs.absolute(workdir)), str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        metadata = checkpointer.metadata(path)
        tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None) or metadata
        saved = tree["ema_params"]
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint
        raise ValueError(f"{what}={workdir!r}: checkpoint {step} cannot be read ({e}); pass "
                         f"a diffjax training run's --workdir.") from None
    _check_shapes(saved, abstract_params, workdir, step, what)
    restore_args = jax.tree.map(
        lambda leaf: ocp.ArrayRestoreArgs(sharding=leaf.sharding, global_shape=leaf.shape,
                                          dtype=leaf.dtype), abstract_params)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        item={"ema_params": abstract_params}, restore_args={"ema_params": restore_args},
        partial_restore=True))
    return restored["ema_params"], step


def _check_shapes(saved: Any, abstract: Any, workdir: str, step: int, what: str) -> None:
    def flat(tree):
        return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    have, want = flat(saved), flat(abstract)
    for name in sorted(set(have) | set(want)):
        if have.get(name) != want.get(name):
            detail = ("is missing there" if name not in have else
                      "is not in this network" if name not in want else
                      f"has shape {have[name]} there and {want[name]} here")
            raise ValueError(f"{what}={workdir!r}: the network of checkpoint {step} differs "
                             f"from this config's: {name} {detail}; use the base run's model "
                             f"settings (its config.json).")


def params_sha256(params: Any) -> str:
    """SHA-256 of every parameter (float32 bytes, in path order), the same on every process."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        digest.update(jax.tree_util.keystr(path).encode())
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        value = np.ascontiguousarray(np.asarray(jax.device_get(leaf), np.float32))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


@dataclasses.dataclass(eq=False)
class FrozenBase:
    """The frozen network under a run's trainable parameters (a LoRA adapter, a ControlNet).

    `abstract` holds the base's parameter shapes with their shardings (the same logical-axis
    rules as any parameter); `combine(base, trainable)` is the parameter tree the network is
    applied with and `select(params)` its trainable part; `initialise(trainable, base)` sets
    the trainable part's first value from the base (a ControlNet copies the base's layers; None: the network's own init). `load()` reads
    the base once per process and remembers it.
    """

    kind: str  # "lora" or "controlnet"
    workdir: str
    config_key: str  # for messages: "model.lora.base"
    abstract: Any
    shardings: Any
    combine: Callable[[Any, Any], Any]
    select: Callable[[Any], Any]  # the network's parameter tree -> the part that trains
    initialise: Callable[[Any, Any], Any] | None = None
    _loaded: tuple | None = dataclasses.field(default=None, repr=False)

    def load(self) -> tuple[Any, BaseIdentity]:
        if self._loaded is None:
            if not self.workdir:
                raise ValueError(f"{self.config_key} is empty; set it to the --workdir of the "
                                 f"diffjax run to build on (same network settings).")
            params, step = restore_ema_params(self.workdir, self.abstract, self.config_key)
            identity = BaseIdentity(fs.absolute(self.workdir), step, params_sha256(params),
                                    self.kind)
            self._loaded = (params, identity)
        return self._loaded

    @property
    def params(self) -> Any:
        return self.load()[0]

    @property
    def identity(self) -> BaseIdentity:
        return self.load()[1]

    def record(self) -> dict[str, Any]:
        """What every checkpoint of the run stores about its base (in the data record)."""
        return {RECORD_KEY: self.identity.record()}

    def check(self, data_record: dict[str, Any] | None, where: str) -> None:
        self.identity.check((data_record or {}).get(RECORD_KEY), where)
