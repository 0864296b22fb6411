"""Turns errors a user can cause into one line on stderr and a non-zero exit.

Tracebacks are for bugs. A wrong config key, a missing file, a dataset that is not prepared or a
NaN loss is the user's to fix, so they get the message alone: it names the key or file and the fix.
Set DIFFJAX_TRACEBACK=1 to see the traceback anyway.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app, flags


class UserError(Exception):
    """An error whose message is the whole story: bad data, a damaged checkpoint, a second
    writer. The packages that raise such errors derive them from this class (and from the
    builtin they resemble), so the CLI knows them without importing those packages."""


# Anything else is a bug and keeps its traceback. OSError covers disk, permission and path
# faults, which are always the environment's; ValueError bad values (configs, weights).
USER_ERRORS = (UserError, OSError, ValueError, FloatingPointError)
EXIT_BAD_FLAGS = 2
EXIT_USER_ERROR = 1


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# The config's own diagnosis of the command line (`diffjax.config.unknown_config_key`), passed in
# by the entry point: the runtime layer knows no config schema.
FlagExplainer = Callable[[list[str]], "str | None"]


def describe_flag_error(error: BaseException, argv: list[str],
                        explain: FlagExplainer | None = None) -> str:
    unknown = explain(argv) if explain else None
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


def usage_error(text: str) -> None:
    """A command line that cannot run: one line on stderr, exit 2 (absl prints its whole usage
    text for `app.UsageError`)."""
    sys.stderr.write(f"diffjax: error: {_one_line(text)}\n")
    sys.exit(EXIT_BAD_FLAGS)


HELP_FLAGS = {"-h": False, "-?": False, "--help": False, "--helpshort": False, "--helpfull": True}


def print_help(full: bool) -> None:
    """The module docstring and diffjax's flags (all modules' flags with --helpfull), exit 0."""
    main_module = sys.modules["__main__"]
    text = (main_module.__doc__ or "").strip()
    flag_help = str(flags.FLAGS) if full else flags.FLAGS.main_module_help()
    sys.stdout.write(f"{text}\n\n{flag_help}\n")


def _flags_parser(explain: FlagExplainer | None):
    return lambda argv: _parse_flags(argv, explain)


def _parse_flags(argv: list[str], explain: FlagExplainer | None = None) -> list[str]:
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
        sys.stderr.write(f"diffjax: error: {describe_flag_error(error, argv, explain)}\n")
        sys.exit(EXIT_BAD_FLAGS)


def run_main(main, explain_flags: FlagExplainer | None = None) -> None:
    """`app.run(main)` with one-line errors; absl defines --help/--helpfull before parsing.
    `explain_flags(argv)` may name what is wrong with the command line (an unknown config key)."""
    try:
        app.run(main, flags_parser=_flags_parser(explain_flags))
    except USER_ERRORS as error:
        if os.environ.get("DIFFJAX_TRACEBACK"):
            raise
        sys.stderr.write(f"diffjax: error: {type(error).__name__}: {_one_line(error)}\n")
        sys.exit(EXIT_USER_ERROR)
