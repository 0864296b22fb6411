"""Orbax checkpoints of the training state and the data iterator, in WORKDIR/checkpoints/<step>/.

Saves are asynchronous (training continues while the arrays are written) and atomic (Orbax writes
to a temporary folder and renames it when complete), so a run killed mid-save leaves the previous
checkpoint as the newest valid one. Restoring takes the abstract state with its shardings, so a
checkpoint written under one mesh restores under any other.

What can go wrong, and what happens:
- The newest checkpoint is damaged (truncated or overwritten array files, missing metadata or
  manifest, a missing or garbled data-iterator record, or arrays that read without error but
  differ from what was saved): `restore_latest` says which one and why in one line, moves it to
  WORKDIR/checkpoints.damaged/ (never deletes it) and falls back to the next older one; only when
  none is readable does it stop, naming the folder and the fix.
- Every save records a digest of every array (`digests.py`, in the same atomic save) and every
  restore compares them, so overwritten bytes that still decode are damage too. Checkpoints
  written before digests existed restore unverified, with one log line saying so.
- The checkpoint was written with another config (other shapes): a `CheckpointMismatchError`
  names the first differing parameter, and the config keys that differ from the run's recorded
  config; nothing is moved.
- A save fails (full or read-only disk, quota): a `CheckpointSaveError` in one line; the older
  checkpoints stay, and the partial temporary folder is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from diffjax.runtime.cli import UserError
from diffjax.state.train_state import ShardedStateSpec, TrainState
from diffjax.storage import digests as digests_lib, filesystem as fs, workdir as workdir_lib


class CheckpointError(UserError, RuntimeError):
    """No usable checkpoint; the message names the folder and the fix."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameter shapes differ from what the config builds."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; older checkpoints are intact."""


class CheckpointDigestError(ValueError):
    """Restored arrays differ from the digests recorded when they were saved: damaged files."""


DIGESTS_ITEM = "digests"
_UNVERIFIED_REPORTED: set[str] = set()


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def leaf_names(tree) -> list[str]:
    """"params/Conv_0/kernel", ... for every leaf, in `jax.tree.leaves` order."""
    return [_path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    """{"params/Conv_0/kernel": shape, ...} for a state, its abstract spec or Orbax metadata."""
    return {_path_name(path): tuple(getattr(leaf, "shape", ()))
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def first_difference(saved: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
    """The first parameter whose name or shape differs, parameters before optimizer state."""
    def order(name):
        return (not name.startswith("params/"), name)

    for name in sorted(set(saved) | set(expected), key=order):
        if name not in saved:
            return f"{name} (shape {expected[name]}) is not in the checkpoint"
        if name not in expected:
            return f"{name} (shape {saved[name]}) is in the checkpoint but not in the model"
        if saved[name] != expected[name]:
            return f"{name} has shape {saved[name]} in the checkpoint and {expected[name]} here"
    return None


def _agree_all(ok: bool) -> bool:
    """True only if `ok` on every process (so all take the same branch)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok))))


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


def _short_reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno:
        return f"{os.strerror(error.errno)}" + (f": {error.filename}" if error.filename else "")
    first = " ".join(str(error).split())
    for marker in (" See full TensorStore details", "Traceback"):
        first = first.split(marker)[0]
    # TensorStore's messages quote long paths before the OS reason, which the cut below would
    # drop; the reason is what the user acts on, so it goes first.
    code = re.search(r"os_error_code='?(\d+)", first)
    reason = os.strerror(int(code.group(1))) if code else next(
        (os.strerror(number) for number in _DISK_ERRNOS if os.strerror(number) in first), None)
    return f"{reason + ': ' if reason else ''}{type(error).__name__}: {first[:240]}"


class Checkpointer:
    def __init__(self, workdir: str, *, max_to_keep: int | None = 3, async_save: bool = True,
                 create: bool = True, clear_partial_saves: bool = False):
        self.workdir = fs.absolute(workdir)
        self.directory = workdir_lib.checkpoints_dir(self.workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=create,
            # Only the training job, the one writer of a workdir (the lock), may clear partial
            # saves of a killed run: for a reader they may be a live save in progress.
            cleanup_tmp_directories=clear_partial_saves,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "data": ocp.JsonCheckpointHandler(),
                           DIGESTS_ITEM: ocp.JsonCheckpointHandler()})
        self._pending_step: int | None = None

    # --- listing ------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def reload(self) -> None:
        """Orbax caches the listing; another process (training) may have added steps."""
        self.manager.reload()

    # --- saving -------------------------------------------------------------------------------
    def save(self, step: int, state: TrainState, data_state: dict[str, Any],
             state_bytes: int = 0) -> None:
        """Starts (async) or performs a save; raises CheckpointSaveError if it cannot be done."""
        self._raise_if_failed(self._check_room, state_bytes, failing_step=step)
        # Computed on the devices before Orbax copies the state to the host; saved as one more
        # item of the same Composite save, so the digests and the arrays commit together.
        digests = digests_lib.record(leaf_names(state), state)
        self._raise_if_failed(
            self.manager.save, step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    data=ocp.args.JsonSave(data_state),
                                    **{DIGESTS_ITEM: ocp.args.JsonSave(digests)}),
            force=True, failing_step=self._pending_step or step)
        self._pending_step = step

    def _check_room(self, state_bytes: int) -> None:
        if jax.process_index() == 0 and state_bytes:
            workdir_lib.check_free_space(self.directory, state_bytes, "the next checkpoint")

    def wait(self) -> None:
        """Blocks until the pending save is complete; raises CheckpointSaveError if it failed."""
        self._raise_if_failed(self.manager.wait_until_finished, failing_step=self._pending_step)
        self._pending_step = None

    def _raise_if_failed(self, call: Callable, *args, failing_step: int | None = None,
                         **kwargs) -> Any:
        """Runs `call`; any failure becomes one CheckpointSaveError line. (An async save's error
        surfaces at the next save or wait, hence `failing_step`.)"""
        try:
            result = call(*args, **kwargs)
        except (OSError, ValueError, RuntimeError) as error:
            if isinstance(error, CheckpointSaveError):
                raise
            self._remove_partial_saves()
            step = failing_step if failing_step is not None else self._pending_step
            older = self.all_steps()
            kept = f"the newest complete checkpoint is step {older[-1]}" if older else \
                "no complete checkpoint exists yet"
            raise CheckpointSaveError(
                getattr(error, "errno", None) or errno.EIO,
                f"could not write checkpoint {step} to {self.directory} "
                f"({_short_reason(error)}); {kept}. Free space or fix permissions, then rerun "
                f"the same command to resume.") from None
        return result

    def _remove_partial_saves(self, settle_s: float = 1.0, give_up_s: float = 15.0) -> None:
        """Removes the failed save's temporary folder, and keeps removing it until it stays gone.

        A failed save's Python future fails while TensorStore may still complete writes that
        were in flight, and its file store recreates missing parent folders: one removal can be
        undone a moment later. (The next training run's manager also clears such folders.)
        """
        if jax.process_index() != 0:
            return
        with contextlib.suppress(Exception):  # the same failure again, or none
            self.manager.wait_until_finished()
        deadline, clean_since = time.monotonic() + give_up_s, None
        while time.monotonic() < deadline:
            partial = [n for n in fs.listdir(self.directory) if ".orbax-checkpoint-tmp" in n]
            for name in partial:
                try:
                    fs.remove(fs.join(self.directory, name))
                except OSError:
                    pass  # a read-only disk, or a write landing meanwhile: the next pass
            if partial:
                clean_since = None
            elif clean_since is None:
                clean_since = time.monotonic()
            elif time.monotonic() - clean_since >= settle_s:
                return
            time.sleep(0.1)

    # --- restoring ----------------------------------------------------------------------------
    def check_matches(self, spec: ShardedStateSpec, step: int,
                      explain: Callable[[], str] = lambda: "") -> bool:
        """False if the metadata of `step` is unreadable (damaged); raises on other shapes."""
        try:
            metadata = self.manager.item_metadata(step)["state"]
        except Exception:  # noqa: BLE001 - any failure to read metadata means damage
            return False
        if metadata is None:
            return False
        difference = first_difference(flat_shapes(metadata), flat_shapes(spec.abstract))
        if difference:
            raise CheckpointMismatchError(
                f"checkpoint {step} in {self.directory} does not match the config: "
                f"{difference}.{explain()} Use the run's original config (its config.json) or "
                f"another --workdir.")
        return True

    def restore(self, spec: ShardedStateSpec, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """The state and data-iterator state of `step` (default: newest). Raises on damage."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"No checkpoint in {self.directory}; train first (--mode=train) or pass the "
                f"--workdir of a training run.")
        verified = fs.exists(fs.join(self.directory, str(step), DIGESTS_ITEM))
        items = {"state": ocp.args.StandardRestore(spec.abstract), "data": ocp.args.JsonRestore()}
        if verified:
            items[DIGESTS_ITEM] = ocp.args.JsonRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        data = restored["data"]
        if not isinstance(data, dict):
            raise ValueError(f"the data-iterator record is {type(data).__name__}, not a dict")
        if verified:
            self._verify(step, restored["state"], restored[DIGESTS_ITEM])
        elif self.directory not in _UNVERIFIED_REPORTED:
            _UNVERIFIED_REPORTED.add(self.directory)
            logging.warning("Checkpoint %d in %s has no array digests (written before diffjax "
                            "recorded them): restored unverified; other such checkpoints of this "
                            "folder are not reported again.", step, self.directory)
        return restored["state"], data

    def _verify(self, step: int, state: TrainState, recorded: Any) -> None:
        names = leaf_names(state)
        differing, unchecked = digests_lib.differences(names, state, recorded)
        if differing:
            params_first = sorted(differing, key=lambda n: (not n.startswith("params/"), n))
            more = f" and {len(differing) - 1} more" if len(differing) > 1 else ""
            raise CheckpointDigestError(
                f"{params_first[0]}{more} differ from the digests recorded when checkpoint "
                f"{step} was saved (its array files changed after the save)")
        if unchecked:
            logging.warning("Checkpoint %d: %d arrays (first %s) could not be verified (restored "
                            "as another dtype, or digests of another format).", step,
                            len(unchecked), unchecked[0])

    def try_restore(self, spec: ShardedStateSpec, step: int,
                    explain: Callable[[], str] = lambda: ""
                    ) -> tuple[TrainState, dict[str, Any]] | str:
        """(state, data) or the one-line reason the checkpoint cannot be read.

        Shape mismatches raise instead: they mean another config, not damage.
        """
        if not _agree_all(self.check_matches(spec, step, explain)):
            return "its metadata cannot be read"
        try:
            state, data = self.restore(spec, step)
            jax.block_until_ready(state)
            ok, reason = True, ""
        except Exception as error:  # noqa: BLE001 - any read failure of a valid-looking step
            ok, reason, state, data = False, _short_reason(error), None, None
        if not _agree_all(ok):
            return reason or "another process could not read it"
        return state, data

    def restore_latest(self, spec: ShardedStateSpec,
                       explain: Callable[[], str] = lambda: ""
                       ) -> tuple[TrainState, dict[str, Any], int] | None:
        """The newest readable checkpoint, moving unreadable newer ones aside; None if none."""
        steps = self.all_steps()
        if not steps:
            return None
        damaged = []
        for step in reversed(steps):
            result = self.try_restore(spec, step, explain)
            if not isinstance(result, str):
                return (*result, step)
            moved = self._move_aside(step)
            damaged.append(step)
            logging.warning("Checkpoint %d in %s is unreadable (%s); moved it to %s and trying "
                            "the next older one.", step, self.directory, result, moved)
        raise CheckpointError(
            f"no readable checkpoint in {self.directory}: steps {damaged} are damaged (moved to "
            f"{workdir_lib.damaged_dir(self.workdir)}). Delete {self.directory} to start this "
            f"run from scratch, or pass another --workdir.")

    def _move_aside(self, step: int) -> str:
        target_dir = workdir_lib.damaged_dir(self.workdir)
        target = fs.join(target_dir, f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
        if jax.process_index() == 0:
            fs.makedirs(target_dir)
            fs.rename(fs.join(self.directory, str(step)), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"diffjax moved checkpoint {step}")
        self.manager.reload()
        return target

    def reached_preemption(self, step: int) -> bool:
        """True on every host once the cluster signalled preemption (TPU/multi-host)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        try:
            self.manager.close()
        except Exception:  # noqa: BLE001 - a failed pending save was already reported
            pass
