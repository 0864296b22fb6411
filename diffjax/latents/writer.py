"""Writes a latent dataset: an image split encoded by a VAE into ArrayRecord shards.

Each process writes the shards k with k % process_count == process_index, so the files are the
same whatever the number of processes. Nothing half-written is ever taken as complete:

- a shard is written under a temporary name, its statistics file next to it, and only then
  renamed to its final name: a shard file that exists is complete;
- `plan.json` (the VAE fingerprint, resolution, views, dtype, ...) is written before any shard and
  compared on every rerun, so a resumed run cannot mix latents of two VAEs;
- `metadata.json`, which readers require, is written last by `finalize` (process 0, after every
  process finished), once every shard is there with the expected number of records.

A rerun skips complete shards and rewrites incomplete ones: it continues where it stopped.

Pixel-space models cache the (center-cropped) images themselves (`content="pixels"`, no VAE), and
text-to-image datasets add the text encoder's outputs per record (`text`, see text_cache.py); the
plan then names the encoder, its settings and the fingerprint of its weights as it names the VAE.
Shards are written by ArrayRecord's own file layer: use a local or mounted (gcsfuse) directory
(the JSON files go through diffjax/storage/filesystem.py).

Typical use (what `--mode=encode_latents` does on every process):

    vae = load_vae(folder)                       # this process's devices
    plan = make_plan(config, vae, split, len(source))
    write_shards(directory, source, vae.encode, plan, batch_size=64,
                 process_index=jax.process_index(), process_count=jax.process_count())
    # barrier, then on process 0:
    finalize(directory)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from diffjax.data.pipeline import DataError
from diffjax.latents import preprocessing, records
from diffjax.storage import filesystem

DEFAULT_EXAMPLES_PER_SHARD = 1000

EncodeFn = Callable[[np.ndarray], tuple[Any, Any]]
# captions of a batch of examples -> the text fields of records.TextLayout, [B, ...] each.
TextFn = Callable[[list[list[str]]], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class LatentPlan:
    """Everything that defines a latent dataset's content; stored as plan.json."""

    dataset: str
    split: str
    num_examples: int
    resolution: int
    num_channels: int
    latent_shape: tuple[int, int, int]
    num_views: int
    storage_dtype: str
    scale: float
    shift: float
    vae_fingerprint: str
    vae: str
    examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD
    preprocessing: str = "adm_center_crop"
    format: str = records.FORMAT
    content: str = "latents"  # or "pixels": uint8 images instead of posterior mean/std
    text: dict | None = None  # text_cache.text_plan(): the encoder and the text layout

    def as_json(self) -> dict[str, Any]:
        value = dataclasses.asdict(self)
        value["latent_shape"] = list(self.latent_shape)
        # Latent-only datasets keep the plan.json of earlier versions (their reruns resume).
        if value["content"] == "latents":
            del value["content"]
        if value["text"] is None:
            del value["text"]
        return value

    @property
    def shards(self) -> list[tuple[int, int]]:
        return records.shard_ranges(self.num_examples, self.examples_per_shard)

    @property
    def layout(self) -> records.RecordLayout:
        from diffjax.latents.text_cache import text_layout

        return records.RecordLayout(tuple(self.latent_shape), self.storage_dtype, self.content,
                                    text_layout(self.text))


def make_plan(config, vae, split: str, num_examples: int, *,
              examples_per_shard: int = DEFAULT_EXAMPLES_PER_SHARD,
              text: dict | None = None) -> LatentPlan:
    """The plan of encoding `split` of config.data.dataset with `vae` (a `VAE`; None caches the
    images themselves), with the text plan of `text_cache.text_plan` for captioned data."""
    d = config.data
    records.storage_dtype(d.latent_dtype)
    preprocessing.check_num_views(d.latent_views)
    size, channels = int(d.image_size), int(d.num_channels)
    if vae is None:
        shape, scale, shift, fingerprint, name = (size, size, channels), 1.0, 0.0, "", "pixels"
    else:
        shape, scale, shift = tuple(vae.latent_shape(size)), vae.scale, vae.shift
        fingerprint, name = vae.fingerprint, vae.name
    return LatentPlan(
        dataset=d.image_folder or d.dataset, split=split, num_examples=int(num_examples),
        resolution=size, num_channels=channels, latent_shape=shape,
        num_views=int(d.latent_views), storage_dtype=d.latent_dtype, scale=scale, shift=shift,
        vae_fingerprint=fingerprint, vae=name, examples_per_shard=examples_per_shard,
        content="latents" if vae is not None else "pixels", text=text)


def _check_plan(directory: str, plan: LatentPlan) -> None:
    """Writes plan.json, or checks that an earlier run wrote the same."""
    path = filesystem.join(directory, records.PLAN_FILE)
    existing = records.read_json(path)
    wanted = plan.as_json()
    if existing is None:
        filesystem.makedirs(directory)
        records.write_json(path, wanted)
        return
    for key in sorted(set(existing) | set(wanted)):
        if existing.get(key) != wanted.get(key):
            raise DataError(
                f"{directory} holds latents of another configuration ({key}: "
                f"{existing.get(key)!r} there, {wanted.get(key)!r} now); set "
                f"--config.data.latent_dir to a new folder or delete this one.")


def _read_images(source, indices: Sequence[int]
                 ) -> tuple[list[np.ndarray], np.ndarray, list[list[str]]]:
    keys = [int(i) for i in indices]
    rows = source.__getitems__(keys) if hasattr(source, "__getitems__") else [
        source[i] for i in keys]
    images = [np.asarray(row["image"]) for row in rows]
    labels = np.asarray([int(row.get("label", 0)) for row in rows], np.int32)
    return images, labels, [list(row.get("captions", ())) for row in rows]


class _ShardStatistics:
    """Per-channel sums over the stored latents, to report their mean and std."""

    def __init__(self, channels: int):
        self.count = 0
        self.sum = np.zeros(channels)
        self.sum_squares = np.zeros(channels)  # of the posterior mean
        self.sum_variance = np.zeros(channels)  # of the posterior std^2

    def add(self, mean: np.ndarray, std: np.ndarray) -> None:
        mean, std = mean.astype(np.float64), std.astype(np.float64)
        axes = tuple(range(mean.ndim - 1))
        self.count += int(np.prod(mean.shape[:-1]))
        self.sum += mean.sum(axes)
        self.sum_squares += np.square(mean).sum(axes)
        self.sum_variance += np.square(std).sum(axes)

    def as_json(self, num_records: int) -> dict[str, Any]:
        return {"num_records": num_records, "count": self.count, "sum": self.sum.tolist(),
                "sum_squares": self.sum_squares.tolist(),
                "sum_variance": self.sum_variance.tolist()}


def _pixel_views(images: list[np.ndarray], size: int, num_views: int) -> np.ndarray:
    """uint8 [B * num_views, size, size, C]: the center-cropped images, view by view."""
    stacked = preprocessing.views(np.stack([preprocessing.center_crop(i, size) for i in images]),
                                  num_views)
    return stacked.reshape((-1,) + stacked.shape[2:])


def _write_shard(directory: str, index: int, plan: LatentPlan, source, encode_fn: EncodeFn,
                 batch_size: int, progress: Callable[[int], None] | None,
                 text_fn: TextFn | None = None) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    count = len(plan.shards)
    final = filesystem.join(directory, records.shard_name(index, count))
    temporary = filesystem.join(directory, f".{records.shard_name(index, count)}.incomplete")
    filesystem.remove(temporary)  # left by an interrupted run
    start, stop = plan.shards[index]
    layout, views = plan.layout, plan.num_views
    dtype = records.storage_dtype(plan.storage_dtype)
    stats = _ShardStatistics(plan.latent_shape[-1])
    rows = batch_size * views
    writer = ArrayRecordWriter(temporary, "group_size:1")
    written = 0

    def store(pending) -> None:
        nonlocal written
        indices, labels, captions, result = pending
        n = len(indices) * views
        fields = {"label": np.repeat(labels, views), "index": np.repeat(indices, views),
                  "view": np.tile(np.arange(views), len(indices))}
        if plan.content == "pixels":
            fields["image"] = result
            x = result.astype(np.float64) / 127.5 - 1.0
            stats.add(x, np.zeros_like(x))
        else:
            fields["mean"] = np.asarray(result[0])[:n].astype(dtype)
            fields["std"] = np.asarray(result[1])[:n].astype(dtype)
            stats.add(fields["mean"], fields["std"])
        if text_fn is not None:  # every view of an example shares its captions
            kept = int(plan.text["captions_per_image"])
            captions = [texts[:kept] for texts in captions]
            for name, values in text_fn(captions).items():
                fields[name] = np.repeat(values, views, axis=0)
            captions = [texts for texts in captions for _ in range(views)]
        for data in layout.encode_rows(fields, captions):
            writer.write(data)
        written += n
        if progress is not None:
            progress(len(indices))

    try:
        pending = None
        for begin in range(start, stop, batch_size):
            indices = np.arange(begin, min(begin + batch_size, stop))
            images, labels, captions = _read_images(source, indices)
            if plan.content == "pixels":
                result = _pixel_views(images, plan.resolution, views)
            else:
                x = preprocessing.prepare_batch(images, plan.resolution, views)
                if x.shape[0] < rows:  # one compiled shape for every batch; padding is dropped
                    x = np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:],
                                                    x.dtype)])
                result = encode_fn(x)  # dispatched asynchronously: the next batch is read now
            if pending is not None:
                store(pending)
            pending = (indices, labels, captions, result)
        if pending is not None:
            store(pending)
    finally:
        writer.close()
    records.write_json(filesystem.join(directory, records.shard_stats_name(index, count)),
                       stats.as_json(written))
    filesystem.rename(temporary, final)


def pending_shards(directory: str, plan: LatentPlan, process_index: int = 0,
                   process_count: int = 1) -> list[int]:
    """This process's shards that are not complete yet."""
    count = len(plan.shards)
    present = set(filesystem.listdir(directory))
    return [k for k in range(process_index, count, process_count)
            if records.shard_name(k, count) not in present
            or records.shard_stats_name(k, count) not in present]


def write_shards(directory: str, source, encode_fn: EncodeFn | None, plan: LatentPlan, *,
                 batch_size: int = 64, process_index: int = 0, process_count: int = 1,
                 progress: Callable[[int], None] | None = None,
                 text_fn: TextFn | None = None) -> list[int]:
    """Encodes this process's missing shards; returns the shard indices it wrote.

    `source` is random access (len, __getitems__) with records {"image": uint8 [H, W, C],
    "label"}, as a TFDS data source. `encode_fn(x)` maps float32 [batch_size * num_views, R, R,
    C] in [-1, 1] to the posterior (mean, std) in VAE space (`vae.encode`); a fixed batch shape
    is passed so it compiles once (None for `content="pixels"`). `text_fn(captions)` encodes
    the records' "captions" for text plans. `progress(n)` is called after every n images written.
    """
    if (plan.text is None) != (text_fn is None):
        raise ValueError("write_shards needs text_fn exactly when the plan has text.")
    if len(source) != plan.num_examples:
        raise DataError(f"The split has {len(source)} examples but the plan was made for "
                        f"{plan.num_examples}; make the plan with len(source).")
    _check_plan(directory, plan)
    todo = pending_shards(directory, plan, process_index, process_count)
    for index in todo:
        _write_shard(directory, index, plan, source, encode_fn, batch_size, progress, text_fn)
    return todo


def finalize(directory: str) -> dict[str, Any]:
    """Checks that every shard is complete and writes metadata.json (process 0, after all
    processes wrote their shards). Returns the metadata."""
    plan = records.read_json(filesystem.join(directory, records.PLAN_FILE))
    if plan is None:
        raise DataError(f"{directory} has no {records.PLAN_FILE}: no latent dataset was started "
                        f"there; run --mode=encode_latents first.")
    ranges = records.shard_ranges(plan["num_examples"], plan["examples_per_shard"])
    present = set(filesystem.listdir(directory))
    names = [records.shard_name(k, len(ranges)) for k in range(len(ranges))]
    missing = [name for k, name in enumerate(names)
               if name not in present or records.shard_stats_name(k, len(ranges)) not in present]
    if missing:
        raise DataError(f"{len(missing)} of {len(names)} shards of {directory} are not written "
                        f"(first: {missing[0]}); rerun --mode=encode_latents with the same config "
                        f"(it continues where it stopped).")
    totals = _ShardStatistics(plan["latent_shape"][-1])
    for k, (start, stop) in enumerate(ranges):
        shard = records.read_json(filesystem.join(directory,
                                                  records.shard_stats_name(k, len(ranges))))
        if shard["num_records"] != (stop - start) * plan["num_views"]:
            raise DataError(f"{names[k]} holds {shard['num_records']} records, not "
                            f"{(stop - start) * plan['num_views']}; delete it and rerun "
                            f"--mode=encode_latents.")
        totals.count += shard["count"]
        for field in ("sum", "sum_squares", "sum_variance"):
            setattr(totals, field, getattr(totals, field) + np.asarray(shard[field]))
    channel_mean = totals.sum / totals.count
    # Var(z) = Var(mean) + E[std^2] for z = mean + std * noise.
    channel_var = totals.sum_squares / totals.count - channel_mean**2 + \
        totals.sum_variance / totals.count
    overall_mean = float(channel_mean.mean())
    overall_var = float(np.mean(channel_var + channel_mean**2) - overall_mean**2)
    metadata = {
        **plan,
        "num_records": plan["num_examples"] * plan["num_views"],
        "shards": names,
        # Statistics of posterior samples z (VAE space, over all views): LDM sets the scale of a
        # self-trained first stage to 1 / std(z).
        "latent_stats": {"channel_mean": channel_mean.tolist(),
                         "channel_std": np.sqrt(channel_var).tolist(),
                         "mean": overall_mean, "std": math.sqrt(max(overall_var, 0.0))},
        "suggested_scale": 1.0 / math.sqrt(overall_var) if overall_var > 0 else 1.0,
    }
    records.write_json(filesystem.join(directory, records.METADATA_FILE), metadata)
    return metadata
