"""A run's own config, read back from the WORKDIR/config.json that training wrote.

The record is the source of truth for what a run's weights mean (the process, parameterisation,
network, first stage), so the modes that read a trained run (`sample`, `eval`, `likelihood`) and
`diffjax.load` take it when no config is given. This file is also a config file in the
`--config=FILE:ARG` sense: the command line passes `--config=<this file>:WORKDIR` when such a mode
gets no --config, so that `--config.sampling.num_steps=10` is parsed, type-checked and applied by
the same parser as always.

The record is laid over `base_config()`: keys a newer schema added keep their defaults (what the
older diffjax that wrote the record used), and keys the schema no longer has are left out.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from diffjax.config.schema import base_config
from diffjax.storage import filesystem as fs, workdir as workdir_lib


def record_path(workdir: str) -> str:
    return fs.join(workdir, workdir_lib.CONFIG_FILE)


def _as_field(default: Any, value: Any) -> Any:
    """JSON's lists back to the schema's tuples (nested ones too: mesh.rules)."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(_as_field((), v) if isinstance(v, list) else v for v in value)
    return value


def _apply(node: ml_collections.ConfigDict, record: dict[str, Any], prefix: str) -> None:
    for key, value in record.items():
        if key not in node:
            continue  # a key of an older schema
        current = node[key]
        if isinstance(current, ml_collections.ConfigDict):
            if isinstance(value, dict):
                _apply(current, value, f"{prefix}{key}.")
            continue
        try:
            node[key] = _as_field(current, value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"config.{prefix}{key}={value!r} in the run's "
                             f"{workdir_lib.CONFIG_FILE} does not fit this diffjax's schema "
                             f"({error}); pass the run's config with --config.") from None


def from_record(record: dict[str, Any]) -> ml_collections.ConfigDict:
    """`base_config()` with every recorded value."""
    config = base_config()
    _apply(config, record, "")
    return config


def get_config(workdir: str) -> ml_collections.ConfigDict:
    """The config recorded in WORKDIR/config.json (the config-file entry point)."""
    path = record_path(workdir)
    record = workdir_lib.recorded_config(workdir)
    if record is None:
        state = "cannot be read" if fs.exists(path) else "does not exist"
        raise FileNotFoundError(
            f"{path} {state}, so the run's config is unknown; pass the config it was trained "
            f"with (--config=FILE[:ARG]) or the --workdir of a training run.")
    return from_record(record)
