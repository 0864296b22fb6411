"""Shared fixtures: the tiny config, a warm compilation cache, and helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    from diffjax import runtime

    runtime.enable_compilation_cache()


@pytest.fixture
def digits_config():
    """configs/digits.py:test, the tiny config every end-to-end test trains."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_config",
                                                  os.path.join(REPO, "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


def run_cli(*args: str, env: dict | None = None, timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m diffjax.main ARGS` from the repository root."""
    result = subprocess.run(
        [sys.executable, "-m", "diffjax.main", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"CLI failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result
