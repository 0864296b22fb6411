"""The other processes of a multi-host job, and a clear exit when one of them is lost.

When a process dies (SIGKILL, OOM, a host failure), the survivors learn it in one of two ways:
- at once, inside the next collective: gloo (CPU) or NCCL/ICI report a closed connection and JAX
  raises a runtime error from the step; or
- after `HEARTBEAT_TIMEOUT_S` without heartbeats, from JAX's coordination service, which then
  aborts every process (a C++ check failure; jaxlib 0.10.2 offers no Python hook for it).
The first path is the common one in training (every step all-reduces gradients), so diffjax
turns it into one line that names the lost process and exits at once with EXIT_LOST_PROCESS,
skipping the shutdown barrier that would otherwise wait for the dead process and then abort.
Asynchronous checkpoint saves in flight are abandoned: Orbax finalises a checkpoint only when
every process has written its shards, so the newest complete checkpoint stays the newest valid.

To name the lost process, every process publishes (host, pid, IP addresses) in the coordination
service's key-value store at start-up and reads everyone else's: a process on the same host is
checked directly (is its pid alive?), one elsewhere is matched by the peer address in the error.
"""

from __future__ import annotations

import json
import os
import re
import socket

import jax

from diffjax import local_processes

HEARTBEAT_TIMEOUT_S = int(os.environ.get("DIFFJAX_HEARTBEAT_TIMEOUT_S", "60"))
EXIT_LOST_PROCESS = 75  # EX_TEMPFAIL: restart the job to resume from the newest checkpoint
_KEY = "diffjax/peers/{}"
_PEERS: dict[int, dict] = {}
_FAILURE_MARKERS = ("gloo", "connection closed by peer", "connection reset", "broken pipe",
                    "heartbeat", "unavailable:", "deadline_exceeded", "nccl", "socket closed")


class LostProcessError(RuntimeError):
    """Another process of this job is gone; the message names it and the way to resume."""


def _addresses() -> list[str]:
    names = {socket.gethostname(), socket.getfqdn()}
    found = set()
    for name in names:
        try:
            found.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    return sorted(found)


def register() -> None:
    """Publishes this process and reads every other one (call right after initialisation)."""
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None or jax.process_count() == 1:
        return
    me = jax.process_index()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "addresses": _addresses()}
    client.key_value_set(_KEY.format(me), json.dumps(record))
    for index in range(jax.process_count()):
        raw = client.blocking_key_value_get(_KEY.format(index), 120_000)
        _PEERS[index] = json.loads(raw)


def is_peer_failure(error: BaseException) -> bool:
    if jax.process_count() == 1:
        return False
    text = str(error).lower()
    return type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError") and \
        any(marker in text for marker in _FAILURE_MARKERS)


def lost_processes(error: BaseException) -> list[int]:
    """The processes that look gone: dead pids on this host, or the host the error names."""
    me, host = jax.process_index(), socket.gethostname()
    peer_ips = set(re.findall(r"\[?(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f:]+:[0-9a-f:]+)\]?:\d+",
                              str(error)))
    lost = []
    for index, record in sorted(_PEERS.items()):
        if index == me:
            continue
        if record["host"] == host:
            if not local_processes.alive(int(record["pid"])):
                lost.append(index)
        elif peer_ips & set(record.get("addresses", [])):
            lost.append(index)
    return lost


def describe(index: int) -> str:
    record = _PEERS.get(index)
    if not record:
        return f"process {index}"
    return f"process {index} (pid {record['pid']} on {record['host']})"


def lost_process_error(error: BaseException, checkpoints: str | None) -> LostProcessError:
    lost = lost_processes(error)
    who = ", ".join(describe(i) for i in lost) if lost else \
        "another process (its host is not known here; see the other processes' logs)"
    if checkpoints is not None:
        steps = sorted(int(n) for n in (os.listdir(checkpoints) if os.path.isdir(checkpoints)
                                        else []) if n.isdigit())
        resume = (f"the newest complete checkpoint is step {steps[-1]} in {checkpoints}; "
                  f"restart every process to resume") if steps else \
            "no checkpoint was completed; restart every process"
    else:
        resume = "restart every process"
    first_line = str(error).strip().splitlines()[0][:160]
    return LostProcessError(f"lost {who} during a collective ({first_line}); process "
                            f"{jax.process_index()} stops too: {resume}.")
