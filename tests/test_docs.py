"""Every command shown to users (README, docs/, launch/README.md, config docstrings) parses.

`python -m diffjax.main ...` commands are parsed by the real flag parser (config file loaded,
overrides applied and type-checked) in one subprocess, without running anything. Launcher
commands run with `--dry-run` (SLURM: DRY_RUN=1), which checks their options and prints what
they would do.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

PLACEHOLDERS = {"DIR": "/tmp/diffjax-docs-workdir", "CFG": "configs/digits.py",
                "CONFIG_FILE": "configs/digits.py", "MODE": "train"}


def _sources() -> dict[str, str]:
    texts = {}
    for path in ["README.md", "launch/README.md", *sorted(glob.glob(os.path.join(REPO, "docs",
                                                                                "*.md")))]:
        full = os.path.join(REPO, path)
        if os.path.exists(full):
            texts[os.path.relpath(full, REPO)] = open(full).read()
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
        source = open(path).read()
        match = re.match(r'\s*"""(.*?)"""', source, re.S)
        if match:
            texts[os.path.relpath(path, REPO)] = match.group(1)
    return texts


def command_lines(text: str, program: str) -> list[list[str]]:
    """The argv of every command line in `text` that runs `program`, continuations joined."""
    found = []
    # Docstrings are read as source, where a continuation is written as two backslashes.
    joined = re.sub(r"\\\n\s*", " ", text.replace("\\\\\n", "\\\n"))
    for line in joined.splitlines():
        line = line.strip().lstrip("$ ").split("  #")[0].strip().strip("`")
        if program not in line or line.startswith(("#", "|", ">")):
            continue
        command = line[line.index(program):].split("`")[0].rstrip(".,;) ")
        try:
            words = shlex.split(command)
        except ValueError:
            continue
        # Prose mentions and usage synopses ("[--mode=MODE]", "...") are not commands.
        if not any(w.startswith("--") for w in words) or \
                any(w.startswith("[") or "..." in w or w == "ARGS" for w in words):
            continue
        for name, value in PLACEHOLDERS.items():
            words = [re.sub(rf"(?<=[=:]){name}\b|^{name}$", value, w) for w in words]
        found.append(words)
    return found


def commands(program: str) -> list[tuple[str, list[str]]]:
    """(where, argv) of every command line that runs `program`, continuations joined."""
    return [(where, words) for where, text in _sources().items()
            for words in command_lines(text, program)]


PARSER = r"""
import importlib, json, sys
from absl import flags
module_name, argvs = json.loads(sys.stdin.read())
module = importlib.import_module(module_name)
failures = []
for argv in argvs:
    try:
        values = module.define_flags(flags.FlagValues())
        sys.argv = ["diffjax.main", *argv]  # config_flags reads overrides from sys.argv
        values(sys.argv)
        values.config.keys()
        assert values.workdir, "--workdir missing"
    except BaseException as error:
        failures.append([argv, f"{type(error).__name__}: {str(error).splitlines()[-1]}"])
print(json.dumps(failures))
"""


@pytest.mark.parametrize("module, at_least", [("diffjax.main", 10),
                                               ("diffjax.convert.__main__", 3)])
def test_every_documented_python_command_parses(module, at_least):
    found = commands(f"python -m {module.removesuffix('.__main__')}")
    assert len(found) >= at_least, "the docs should show these commands"
    argvs = [words[3:] for _, words in found]
    result = subprocess.run([sys.executable, "-c", PARSER], input=json.dumps([module, argvs]),
                            cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    failures = json.loads(result.stdout.strip().splitlines()[-1])
    where = {tuple(words[3:]): w for w, words in found}
    assert not failures, "\n".join(f"{where[tuple(a)]}: {' '.join(a)}\n  -> {e}"
                                   for a, e in failures)


LAUNCHERS = ("launch/local.sh", "launch/tpu_vm.sh", "launch/xpk.sh")


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_every_documented_launcher_command_passes_its_dry_run(launcher):
    found = commands(launcher)
    for where, words in found:
        argv = words[1:]
        if "--delete" in argv:
            argv = argv + ["--dry-run"]
        else:
            split = argv.index("--") if "--" in argv else len(argv)
            argv = argv[:split] + ["--dry-run"] + argv[split:]
        result = subprocess.run(["bash", os.path.join(REPO, launcher), *argv], cwd=REPO,
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHON": sys.executable})
        assert result.returncode == 0, f"{where}: {' '.join(words)}\n{result.stderr[-1500:]}"
