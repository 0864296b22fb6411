"""Prefetch to device: the next global batches already on the accelerators (double buffering).

`DevicePrefetch(loader, sharding, size=2)` turns a host loader's local batches into global
`jax.Array`s with `jax.make_array_from_process_local_data` and keeps `size` of them in flight:
when the training loop takes batch k, batch k + size - 1 has been sent already, so its host-to-
device copy overlaps step k's compute instead of delaying step k + 1 (the step itself is
dispatched asynchronously, so this needs no thread).

The checkpointed state counts only the batches handed to the caller: the `size - 1` batches in
flight are not consumed, and resuming from `get_state()` yields exactly the batches that would
have come next. `set_state` drops the batches in flight.
"""

from __future__ import annotations

import collections
from typing import Any

import jax


def global_batch(local_batch: dict, sharding) -> dict[str, jax.Array]:
    """This process's rows of every field -> global arrays laid out by `sharding`."""
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in local_batch.items()}


class DevicePrefetch:
    """Iterator of global device batches over a host loader with get_state/set_state/close."""

    def __init__(self, loader, sharding, size: int = 2):
        if size < 1:
            raise ValueError(f"data.prefetch={size}; use 1 (no prefetch) or more batches.")
        self.loader = loader
        self.sharding = sharding
        self.size = size
        self._in_flight: collections.deque = collections.deque()

    def __iter__(self) -> "DevicePrefetch":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        # Lazy: nothing is read before the first batch is asked for (a resume sets the state
        # first), and the buffer refills after each batch handed out.
        while len(self._in_flight) < self.size:
            self._in_flight.append(global_batch(next(self.loader), self.sharding))
        return self._in_flight.popleft()

    def get_state(self) -> dict[str, Any]:
        """The loader's state as of the last batch handed out (batches in flight not counted)."""
        state = dict(self.loader.get_state())
        state["next_index"] = int(state["next_index"]) - len(self._in_flight)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        self._in_flight.clear()
        self.loader.set_state(state)

    def close(self) -> None:
        self._in_flight.clear()
        close = getattr(self.loader, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "DevicePrefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
