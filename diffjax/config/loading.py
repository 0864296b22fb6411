"""Loading a config as the command line does, from a notebook too.

    config = diffjax.config.load("configs/digits.py:test", {"training.num_train_steps": 20})

`load` parses the file and the overrides with the same `ml_collections.config_flags` parser the
CLI uses (`--config=FILE[:ARG] --config.a.b=V`), so both give the same locked config; then it runs
the checks a config can fail on its own (`diffjax.config.checks`). Each mode runs the rest of the
validation, a dry run against the data and the machine, when it starts (`diffjax.modes.preflight`).

`load_recorded(workdir, overrides)` is the same for a trained run's own config (its config.json,
see `recorded.py`): what `--mode=sample` reads when it gets no --config.

`unknown_config_key` is the one diagnosis of a misspelt key, for the CLI and for `load`: every
config file starts from `base_config()` and adds no keys, so the schema is known without loading
the user's file.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping

import ml_collections
from absl import flags
from ml_collections import config_flags

from diffjax.config import recorded
from diffjax.config.checks import ConfigError, check_ranges
from diffjax.config.schema import base_config
from diffjax.runtime.cli import describe_flag_error


def _fields_named(node, name: str) -> list[list[str]]:
    """Paths below `node` whose last field is `name` (num_train_steps -> training.num_train_steps)."""
    found = []
    for key in node.keys():
        child = node[key]
        if hasattr(child, "keys"):
            found += [[key, *rest] for rest in _fields_named(child, name)]
            if name in child.keys():
                found.append([key, name])
    return found


def unknown_key(path: str, schema=None) -> str | None:
    """Why `path` ("optim.lrr") is not a config key, with a suggestion; None when it is one."""
    node, walked = schema if schema is not None else base_config(), []
    for part in path.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            close = difflib.get_close_matches(part, keys, n=1)
            elsewhere = _fields_named(node, part) if not close else []
            suggestion = ".".join(walked + close) if close else (
                ".".join(walked + elsewhere[0]) if len(elsewhere) == 1 else "")
            hint = f"; did you mean config.{suggestion}?" if suggestion else ""
            where = f"config.{'.'.join(walked)}" if walked else "the config"
            return f"unknown config key config.{path}: {where} has no field {part!r}{hint}"
        node, walked = node[part], walked + [part]
    return None


def set_field(config, path: str, value: Any, source: str = "override") -> None:
    """config.<path> = value, or one ConfigError naming `source`, the key and the fix: an unknown
    key with the closest one ("did you mean"), a value of the wrong type with the field's type."""
    problem = unknown_key(path, config)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    if hasattr(node[leaf], "keys"):
        raise ConfigError(f"{source}: config.{path} is a section; set one of its fields, "
                          f"e.g. config.{path}.{next(iter(node[leaf].keys()))}")
    try:
        node[leaf] = value
    except (TypeError, ValueError):
        kind = node.get_type(leaf)
        name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{source}: config.{path}={value!r} is not of its type {name} "
                          f"(now {node[leaf]!r})") from None


def unknown_config_key(argv: list[str]) -> str | None:
    """The first --config.a.b override in `argv` that no config has, with a suggestion."""
    schema = base_config()
    for arg in argv:
        if arg.startswith("--config."):
            problem = unknown_key(arg[len("--config."):].split("=", 1)[0], schema)
            if problem:
                return problem
    return None


def _split_overrides(overrides) -> tuple[list[str], dict[str, Any]]:
    """Command-line style "a.b=V" strings (parsed as the CLI parses them) and {path: value}."""
    if overrides is None:
        return [], {}
    if isinstance(overrides, Mapping):
        return [], dict(overrides)
    if isinstance(overrides, str):
        overrides = [overrides]
    strings = [str(o).removeprefix("--").removeprefix("config.") for o in overrides]
    for text in strings:
        if "=" not in text:
            raise ConfigError(f"override {text!r} is not KEY=VALUE (e.g. optim.lr=1e-4)")
    return strings, {}


def load(spec: str, overrides: Mapping[str, Any] | Iterable[str] | None = None
         ) -> ml_collections.ConfigDict:
    """The locked config of `spec` ("FILE[:ARG]") with `overrides` applied, key- and
    range-checked: {"optim.lr": 1e-4} (typed values) or ["optim.lr=1e-4"] (parsed as on the
    command line). Raises ConfigError (a ValueError) naming the key and the fix."""
    strings, values = _split_overrides(overrides)
    argv = ["diffjax", f"--config={spec}", *[f"--config.{s}" for s in strings]]
    problem = unknown_config_key(argv[2:] + [f"--config.{k}" for k in values])
    if problem:
        raise ConfigError(problem)
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", lock_config=True,
                                    flag_values=flag_values, sys_argv=argv)
    try:
        flag_values(argv)
        config = flag_values.config
        config.keys()  # config_flags fails lazily: surface a missing file now
    except Exception as error:  # noqa: BLE001 - a bad file or value is the caller's input
        raise ConfigError(describe_flag_error(error, argv, unknown_config_key)) from None
    for path, value in values.items():
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        try:
            node[last] = value
        except (TypeError, ValueError) as error:
            raise ConfigError(f"config.{path}={value!r}: {error}") from None
    check_ranges(config)
    return config



def load_recorded(workdir: str, overrides: Mapping[str, Any] | Iterable[str] | None = None
                  ) -> ml_collections.ConfigDict:
    """The config a run in `workdir` was trained with (its config.json), with `overrides`
    applied as in `load`; FileNotFoundError naming the file when the run has none."""
    recorded.get_config(workdir)  # a missing record: FileNotFoundError naming it and the fix
    return load(f"{recorded.__file__}:{workdir}", overrides)
