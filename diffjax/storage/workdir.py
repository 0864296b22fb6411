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

The recorded config is the source of truth for what a run's weights mean: `check_same_model`
refuses, in one line naming the keys, a config that differs from it in the process, the
parameterisation, the network or the first stage (VP weights read under an EDM config sample
noise, and nothing else would say so).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from typing import Any, Callable

from diffjax.runtime.cli import UserError
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


READ_ONLY_RUN_FIX = ("make it writable, or copy the run (its checkpoints/ and config.json) to a "
                     "folder you can write to and pass that as --workdir")


def check_writable(directory: str, what: str = "--workdir",
                   fix: str = "pass a folder you can write to") -> None:
    """Creates `directory` if needed and proves a file can be written and removed in it.

    `fix` ends the one-line message (what the user changes: a flag, a config key)."""
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
                                        f"({_describe_os_error(error)}); {fix}.") from None


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


def explain_differences(workdir: str, config) -> Callable[[], str]:
    """For a checkpoint whose shapes differ from `config`'s: the sentence naming the keys that
    differ from the run's config.json ("" when there is no record or no such key)."""

    def explain() -> str:
        differences = shape_relevant_differences(recorded_config(workdir), config_to_dict(config))
        if not differences:
            return ""
        return (f" The config differs from the run's {CONFIG_FILE} in "
                f"{describe_differences(differences)}.")

    return explain


# --- what a run's weights mean ---------------------------------------------------------------

class RunMismatchError(UserError, ValueError):
    """A config that describes another model than the run's weights; names the keys."""


# Keys that define what a diffusion run's weights compute: the process, the parameterisation,
# the network, the data shape it was built for; the first stage only for latent runs.
_MODEL_PREFIXES = ("sde.", "model.", "data.image_size", "data.num_channels",
                   "data.num_classes", "data.centered")
_FIRST_STAGE_PREFIXES = ("autoencoder.",)
# ... except how they are computed or trained, and where files are (a moved workdir is the same
# run; which first stage decoded is checked by its fingerprint against the latents').
_NOT_DEFINING = {"model.dropout", "model.label_dropout", "model.dtype", "model.remat",
                 "autoencoder.pretrained", "autoencoder.batch_size", "autoencoder.dtype",
                 "autoencoder.train_steps", "autoencoder.train_batch_size", "autoencoder.lr",
                 "autoencoder.kl_weight", "autoencoder.reconstruction_loss",
                 "autoencoder.sample_posterior"}


def model_differences(old: dict[str, Any] | None, new: dict[str, Any], task: str = "diffusion"
                      ) -> list[tuple[str, Any, Any]]:
    """The differences of `new` from the recorded config `old` that change what the weights
    mean, for a diffusion run or a first-stage run (`task="autoencoder"`).

    Keys one of the two configs lacks (a record written by another diffjax version) are left
    out: the schema's default is what that version used.
    """
    if old is None:
        return []
    latent = bool(_flatten(old).get("data.latent_dir")) or bool(_flatten(new).get(
        "data.latent_dir"))
    if task == "autoencoder":
        prefixes = _FIRST_STAGE_PREFIXES + ("data.num_channels",)
    else:
        prefixes = _MODEL_PREFIXES + (_FIRST_STAGE_PREFIXES if latent else ())
    found = []
    for key, a, b in config_differences(old, new):
        if ABSENT in (a, b):
            continue
        if key == "data.latent_dir" and task != "autoencoder":
            if bool(a) != bool(b):  # latents or pixels: another network input
                found.append((key, a, b))
        elif key.startswith(prefixes) and key not in _NOT_DEFINING:
            found.append((key, a, b))
    return found


def check_same_model(workdir: str, config, task: str = "diffusion") -> None:
    """Raises RunMismatchError when `config` describes another model than the one the run in
    `workdir` trained (its config.json); nothing to compare when it has none."""
    differences = model_differences(recorded_config(workdir), config_to_dict(config), task)
    if differences:
        raise RunMismatchError(
            f"the config does not match the run in {workdir}: it differs from the run's "
            f"{CONFIG_FILE} in {describe_differences(differences)}. Use the run's original "
            f"config (leave out --config to read its {CONFIG_FILE}) or another --workdir.")
