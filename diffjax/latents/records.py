"""The on-disk format of a latent dataset: file names, the record layout, the metadata.

A latent dataset is a folder:

    plan.json                                what is being written (checked on every resume)
    latents-00000-of-00012.array_record      records of examples [0, S), ArrayRecord group_size 1
    latents-00000-of-00012.json              that shard's record count and latent statistics
    ...
    metadata.json                            written last: the dataset is complete

Shard k holds examples [k S, (k + 1) S) of the split (S = examples_per_shard), each as
`num_views` consecutive records (the image, then its horizontal flip), so record r is example
r // num_views, view r % num_views, whatever the number of processes that wrote it.

One record is fixed-size little-endian bytes: int64 example index, int32 label, int32 view, then
the posterior mean and std, each [h, w, c] in the storage dtype. float16 storage halves the size
(ImageNet-256 with SD-VAE latents and flips: 42 GB instead of 84 GB) at a rounding error of at
most 2^-11 = 4.9e-4 of each value: for SD-VAE latents (std about 5.5 before scaling) a few 1e-3
absolute, about 5e-4 in model space where latents have unit variance. tests/test_latent_dataset.py
measures it on real encodings.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from diffjax.storage import filesystem

FORMAT = "diffjax-latents-1"
PLAN_FILE = "plan.json"
METADATA_FILE = "metadata.json"
STORAGE_DTYPES = {"float16": "<f2", "float32": "<f4"}
_HEADER = np.dtype([("index", "<i8"), ("label", "<i4"), ("view", "<i4")])


def shard_name(index: int, count: int) -> str:
    return f"latents-{index:05d}-of-{count:05d}.array_record"


def shard_stats_name(index: int, count: int) -> str:
    return shard_name(index, count).replace(".array_record", ".json")


def shard_ranges(num_examples: int, examples_per_shard: int) -> list[tuple[int, int]]:
    """[start, stop) example ranges of the shards."""
    return [(start, min(start + examples_per_shard, num_examples))
            for start in range(0, num_examples, examples_per_shard)]


def storage_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(STORAGE_DTYPES[name])
    except KeyError:
        raise ValueError(f"data.latent_dtype={name!r}; choose one of "
                         f"{sorted(STORAGE_DTYPES)}.") from None


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """Bytes <-> {"mean", "std", "label", "index", "view"} for one latent shape and dtype."""

    latent_shape: tuple[int, int, int]
    dtype: str = "float16"

    @property
    def _latent(self) -> np.dtype:
        return np.dtype((storage_dtype(self.dtype), tuple(self.latent_shape)))

    @property
    def record_dtype(self) -> np.dtype:
        return np.dtype(_HEADER.descr + [("mean", self._latent), ("std", self._latent)])

    def encode_batch(self, mean: np.ndarray, std: np.ndarray, labels: np.ndarray,
                     indices: np.ndarray, views: np.ndarray) -> list[bytes]:
        records = np.zeros(len(mean), self.record_dtype)
        records["index"], records["label"], records["view"] = indices, labels, views
        records["mean"], records["std"] = mean, std
        return [row.tobytes() for row in records]

    def decode(self, data: bytes) -> dict[str, Any]:
        record = np.frombuffer(data, self.record_dtype)
        if record.shape != (1,):
            raise ValueError(f"a latent record of {len(data)} bytes does not have the layout "
                             f"{self}; the dataset's metadata does not match its shards.")
        row = record[0]
        return {"mean": np.array(row["mean"]), "std": np.array(row["std"]),
                "label": np.int32(row["label"]), "index": np.int64(row["index"]),
                "view": np.int32(row["view"])}


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file's object, or None when the file does not exist."""
    if not filesystem.exists(path):
        return None
    return json.loads(filesystem.read_text(path))


def write_json(path: str, value: dict[str, Any]) -> None:
    filesystem.write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
