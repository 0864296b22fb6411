"""Facts about processes on this host, for telling a live job from a dead one (Linux /proc).

Used by the workdir lock (is the holder still running?) and by multi-host failure reports (which
peer died?). A killed process stays a zombie until its parent reaps it; it counts as dead here.
"""

from __future__ import annotations

import os


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may contain spaces: split after its closing ')'.
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22), which tells a recycled pid apart."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    fields = _stat_fields(pid)
    return fields is None or fields[0] not in ("Z", "X")
