"""Datasets: TFDS as the catalog, random-access ArrayRecord sources, records stacked into batches.

`dataset_builder` / `data_source` find a split (embedded datasets are prepared on first use) and
turn every way it can be missing into a DataError naming the fix; `read_records` decodes records
into a batch of arrays, one per numeric field, so that image datasets ({"image", "label"}) and
latent datasets ({"mean", "std", "label"}) go through the same code. The training stream on top
of this is diffjax/data/loader.py.
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from diffjax.data import digits
from diffjax.runtime.cli import UserError

# Datasets that ship with the package (no download); every other name goes to the TFDS catalog.
EMBEDDED_BUILDERS = {"digits": digits.Builder,
                     "digits_captioned": digits.CaptionedBuilder}


class _NoOpenCVAdvice(logging.Filter):
    """TFDS advises installing OpenCV (through absl's logger) the first time it decodes an image:
    for diffjax's small images PIL is no bottleneck, and a notebook shows the advice as a
    warning. Exactly that message is dropped; every other warning passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("OpenCV is not installed")


# On absl's logger, where TFDS logs it, once per process (the CLI's log filters cover it too).
if not any(isinstance(f, _NoOpenCVAdvice) for f in logging.getLogger("absl").filters):
    logging.getLogger("absl").addFilter(_NoOpenCVAdvice())


class DataError(UserError, RuntimeError):
    """A dataset that cannot be found or read; the message says how to fix it."""


def _data_dir(data_config) -> str | None:
    return os.path.expanduser(data_config.data_dir) if data_config.data_dir else None


def _check_data_dir(data_dir: str | None, *, writes: bool) -> None:
    """data.data_dir is a folder, and one TFDS can prepare a dataset in when it must: one line
    naming the key instead of TFDS's progress lines and a bare NotADirectoryError."""
    if not data_dir or "://" in data_dir:
        return
    fix = ("set --config.data.data_dir to a folder (created if missing), or to '' for TFDS's "
           "default ~/tensorflow_datasets")
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"data.data_dir={data_dir!r} is a file, not a folder; {fix}.")
    existing = data_dir
    while not os.path.exists(existing):  # the folder TFDS would create it in
        existing = os.path.dirname(existing.rstrip("/")) or "."
    if not os.path.isdir(existing):
        raise DataError(f"data.data_dir={data_dir!r} is inside the file {existing}; {fix}.")
    if writes and not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"data.data_dir={data_dir!r} is not writable ({existing}: permission "
                        f"denied), and the dataset must be prepared there first; {fix} "
                        f"you can write to.")


def dataset_builder(data_config) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `data.dataset`, preparing it first when it is an embedded dataset."""
    name, data_dir = data_config.dataset, _data_dir(data_config)
    _check_data_dir(data_dir, writes=False)
    if name in EMBEDDED_BUILDERS:
        builder = EMBEDDED_BUILDERS[name](data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            _check_data_dir(data_dir, writes=True)
            try:
                builder.download_and_prepare()
            except OSError as error:  # a full disk, a quota
                raise DataError(f"{name!r} could not be prepared in data.data_dir="
                                f"{data_dir or builder.data_dir_root!r} "
                                f"({os.strerror(error.errno) if error.errno else error}); set "
                                f"--config.data.data_dir to a folder with room.") from None
        return builder
    try:
        builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        # TFDS's own message lists its whole catalogue; the closest names are what helps.
        known = sorted(set(tfds.list_builders()) | set(EMBEDDED_BUILDERS))
        close = difflib.get_close_matches(name.split("/")[0], known, n=3)
        hint = f" (closest: {', '.join(close)})" if close else ""
        raise DataError(f"data.dataset={name!r} is not a TFDS dataset{hint}; pass a name from "
                        f"tfds.list_builders() or the embedded 'digits'.") from None
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
    if split.split("[")[0] not in builder.info.splits:  # a slice "train[:64]" reads randomly too
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
    """Fails early when stored images differ from data.image_size / data.num_channels.

    Record types without an "image" field (e.g. latents) are not checked here.
    """
    first = source[0]
    if "image" not in first:
        return
    image = np.asarray(first["image"])
    want = (data_config.image_size, data_config.image_size, data_config.num_channels)
    if image.shape != want:
        raise DataError(
            f"{data_config.dataset!r} images have shape {image.shape}, but the config asks for "
            f"{want}; set --config.data.image_size={image.shape[0]} "
            f"--config.data.num_channels={image.shape[-1]}."
        )


def array_fields(record: dict) -> tuple[str, ...]:
    """The record's top-level numeric fields: what a batch carries (ids, strings, nested dicts
    such as CelebA's attributes are left out)."""
    return tuple(sorted(name for name, value in record.items()
                        if not isinstance(value, dict)
                        and np.asarray(value).dtype.kind in "biuf"))


def stack_records(records: list[dict], fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{field: [N, ...] array}; 64-bit integers become int32 (labels), other dtypes are kept.

    A batch always has "label": records without one (unlabelled datasets) get zeros, which only
    conditional models would read.
    """
    batch = {}
    for name in fields:
        values = np.stack([np.asarray(r[name]) for r in records])
        if values.dtype.kind in "iu" and values.dtype.itemsize == 8:
            values = values.astype(np.int32)
        batch[name] = values
    if "label" not in batch:
        batch["label"] = np.zeros((len(records),), np.int32)
    return batch


def read_records(source, indices: np.ndarray, fields: tuple[str, ...] | None = None
                 ) -> dict[str, np.ndarray]:
    """The records at `indices`, decoded and stacked per field (`array_fields` by default)."""
    records = source.__getitems__([int(i) for i in indices])
    return stack_records(records, fields or array_fields(records[0]))


def iterate_split(data_config, split: str, batch_size: int, *, process_index: int = 0,
                  process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over this process's share of a split (for statistics and likelihoods)."""
    source = data_source(data_config, split)
    check_image_shape(data_config, source)
    fields = array_fields(source[0])
    indices = np.arange(len(source))[process_index::process_count]
    for begin in range(0, len(indices), batch_size):
        yield read_records(source, indices[begin:begin + batch_size], fields)
