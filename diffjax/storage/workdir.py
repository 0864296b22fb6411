"""The workdir: its layout, the checks a writer makes before any compute, and the config record.

Layout (every path through `diffjax.storage.filesystem`, so WORKDIR may be gs://...):
    checkpoints/<step>/          Orbax checkpoints (state + data-iterator position)
    checkpoints.damaged/         unreadable checkpoints moved aside on resume (never deleted)
    config.json                  the resolved config of the run, written when training starts
    samples/, eval/              sample grids, evaluation reports
    events.out.tfevents.*        TensorBoard
    .diffjax.lock                held by the training job (see `workdir_lock`)

`prepare_for_writing` fails in one line when the workdir cannot take a checkpoint (a file in the
way, a read-only or full disk) before anything is compiled or read. `check_config_matches` turns a
resumed run whose config changes the shapes of the parameters into one line naming the keys that
differ from the run's recorded config.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from typing import Any

from diffjax.storage import filesystem as fs

CONFIG_FILE = "config.json"
# A checkpoint needs the new state written while the previous one still exists (Orbax writes to a
# temporary folder and renames), plus metadata; 10% covers the metadata of small models.
FREE_SPACE_MARGIN = 1.1


class WorkdirError(OSError):
    """The workdir cannot be used as asked; the message names the path and the fix."""


def checkpoints_dir(workdir: str) -> str:
    return fs.join(workdir, "checkpoints")


def damaged_dir(workdir: str) -> str:
    return fs.join(workdir, "checkpoints.damaged")


def _describe_os_error(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else str(error)


def check_writable(directory: str, what: str = "--workdir") -> None:
    """Creates `directory` if needed and proves a file can be written and removed in it."""
    if fs.is_local(directory) and os.path.exists(directory) and not os.path.isdir(directory):
        raise WorkdirError(errno.ENOTDIR, f"{what} {directory} is a file, not a folder; pass a "
                                          f"folder path (it is created if missing).")
    probe = fs.join(directory, f".diffjax-write-test-{uuid.uuid4().hex}")
    try:
        fs.makedirs(directory)
        fs.write_atomic(probe, b"ok")
        fs.remove(probe)
    except OSError as error:
        raise WorkdirError(error.errno, f"{what} {directory} is not writable "
                                        f"({_describe_os_error(error)}); pass a folder you can "
                                        f"write to.") from None


def free_bytes(directory: str) -> int | None:
    """Free space of the file system holding `directory`; None where it cannot be known (gs://)."""
    if not fs.is_local(directory):
        return None
    return shutil.disk_usage(directory).free


def check_free_space(directory: str, needed_bytes: int, what: str) -> None:
    free = free_bytes(directory)
    if free is None or needed_bytes <= 0:
        return
    want = int(needed_bytes * FREE_SPACE_MARGIN)
    if free < want:
        raise WorkdirError(errno.ENOSPC, f"{directory} has {_gib(free)} free but {what} needs "
                                         f"about {_gib(want)}; free some space or pass another "
                                         f"--workdir.")


def _gib(num_bytes: int) -> str:
    if num_bytes >= 2**30:
        return f"{num_bytes / 2**30:.1f} GiB"
    return f"{num_bytes / 2**20:.1f} MiB"


def prepare_for_writing(workdir: str, *, checkpoint_bytes: int = 0) -> None:
    """Before any compute: the workdir exists, takes files, and has room for one checkpoint."""
    check_writable(workdir)
    check_free_space(workdir, checkpoint_bytes, "one checkpoint of this state")


# --- the config record -----------------------------------------------------------------------

def config_to_dict(config) -> dict[str, Any]:
    """A JSON-safe nested dict of the config (tuples become lists)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def record_config(workdir: str, config) -> str:
    """Writes the resolved config to WORKDIR/config.json (overwritten on every start)."""
    path = fs.join(workdir, CONFIG_FILE)
    fs.write_atomic(path, json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")
    return path


def recorded_config(workdir: str) -> dict[str, Any] | None:
    path = fs.join(workdir, CONFIG_FILE)
    if not fs.exists(path):
        return None
    try:
        return json.loads(fs.read_text(path))
    except (OSError, ValueError):
        return None


ABSENT = "<absent>"


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every leaf that differs, sorted by key."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys
            if a.get(k, ABSENT) != b.get(k, ABSENT)]


# Keys whose change never alters a parameter shape: left out of "which keys differ" messages.
_SHAPE_NEUTRAL_PREFIXES = ("training.", "optim.lr", "optim.warmup", "optim.schedule",
                           "optim.decay", "optim.grad_clip", "sampling.", "eval.", "mesh.",
                           "compile.", "seed", "data.data_dir", "data.split", "data.eval_split",
                           "data.dequantize", "data.random_flip", "logging.")


def shape_relevant_differences(old: dict[str, Any] | None, new: dict[str, Any]
                               ) -> list[tuple[str, Any, Any]]:
    if old is None:
        return []
    return [d for d in config_differences(old, new)
            if not d[0].startswith(_SHAPE_NEUTRAL_PREFIXES)]


def describe_differences(differences: list[tuple[str, Any, Any]], limit: int = 6) -> str:
    shown = ", ".join(f"config.{k} ({_short(a)} -> {_short(b)})" for k, a, b in differences[:limit])
    more = f" and {len(differences) - limit} more" if len(differences) > limit else ""
    return shown + more


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
