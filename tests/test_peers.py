"""How a multi-process job tells a lost peer from its own failure (diffjax/parallel/peers.py).

The end-to-end case (SIGKILL one of two training processes) is in test_multihost.py; these pin the
classification it depends on, without starting a job: which errors name a lost peer, and which
processes on this host count as gone.
"""

import os
import socket
import subprocess
import sys

import jax
import pytest

from diffjax.parallel import peers
from diffjax.storage.checkpoints import CheckpointSaveError


@pytest.fixture
def two_processes(monkeypatch):
    """This process is process 0 of two; process 1 is given by each test."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    monkeypatch.setattr(peers, "_PEERS", {})
    monkeypatch.setattr(peers, "_client", lambda: _FakeClient())

    def set_peer(pid: int, host: str = socket.gethostname()):
        peers._PEERS.update({0: {"host": socket.gethostname(), "pid": os.getpid()},
                             1: {"host": host, "pid": pid, "addresses": ["10.1.2.3"]}})
    return set_peer


class _FakeClient:
    def __init__(self, done=()):
        self.done = done

    def key_value_dir_get(self, prefix):
        return [(f"{prefix}{index}", "1") for index in self.done]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _save_error_after(cause: Exception) -> CheckpointSaveError:
    """A CheckpointSaveError raised while handling `cause`, as Checkpointer raises it."""
    try:
        try:
            raise cause
        except ValueError:
            raise CheckpointSaveError(5, "could not write checkpoint 8") from None
    except CheckpointSaveError as error:
        return error


def test_a_gloo_failure_inside_an_async_save_is_a_lost_peer(two_processes):
    # What an asynchronous save's all-gather raises when the other process was SIGKILLed.
    gloo = ValueError("UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/"
                      "pair.cc:538] Read error [127.0.0.1]:7314: Connection reset by peer")
    # The collective's own words, not the save error that quotes them.
    assert peers.peer_failure(_save_error_after(gloo)) is gloo
    try:
        try:
            raise gloo
        except ValueError:
            raise CheckpointSaveError(5, f"could not write checkpoint 8 ({gloo})") from None
    except CheckpointSaveError as quoted:
        assert "gloo" in str(quoted).lower()
        assert peers.peer_failure(quoted) is gloo


def test_a_full_disk_is_not_a_lost_peer(two_processes):
    two_processes(os.getpid())
    full = _save_error_after(ValueError("[Errno 28] No space left on device"))
    assert peers.peer_failure(full) is None
    assert peers.gone_on_this_host() == []


def test_a_connection_error_of_a_file_system_is_not_a_lost_peer(two_processes):
    # Generic network words count only in JAX's runtime errors, not in (say) a gs:// write.
    assert peers.peer_failure(OSError("Connection reset by peer")) is None


def test_a_dead_pid_on_this_host_is_gone_whatever_the_error_says(two_processes):
    two_processes(_dead_pid())
    assert peers.gone_on_this_host() == [1]


def test_a_process_that_finished_or_lives_elsewhere_is_not_gone(two_processes, monkeypatch):
    two_processes(_dead_pid())
    monkeypatch.setattr(peers, "_client", lambda: _FakeClient(done=[1]))
    assert peers.gone_on_this_host() == []
    two_processes(_dead_pid(), host="another-host")
    assert peers.gone_on_this_host() == []


def test_exit_if_lost_names_the_dead_process_and_exits_75(two_processes, monkeypatch, capsys,
                                                          tmp_path):
    pid = _dead_pid()
    two_processes(pid)
    (tmp_path / "4").mkdir()
    (tmp_path / "8").mkdir()
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    peers.exit_if_lost(_save_error_after(ValueError("an unfamiliar wording")), str(tmp_path))
    assert exits == [peers.EXIT_LOST_PROCESS]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("diffjax: error: LostProcessError: lost process 1 "
                           f"(pid {pid} on {socket.gethostname()})")
    assert "newest complete checkpoint is step 8" in line and "restart every process" in line


def test_exit_if_lost_leaves_a_single_process_error_alone(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    peers.exit_if_lost(ValueError("UNKNOWN: Gloo AllGather failed"), None)
    assert exits == []
