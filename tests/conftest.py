"""Shared fixtures: the tiny config, a warm compilation cache, and helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    from diffjax.runtime import xla

    xla.enable_compilation_cache()


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


class BackgroundRun:
    """`python -m diffjax.main ARGS` in the background, its stderr collected line by line."""

    def __init__(self, *args: str, env: dict | None = None):
        import threading

        self.process = subprocess.Popen(
            [sys.executable, "-m", "diffjax.main", *args], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.stdout = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, what: str, timeout: float = 300.0):
        import time

        deadline = time.time() + timeout
        while not condition():
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise AssertionError(f"run ended before {what}:\n{self.stderr[-3000:]}")
            if time.time() > deadline:
                self.process.kill()
                raise AssertionError(f"{what} did not happen in {timeout}s:\n"
                                     f"{self.stderr[-3000:]}")
            time.sleep(0.05)

    def wait_for_line(self, text: str, timeout: float = 300.0):
        self.wait_for(lambda: text in self.stderr, f"a log line with {text!r}", timeout)

    def wait_for_path(self, path, timeout: float = 300.0):
        self.wait_for(lambda: os.path.exists(path), f"{path} appeared", timeout)

    def finish(self, timeout: float = 120.0) -> int:
        returncode = self.process.wait(timeout=timeout)
        self.stdout = self.process.stdout.read()
        self._reader.join(timeout=5)
        return returncode

    def kill(self):
        self.process.kill()
        self.process.wait()
        self._reader.join(timeout=5)
