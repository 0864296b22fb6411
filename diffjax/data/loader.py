"""The training stream: a deterministic, checkpointable sequence of global batches (Grain).

The stream is a pure function of (seed, step): a globally shuffled index sequence, re-shuffled
every epoch, cut into global batches; each process reads and decodes only its own slice of every
global batch. So the global batch at step s is the same whatever the number of processes or
loader workers, and the iterator's state (saved in every checkpoint) is one number, the index of
the next global batch: {"next_index": k} (the same format Grain's own iterator wrote, so older
checkpoints resume). Restoring restarts the pipeline at batch k; nothing else is remembered.

Where the work runs:
- `num_workers=0`: Grain's prefetch threads in this process (`num_threads`). TFDS decodes each
  record in Python and holds the GIL, so threads do not add throughput beyond about one core.
- `num_workers=N`: N Grain worker processes (`mp_prefetch`), each reading and decoding whole
  batches (worker i makes batches i, i + N, ...; Grain interleaves them back in order), so
  decoding scales with cores. Workers start on the first batch and stop with `close()`.
Device placement and double buffering are diffjax/data/device_prefetch.py.
"""

from __future__ import annotations

import grain
import numpy as np
from absl import flags

from diffjax.data.pipeline import (DataError, array_fields, check_image_shape, data_source,
                                   read_records)


def _global_batches(source_size: int, *, global_batch_size: int, seed: int, read_local_slice
                    ) -> grain.MapDataset:
    """Random-access dataset whose element k is this process's slice of global batch k."""
    return (
        grain.MapDataset.range(source_size)
        .shuffle(seed=seed)
        .repeat(None)
        .batch(global_batch_size, drop_remainder=True)
        .map(read_local_slice)
    )


class _LocalSlice:
    """Reads one process's rows of a global batch of indices (picklable for worker processes)."""

    def __init__(self, source, start: int, size: int, fields: tuple[str, ...]):
        self.source, self.start, self.size, self.fields = source, start, size, fields

    def __call__(self, global_indices: np.ndarray) -> dict[str, np.ndarray]:
        return read_records(self.source, global_indices[self.start:self.start + self.size],
                            self.fields)


class TrainLoader:
    """Endless, checkpointable stream of this process's slice of every global batch.

    Batches are dicts of numpy arrays, one per numeric record field (images: {"image", "label"};
    latents: {"mean", "std", "label"}). `fields` picks fields (default: all numeric ones).
    `source` replaces the TFDS split of `data_config` by any random-access source (`len`,
    `__getitem__`, `__getitems__`; picklable when num_workers > 0).
    """

    def __init__(self, data_config, *, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, split: str | None = None,
                 num_workers: int | None = None, num_threads: int = 2,
                 worker_buffer_size: int = 2, fields: tuple[str, ...] | None = None,
                 source=None):
        if global_batch_size % process_count:
            raise DataError(
                f"training.batch_size={global_batch_size} is not divisible by the "
                f"{process_count} processes; choose a multiple of {process_count}."
            )
        if num_workers is None:
            num_workers = int(data_config.get("num_workers", 0))
        if num_workers < 0:
            raise ValueError(f"data.num_workers={num_workers}; use 0 (threads in this process) "
                             f"or the number of worker processes.")
        if source is None:
            source = data_source(data_config, split or data_config.split)
            check_image_shape(data_config, source)
        self.source = source
        self.fields = tuple(fields) if fields else array_fields(self.source[0])
        local = global_batch_size // process_count
        self._batches = _global_batches(
            len(self.source), global_batch_size=global_batch_size, seed=seed,
            read_local_slice=_LocalSlice(self.source, process_index * local, local, self.fields))
        self.num_workers = num_workers
        self._num_threads = num_threads
        self._worker_buffer_size = worker_buffer_size
        self._next_index = 0
        self._iterator = None

    def _start(self) -> None:
        remaining = self._batches[self._next_index:]
        if self.num_workers == 0:
            options = grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=4)
            self._iterator = iter(remaining.to_iter_dataset(options))
            return
        # Grain reads absl flags when it starts workers; outside an absl app (notebooks, tests)
        # nothing has parsed them, so their defaults are taken as parsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        # In each worker: one batch at a time, no threads (decoding holds the GIL); the workers'
        # buffers are the prefetch.
        stream = remaining.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                             prefetch_buffer_size=0))
        self._iterator = iter(stream.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=self.num_workers, per_worker_buffer_size=self._worker_buffer_size)))

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._iterator is None:
            self._start()
        batch = next(self._iterator)
        self._next_index += 1
        return batch

    def get_state(self) -> dict:
        """{"next_index": k}: the next batch is global batch k (batches handed out so far)."""
        return {"next_index": self._next_index}

    def set_state(self, state: dict) -> None:
        """Continues at global batch state["next_index"] (what `get_state` returned)."""
        self.close()
        self._next_index = int(state["next_index"])

    def close(self) -> None:
        """Stops prefetch threads and worker processes; the next batch restarts them."""
        iterator, self._iterator = self._iterator, None
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "TrainLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
