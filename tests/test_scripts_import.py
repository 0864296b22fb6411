"""Every benchmark and tool script imports against the current diffjax.

They are run by hand, not by the suite, so an API they call that moves (as `quiet_library_logs`
once did) would otherwise surface only when someone next measures. Scripts that import torch at
the top are the PyTorch side (tools/, with `make toolsenv`) and are skipped.
"""

import glob
import os
import subprocess
import sys

from conftest import REPO

TORCH_IMPORT = ("import torch", "from torch", "import diffusers")


def scripts() -> list[str]:
    paths = sorted(glob.glob(os.path.join(REPO, "benchmarks", "*.py")) +
                   glob.glob(os.path.join(REPO, "tools", "*.py")))
    return [p for p in paths
            if not any(line.startswith(TORCH_IMPORT) for line in open(p).read().splitlines())]


def test_benchmark_and_tool_scripts_import():
    paths = scripts()
    assert len(paths) >= 10
    # One process imports them all (as modules, so their __main__ blocks do not run) and checks
    # that every diffjax attribute they name exists.
    program = (
        "import ast, importlib, importlib.util, sys\n"
        "sys.path.insert(0, sys.argv[1] + '/benchmarks')\n"
        "for path in sys.argv[2:]:\n"
        "    spec = importlib.util.spec_from_file_location('script', path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "    tree = ast.parse(open(path).read())\n"
        "    modules = {}  # local name -> diffjax module, from imports anywhere in the file\n"
        "    for node in ast.walk(tree):\n"
        "        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('diffjax'):\n"
        "            parent = importlib.import_module(node.module)\n"
        "            for alias in node.names:\n"
        "                value = getattr(parent, alias.name, None)\n"
        "                if value is None and hasattr(parent, '__path__'):\n"
        "                    value = importlib.import_module(node.module + '.' + alias.name)\n"
        "                if isinstance(value, type(sys)):\n"
        "                    modules[alias.asname or alias.name] = value\n"
        "    for node in ast.walk(tree):\n"
        "        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):\n"
        "            module = modules.get(node.value.id)\n"
        "            if module is not None and not hasattr(module, node.attr):\n"
        "                sys.exit(f'{path}: {module.__name__}.{node.attr} does not exist')\n"
    )
    result = subprocess.run([sys.executable, "-c", program, REPO, *paths], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
