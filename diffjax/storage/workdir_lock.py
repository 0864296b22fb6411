"""One writer per workdir: a lock file held by the training job (process 0 on multi-host).

Two training jobs in one workdir would resume each other's checkpoints and overwrite them, so a
second writer ends at once with one line naming the holder. Read-only modes (eval, sample,
likelihood) never take it and run beside training.

The lock is WORKDIR/.diffjax.lock, a small JSON record: host, pid, the process's start time (so a
recycled pid is not mistaken for the holder), the command, and a heartbeat refreshed every
HEARTBEAT_S by a daemon thread. A lock is stale, and is reclaimed with a warning that says why,
when
  - its holder ran on this host and that process no longer exists (SIGKILL, OOM, a crash), or
  - its holder ran on another host and the heartbeat is older than STALE_AFTER_S (a host cannot
    see another host's processes; a live holder refreshes far more often than that).
Creation is atomic on local and NFS-like file systems (O_CREAT | O_EXCL). Object stores (gs://)
have no exclusive create through this path layer: there the lock writes its record, waits and
reads it back, which detects all but a race of two starts within that window.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from diffjax.runtime import local_processes
from diffjax.runtime.cli import UserError
from diffjax.storage import filesystem as fs

LOCK_FILE = ".diffjax.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
_OBJECT_STORE_SETTLE_S = 2.0
# A record is written in one small write; an unreadable one younger than this is being written.
_WRITE_GRACE_S = 5.0


class WorkdirBusyError(UserError, RuntimeError):
    """Another live job writes to this workdir; the message names it and the fixes."""


def describe_holder(record: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))
    age = time.time() - float(record.get("heartbeat", 0))
    return (f"pid {record.get('pid')} on host {record.get('host')}, started {started}, "
            f"heartbeat {age:.0f}s ago")


def staleness(record: dict[str, Any], *, now: float | None = None,
              host: str | None = None) -> str | None:
    """Why the holder is gone, or None while it may still be alive."""
    now = time.time() if now is None else now
    host = host or socket.gethostname()
    pid = int(record.get("pid", -1))
    if record.get("host") == host:
        if not local_processes.alive(pid):
            return f"process {pid} no longer exists"
        started = record.get("process_start")
        if started is not None and local_processes.start_time(pid) not in (None, started):
            return f"pid {pid} now belongs to another process"
        return None
    age = now - float(record.get("heartbeat", 0))
    if age > STALE_AFTER_S:
        return f"its heartbeat is {age:.0f}s old (limit {STALE_AFTER_S:.0f}s)"
    return None


class WorkdirLock:
    """`with WorkdirLock(workdir): ...` or acquire()/release()."""

    def __init__(self, workdir: str, purpose: str = "training"):
        self.path = fs.join(workdir, LOCK_FILE)
        self.purpose = purpose
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _record(self) -> dict[str, Any]:
        now = time.time()
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "process_start": local_processes.start_time(os.getpid()), "started": now,
                "heartbeat": now, "purpose": self.purpose, "token": self.token,
                "command": " ".join(sys.argv)[:500]}

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(fs.read_text(self.path))
        except (OSError, ValueError):
            return None

    def _create(self, record: dict[str, Any]) -> bool:
        payload = json.dumps(record).encode()
        if fs.is_local(self.path):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(payload)
            return True
        if fs.exists(self.path):
            return False
        fs.write_atomic(self.path, payload)
        time.sleep(_OBJECT_STORE_SETTLE_S)
        current = self._read()
        return current is not None and current.get("token") == self.token

    def _age_of_file(self) -> float:
        try:
            return time.time() - os.path.getmtime(self.path) if fs.is_local(self.path) else 1e9
        except OSError:
            return 1e9

    def acquire(self) -> "WorkdirLock":
        fs.makedirs(os.path.dirname(self.path) if fs.is_local(self.path)
                    else self.path.rsplit("/", 1)[0])
        for _ in range(5):
            if self._create(self._record()):
                self.held = True
                self._start_heartbeat()
                return self
            holder = self._read()
            if holder is None:
                if self._age_of_file() < _WRITE_GRACE_S:
                    time.sleep(0.5)  # another job is writing its record right now
                    continue
                reason = "its lock file is unreadable"
            else:
                reason = staleness(holder)
                if reason is None:
                    raise WorkdirBusyError(
                        f"{os.path.dirname(self.path)} is in use by another diffjax "
                        f"{holder.get('purpose', 'training')} job ({describe_holder(holder)}); "
                        f"wait for it to finish or pass another --workdir (if that job is dead "
                        f"on another host, delete {self.path}).")
            logging.warning("Reclaiming the workdir lock %s: %s%s.", self.path, reason,
                            f" (was held by {describe_holder(holder)})" if holder else "")
            fs.remove(self.path)
        raise WorkdirBusyError(f"could not take the workdir lock {self.path}: other jobs keep "
                               f"creating it; make sure only one job writes to this workdir.")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                record = self._read()
                if record is None or record.get("token") != self.token:
                    logging.warning("The workdir lock %s was taken over by another job.",
                                    self.path)
                    return
                record["heartbeat"] = time.time()
                try:
                    fs.write_atomic(self.path, json.dumps(record))
                except OSError:
                    pass  # a full disk must not kill training; the next beat retries

        self._thread = threading.Thread(target=beat, name="diffjax-workdir-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        record = self._read()
        if record is not None and record.get("token") == self.token:
            fs.remove(self.path)
        self.held = False

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# Workdirs whose lock this job already holds, by path: the CLI takes the lock before validating
# the config (so a second writer fails at once) and `train()` finds it here instead of taking it
# again. Every process records the path (process 0 with its lock, the others with None), so
# all of them skip the agreement collective together.
_HELD: dict[str, "WorkdirLock | None"] = {}


def lock_for_job(workdir: str, purpose: str = "training") -> WorkdirLock | None:
    """Process 0 takes the lock; every process learns whether it got it (multi-host safe).

    Returns the held lock on process 0 and None elsewhere; raises WorkdirBusyError everywhere
    when process 0 could not take it. A lock this process already holds is returned as is.
    """
    import jax

    from diffjax.parallel.distributed import broadcast_from_chief

    path = fs.join(fs.absolute(workdir), LOCK_FILE)
    if path in _HELD:
        return _HELD[path]
    lock, message = None, ""
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir, purpose).acquire()
        except WorkdirBusyError as error:
            message = str(error)
    if not broadcast_from_chief(int(lock is not None) if jax.process_index() == 0 else 0):
        raise WorkdirBusyError(message or "process 0 could not take the workdir lock (see its "
                                          "log); another job writes to this workdir.")
    _HELD[path] = lock
    return lock


def lock_held(workdir: str) -> bool:
    """Whether this job took the workdir's lock already (the same answer on every process)."""
    return fs.join(fs.absolute(workdir), LOCK_FILE) in _HELD


def release_job_lock(workdir: str) -> None:
    """Releases what `lock_for_job` took (on every process, so all forget it together)."""
    lock = _HELD.pop(fs.join(fs.absolute(workdir), LOCK_FILE), None)
    if lock is not None:
        lock.release()
