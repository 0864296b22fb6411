"""Datasets: TFDS as the catalog, Grain over `tfds.data_source` as the deterministic loader.

The training stream is a pure function of (seed, step): a globally shuffled index sequence,
re-shuffled every epoch, cut into global batches; each process reads only its own slice of every
global batch. So the global batch at step s is the same whatever the number of processes, and the
iterator's state (saved in every checkpoint) is just a position in that sequence.
"""

from __future__ import annotations

import os
from typing import Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from diffjax.data import digits

# Datasets that ship with the package (no download); every other name goes to the TFDS catalog.
EMBEDDED_BUILDERS = {"digits": digits.Builder}


class DataError(RuntimeError):
    """A dataset that cannot be found or read; the message says how to fix it."""


def _data_dir(data_config) -> str | None:
    return os.path.expanduser(data_config.data_dir) if data_config.data_dir else None


def dataset_builder(data_config) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `data.dataset`, preparing it first when it is an embedded dataset."""
    name, data_dir = data_config.dataset, _data_dir(data_config)
    if name in EMBEDDED_BUILDERS:
        builder = EMBEDDED_BUILDERS[name](data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare()
        return builder
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DataError(f"data.dataset={name!r} is not a TFDS dataset ({e}).") from None
    if not builder.is_prepared():
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir_root}. On a machine with "
            f"internet run: tfds build {name} --file_format=array_record "
            f"--data_dir={builder.data_dir_root} (then set --config.data.data_dir to that folder)."
        )
    return builder


def data_source(data_config, split: str):
    """Random-access source of a split (ArrayRecord), with a clear error for other formats."""
    builder = dataset_builder(data_config)
    if split not in builder.info.splits:
        raise DataError(
            f"Split {split!r} does not exist in {data_config.dataset!r}; "
            f"it has {sorted(builder.info.splits)}."
        )
    try:
        return builder.as_data_source(split=split)
    except Exception as e:  # TFDS raises a bare NotImplementedError for tfrecord-only data
        raise DataError(
            f"{data_config.dataset!r} in {builder.data_dir} cannot be read randomly ({e}); "
            f"rebuild it with: tfds build {data_config.dataset} --file_format=array_record"
        ) from None


def check_image_shape(data_config, source) -> None:
    """Fails early when the stored images differ from data.image_size / data.num_channels."""
    image = np.asarray(source[0]["image"])
    want = (data_config.image_size, data_config.image_size, data_config.num_channels)
    if image.shape != want:
        raise DataError(
            f"{data_config.dataset!r} images have shape {image.shape}, but the config asks for "
            f"{want}; set --config.data.image_size={image.shape[0]} "
            f"--config.data.num_channels={image.shape[-1]}."
        )


def read_records(source, indices: np.ndarray) -> dict[str, np.ndarray]:
    records = source.__getitems__([int(i) for i in indices])
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    labels = np.asarray([int(r.get("label", 0)) for r in records], np.int32)
    return {"image": images, "label": labels}


class TrainLoader:
    """Endless, checkpointable stream of this process's slice of every global batch."""

    def __init__(self, data_config, *, global_batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, split: str | None = None, num_threads: int = 2):
        if global_batch_size % process_count:
            raise DataError(
                f"training.batch_size={global_batch_size} is not divisible by the "
                f"{process_count} processes; choose a multiple of {process_count}."
            )
        self.source = data_source(data_config, split or data_config.split)
        check_image_shape(data_config, self.source)
        local = global_batch_size // process_count
        start = process_index * local
        source = self.source

        def read_local_slice(global_indices: np.ndarray) -> dict[str, np.ndarray]:
            return read_records(source, global_indices[start:start + local])

        dataset = (
            grain.MapDataset.range(len(self.source))
            .shuffle(seed=seed)
            .repeat(None)
            .batch(global_batch_size, drop_remainder=True)
            .map(read_local_slice)
        )
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)
        self._iterator = iter(dataset.to_iter_dataset(options))

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        return self._iterator.get_state()

    def set_state(self, state: dict) -> None:
        self._iterator.set_state(state)


def iterate_split(data_config, split: str, batch_size: int, *, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over this process's share of a split (for statistics and likelihoods)."""
    source = data_source(data_config, split)
    check_image_shape(data_config, source)
    indices = np.arange(len(source))[process_index::process_count]
    for begin in range(0, len(indices), batch_size):
        yield read_records(source, indices[begin:begin + batch_size])
