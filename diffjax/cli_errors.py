"""Turns errors a user can cause into one line on stderr and a non-zero exit.

Tracebacks are for bugs. A wrong config key, a missing file, a dataset that is not prepared or a
NaN loss is the user's to fix, so they get the message alone: it names the key or file and the fix.
Set DIFFJAX_TRACEBACK=1 to see the traceback anyway.
"""

from __future__ import annotations

import difflib
import os
import sys

from absl import app, flags

from diffjax.checkpointing import CheckpointError
from diffjax.config_base import base_config
from diffjax.data.pipeline import DataError
from diffjax.parallel.mesh import MeshError
from diffjax.workdir_lock import WorkdirBusyError

# Errors whose message is the whole story (bad config, data, weights, disk, a second writer);
# anything else is a bug and keeps its traceback. OSError covers disk, permission and path faults,
# which are always the environment's.
USER_ERRORS = (DataError, MeshError, CheckpointError, WorkdirBusyError, OSError, ValueError,
               FloatingPointError)
EXIT_BAD_FLAGS = 2
EXIT_USER_ERROR = 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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


def unknown_config_key(argv: list[str]) -> str | None:
    """The first --config.a.b override that no config has, with a suggestion.

    Every config file starts from `base_config()` and adds no keys, so the schema is known
    without loading the user's file.
    """
    schema = base_config()
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        path = arg[len("--config."):].split("=", 1)[0]
        node, walked = schema, []
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


def describe_flag_error(error: BaseException, argv: list[str]) -> str:
    unknown = unknown_config_key(argv)
    if unknown:
        return unknown
    text = str(error)
    if "Failed loading config file" in text or isinstance(error, OSError):
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"cannot load the config file: {lines[-1] if lines else text}"
    if "Error whilst parsing config file" in text:
        # config_flags embeds the config's own traceback; its last line is the actual error.
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"the config file failed: {lines[-1]}"
    return _one_line(text)


HELP_FLAGS = {"-h": False, "-?": False, "--help": False, "--helpshort": False, "--helpfull": True}


def print_help(full: bool) -> None:
    """The module docstring and diffjax's flags (all modules' flags with --helpfull), exit 0."""
    main_module = sys.modules["__main__"]
    text = (main_module.__doc__ or "").strip()
    flag_help = str(flags.FLAGS) if full else flags.FLAGS.main_module_help()
    sys.stdout.write(f"{text}\n\n{flag_help}\n")


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parser, with every failure the user's input made turned into one line."""
    for arg in argv[1:]:
        if arg in HELP_FLAGS:
            print_help(full=HELP_FLAGS[arg])
            sys.exit(0)
    try:
        remaining = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            flags.FLAGS.config.keys()  # config_flags fails lazily: surface a missing file now
        return remaining
    except Exception as error:  # noqa: BLE001 - every parsing failure is the user's input
        if os.environ.get("DIFFJAX_TRACEBACK"):
            raise
        sys.stderr.write(f"diffjax: error: {describe_flag_error(error, argv)}\n")
        sys.exit(EXIT_BAD_FLAGS)


def run_main(main) -> None:
    """`app.run(main)` with one-line errors; absl defines --help/--helpfull before parsing."""
    try:
        app.run(main, flags_parser=_parse_flags)
    except USER_ERRORS as error:
        if os.environ.get("DIFFJAX_TRACEBACK"):
            raise
        sys.stderr.write(f"diffjax: error: {type(error).__name__}: {_one_line(error)}\n")
        sys.exit(EXIT_USER_ERROR)
