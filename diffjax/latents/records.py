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
the posterior mean and std, each [h, w, c] in the storage dtype (or, for pixel-space models,
`content="pixels"`, the uint8 image [h, w, c] instead).

Text-to-image datasets (`TextLayout`) add per record the text encoder's outputs for K captions
of the example (every view shares them): int32 caption count n <= K, token states [K, L, D] and
pooled outputs [K, P] in the storage dtype, the attention mask [K, L] as uint8 (rows >= n are
zeros), then, after the fixed-size part, the captions themselves as UTF-8 JSON (a list).

float16 storage halves the size
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


CONTENTS = ("latents", "pixels")
TEXT_FIELDS = ("text_states", "text_mask", "text_pooled", "num_captions")


@dataclasses.dataclass(frozen=True)
class TextLayout:
    """The text part of a record: K captions of L tokens, D-wide states, P-wide pooled."""

    captions: int
    length: int
    width: int
    pooled_width: int

    def fields(self, dtype: np.dtype) -> list:
        k, length = self.captions, self.length
        return [("num_captions", "<i4"), ("text_states", (dtype, (k, length, self.width))),
                ("text_mask", (np.uint8, (k, length))),
                ("text_pooled", (dtype, (k, self.pooled_width)))]


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """Bytes <-> {"mean", "std" | "image", "label", "index", "view"[, text fields, "captions"]}
    for one latent (or image) shape and storage dtype."""

    latent_shape: tuple[int, int, int]
    dtype: str = "float16"
    content: str = "latents"
    text: TextLayout | None = None

    @property
    def _latent(self) -> np.dtype:
        return np.dtype((storage_dtype(self.dtype), tuple(self.latent_shape)))

    @property
    def record_dtype(self) -> np.dtype:
        if self.content == "pixels":
            fields = [("image", np.dtype((np.uint8, tuple(self.latent_shape))))]
        else:
            fields = [("mean", self._latent), ("std", self._latent)]
        if self.text is not None:
            fields += self.text.fields(storage_dtype(self.dtype))
        return np.dtype(_HEADER.descr + fields)

    def encode_batch(self, mean: np.ndarray, std: np.ndarray, labels: np.ndarray,
                     indices: np.ndarray, views: np.ndarray) -> list[bytes]:
        return self.encode_rows({"mean": mean, "std": std, "label": labels, "index": indices,
                                 "view": views})

    def encode_rows(self, fields: dict[str, np.ndarray],
                    captions: list[list[str]] | None = None) -> list[bytes]:
        """One record per row of the arrays in `fields` (names of `record_dtype`), each followed
        by its captions (text layouts)."""
        rows = len(fields["index"])
        records = np.zeros(rows, self.record_dtype)
        for name, values in fields.items():
            records[name] = values
        if self.text is None:
            return [row.tobytes() for row in records]
        return [row.tobytes() + json.dumps(texts, ensure_ascii=False).encode("utf-8")
                for row, texts in zip(records, captions)]

    def decode(self, data: bytes) -> dict[str, Any]:
        size = self.record_dtype.itemsize
        record = np.frombuffer(data[:size], self.record_dtype)
        if record.shape != (1,) or (self.text is None and len(data) != size):
            raise ValueError(f"a latent record of {len(data)} bytes does not have the layout "
                             f"{self}; the dataset's metadata does not match its shards.")
        row = record[0]
        decoded = {name: np.array(row[name]) for name in row.dtype.names
                   if name not in ("index", "label", "view", "num_captions")}
        decoded.update(label=np.int32(row["label"]), index=np.int64(row["index"]),
                       view=np.int32(row["view"]))
        if self.text is not None:
            decoded["num_captions"] = np.int32(row["num_captions"])
            decoded["captions"] = json.loads(bytes(data[size:]).decode("utf-8"))
        return decoded


def read_json(path: str) -> dict[str, Any] | None:
    """A JSON file's object, or None when the file does not exist."""
    if not filesystem.exists(path):
        return None
    return json.loads(filesystem.read_text(path))


def write_json(path: str, value: dict[str, Any]) -> None:
    filesystem.write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")
