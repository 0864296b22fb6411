"""The other processes of a multi-host job, and a clear exit when one of them is lost.

When a process dies (SIGKILL, OOM, a host failure), the survivors learn it in one of two ways:
- at once, inside the next collective: gloo (CPU) or NCCL/ICI report a closed connection and JAX
  raises a runtime error from the step; or
- after `HEARTBEAT_TIMEOUT_S` without heartbeats, from JAX's coordination service, which then
  aborts every process (the agent's C++ LOG(QFATAL); jaxlib 0.10.2 offers no Python hook for
  it, see coordinator.py). Process 0 is no exception as long as the service outlives it, which
  is why an explicit coordinator runs the service in a helper process (coordinator.py).
The first path is the common one in training (every step all-reduces gradients), so diffjax
turns it into one line that names the lost process and exits at once with EXIT_LOST_PROCESS,
skipping the shutdown barrier that would otherwise wait for the dead process and then abort.
Asynchronous checkpoint saves in flight are abandoned: Orbax finalises a checkpoint only when
every process has written its shards, so the newest complete checkpoint stays the newest valid.
The error may reach Python as any type (an asynchronous save's all-gather raises a ValueError) and
in words no marker knows; so any error of a multi-process job is also checked against the peers of
this host by pid before the process exits normally, which would otherwise mean the shutdown barrier
and the coordination service's abort.

To name the lost process, every process publishes (host, pid, IP addresses) in the coordination
service's key-value store at start-up and reads everyone else's: a process on the same host is
checked directly (is its pid alive?), one elsewhere is matched by the peer address in the error.

A process can also be blocked where no collective fails: in a barrier of an asynchronous
checkpoint save, say. For that, a watchdog thread writes a heartbeat of its own into the
key-value store every WATCHDOG_PERIOD_S, and exits the process with the same one line when a
peer's pid is gone (same host) or its heartbeat has not changed for STALE_PEER_S (other hosts),
which is shorter than the coordination service's timeout, so diffjax's line comes first. A
process that finishes normally marks itself done, so that its exit is not taken for a loss.
"""

from __future__ import annotations

import json
import os
import re
import socket

import jax

from diffjax.runtime import local_processes

HEARTBEAT_TIMEOUT_S = int(os.environ.get("DIFFJAX_HEARTBEAT_TIMEOUT_S", "60"))
WATCHDOG_PERIOD_S = 2.0
STALE_PEER_S = max(10.0, HEARTBEAT_TIMEOUT_S * 2 / 3)
EXIT_LOST_PROCESS = 75  # EX_TEMPFAIL: restart the job to resume from the newest checkpoint
_KEY = "diffjax/peers/{}"
_ALIVE_KEY = "diffjax/alive/{}"
_DONE_KEY = "diffjax/done/{}"
_PEERS: dict[int, dict] = {}
_WATCHDOG = {"thread": None, "stop": None, "checkpoints": None}
_FAILURE_MARKERS = ("gloo", "connection closed by peer", "connection reset", "broken pipe",
                    "heartbeat", "unavailable:", "deadline_exceeded", "nccl", "socket closed")
# Errors of the collective libraries themselves, whatever Python type carries them: an
# asynchronous checkpoint save's all-gather, for one, surfaces as a ValueError.
_COLLECTIVE_MARKERS = ("gloo", "nccl")


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


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def peer_failure(error: BaseException) -> BaseException | None:
    """The runtime error in `error`'s chain that reports a lost peer, if any (multi-process)."""
    if jax.process_count() == 1:
        return None
    found = None
    for link in _chain(error):  # the innermost match: the collective's own words, not a wrapper's
        text = str(link).lower()
        if any(marker in text for marker in _COLLECTIVE_MARKERS) or (
                type(link).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
                and any(marker in text for marker in _FAILURE_MARKERS)):
            found = link
    return found


def gone_on_this_host() -> list[int]:
    """The processes of this host whose pid no longer exists without having finished.

    Whatever the error looked like: a failure can reach Python worded in a way no marker above
    knows, and exiting normally then would wait in jax.distributed's shutdown barrier for the
    dead process until the coordination service aborts this one too.
    """
    if jax.process_count() == 1 or not _PEERS:
        return []
    me, host = jax.process_index(), socket.gethostname()
    gone = [index for index, record in sorted(_PEERS.items())
            if index != me and record["host"] == host
            and not local_processes.alive(int(record["pid"]))]
    if gone:
        try:
            done = {_index(k) for k, _ in _client().key_value_dir_get(_DONE_KEY.format(""))}
        except Exception:  # noqa: BLE001 - the coordinator is gone too: nobody finished
            done = set()
        gone = [index for index in gone if index not in done]
    return gone


def exit_if_lost(error: BaseException, checkpoints: str | None) -> None:
    """When `error` reports a lost peer: one line on stderr and exit now, EXIT_LOST_PROCESS.

    Called where the failure is first seen, before any clean-up: closing a checkpoint manager or
    leaving jax.distributed waits on barriers that the dead process never reaches.
    """
    import sys

    cause = peer_failure(error)
    gone = gone_on_this_host() if cause is None else None
    if cause is None and not gone:
        return
    message = lost_process_error(cause or error, checkpoints, gone)
    sys.stdout.flush()
    sys.stderr.write(f"diffjax: error: LostProcessError: {' '.join(str(message).split())}\n")
    sys.stderr.flush()
    os._exit(EXIT_LOST_PROCESS)


def lost_processes(error: BaseException) -> list[int]:
    """The processes that look gone: dead pids on this host, or the host the error names."""
    host = socket.gethostname()
    peer_ips = set(re.findall(r"\[?(\d{1,3}(?:\.\d{1,3}){3}|[0-9a-f:]+:[0-9a-f:]+)\]?:\d+",
                              str(error)))
    elsewhere = [index for index, record in _PEERS.items()
                 if record["host"] != host and peer_ips & set(record.get("addresses", []))]
    return sorted(gone_on_this_host() + elsewhere)


def describe(index: int) -> str:
    role = ", the coordinator" if index == 0 else ""  # JAX's service lives with process 0
    record = _PEERS.get(index)
    if not record:
        return f"process {index}{role}"
    return f"process {index}{role} (pid {record['pid']} on {record['host']})"


def lost_process_error(error: BaseException, checkpoints: str | None,
                       lost: list[int] | None = None) -> LostProcessError:
    lost = lost_processes(error) if lost is None else lost
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
    return LostProcessError(f"lost {who} ({first_line}); process {jax.process_index()} stops "
                            f"too: {resume}.")


def _client():
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def start_watchdog(checkpoints: str | None) -> None:
    """Watches the other processes of this job from a daemon thread (multi-process only)."""
    import threading
    import time

    _WATCHDOG["checkpoints"] = checkpoints
    if jax.process_count() == 1 or _WATCHDOG["thread"] is not None or _client() is None:
        return
    client, me, host = _client(), jax.process_index(), socket.gethostname()
    stop = threading.Event()
    last_seen: dict[int, tuple[str, float]] = {}

    def lost(index: int, why: str) -> None:
        message = lost_process_error(RuntimeError(why), _WATCHDOG["checkpoints"], [index])
        import sys

        sys.stderr.write(f"diffjax: error: LostProcessError: {' '.join(str(message).split())}\n")
        sys.stderr.flush()
        os._exit(EXIT_LOST_PROCESS)

    def watch() -> None:
        while not stop.wait(WATCHDOG_PERIOD_S):
            now = time.monotonic()
            # Before any call to the coordinator, which may fail or stall once a peer is gone.
            for index in gone_on_this_host():
                lost(index, f"its pid {_PEERS[index]['pid']} no longer exists")
            try:
                client.key_value_set(_ALIVE_KEY.format(me), str(time.time()),
                                     allow_overwrite=True)
                # Two directory reads per period whatever the number of processes: the
                # coordinator serves O(processes) requests per period, not O(processes^2).
                done = {_index(k) for k, _ in client.key_value_dir_get(_DONE_KEY.format(""))}
                beats = {_index(k): v for k, v in
                         client.key_value_dir_get(_ALIVE_KEY.format(""))}
                for index, record in _PEERS.items():
                    if index == me or index in done:
                        continue
                    if record["host"] == host:
                        continue  # checked above, by its pid
                    beat = beats.get(index)
                    previous = last_seen.get(index)
                    if previous is None or beat != previous[0]:
                        last_seen[index] = (beat, now)
                    elif now - previous[1] > STALE_PEER_S:
                        lost(index, f"no heartbeat for {now - previous[1]:.0f}s")
            except Exception as error:  # noqa: BLE001 - the coordinator itself is unreachable
                if stop.is_set():
                    return
                if me != 0:
                    lost(0, f"the coordination service is unreachable ({type(error).__name__})")

    thread = threading.Thread(target=watch, name="diffjax-peer-watchdog", daemon=True)
    _WATCHDOG.update(thread=thread, stop=stop)
    thread.start()


def stop_watchdog() -> None:
    """Marks this process done (its exit is not a loss) and stops watching."""
    if _WATCHDOG["thread"] is None:
        return
    _WATCHDOG["stop"].set()
    try:
        _client().key_value_set(_DONE_KEY.format(jax.process_index()), "1", allow_overwrite=True)
    except Exception:  # noqa: BLE001 - shutting down anyway
        pass
    _WATCHDOG["thread"].join(timeout=5)
    _WATCHDOG["thread"] = None


def _index(key: str) -> int:
    return int(key.rstrip("/").rsplit("/", 1)[-1])
