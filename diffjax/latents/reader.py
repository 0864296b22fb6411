"""Reads a complete latent dataset as a random-access source, and checks it against a config.

`LatentSource(directory)` behaves like a TFDS data source for Grain: `len`, `__getitem__`,
`__getitems__`, records {"mean", "std" (storage dtype, [h, w, c]), "label", "index", "view"}
(pixel caches: "image" uint8 instead of "mean"/"std"; text caches add "text_states",
"text_mask", "text_pooled", "num_captions" and the "captions" strings, see records.py);
record r is example r // num_views, view r % num_views (see `records.py`), so shuffling records
draws image and flip uniformly. `read_latent_batch` stacks records for the training step, which
draws z = (mean + std * noise - shift) * scale in-graph (`posterior.sample_model_latents`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from diffjax.data.pipeline import DataError
from diffjax.latents import first_stage, records
from diffjax.storage import filesystem


def read_metadata(directory: str) -> dict[str, Any]:
    """metadata.json of a complete latent dataset; a DataError naming the fix otherwise."""
    if not directory:
        raise DataError("data.latent_dir is empty; set --config.data.latent_dir to the folder "
                        "--mode=encode_latents wrote.")
    metadata = records.read_json(filesystem.join(directory, records.METADATA_FILE))
    if metadata is None:
        started = filesystem.exists(filesystem.join(directory, records.PLAN_FILE))
        state = ("is incomplete (its encoding was interrupted)" if started
                 else "does not hold a latent dataset")
        raise DataError(f"{directory} {state}; run --mode=encode_latents with "
                        f"--config.data.latent_dir={directory} (it continues where it stopped).")
    if metadata.get("format") != records.FORMAT:
        raise DataError(f"{directory}/{records.METADATA_FILE} has format "
                        f"{metadata.get('format')!r}, not {records.FORMAT!r}; re-encode it with "
                        f"this diffjax (--mode=encode_latents into a new folder).")
    return metadata


class LatentSource:
    """Random access to the records of a complete latent dataset (picklable, for Grain)."""

    def __init__(self, directory: str):
        from grain.sources import ArrayRecordDataSource

        self.directory = directory
        self.metadata = read_metadata(directory)
        from diffjax.latents.text_cache import text_layout

        self.layout = records.RecordLayout(tuple(self.metadata["latent_shape"]),
                                           self.metadata["storage_dtype"],
                                           self.metadata.get("content", "latents"),
                                           text_layout(self.metadata.get("text")))
        paths = [filesystem.join(directory, name) for name in self.metadata["shards"]]
        missing = [p for p in paths if not filesystem.exists(p)]
        if missing:
            raise DataError(f"{missing[0]} is missing from the latent dataset; rerun "
                            f"--mode=encode_latents with --config.data.latent_dir={directory}.")
        self._source = ArrayRecordDataSource(paths)
        if len(self._source) != self.metadata["num_records"]:
            raise DataError(f"{directory} holds {len(self._source)} records, its metadata says "
                            f"{self.metadata['num_records']}; re-encode it into a new folder.")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.metadata["latent_shape"])

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index) -> dict[str, Any]:
        return self.layout.decode(self._source[int(index)])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self.layout.decode(data)
                for data in self._source.__getitems__([int(i) for i in indices])]

    def __repr__(self) -> str:
        return f"LatentSource({self.directory!r}, {len(self)} records)"


def read_latent_batch(source: LatentSource, indices: np.ndarray) -> dict[str, np.ndarray]:
    """{"mean", "std": [B, h, w, c] (storage dtype) or "image", "label": int32 [B], and the text
    fields of text caches} of `indices`."""
    rows = source.__getitems__([int(i) for i in indices])
    names = [n for n in ("mean", "std", "image", *records.TEXT_FIELDS) if n in rows[0]]
    batch = {name: np.stack([r[name] for r in rows]) for name in names}
    batch["label"] = np.asarray([r["label"] for r in rows], np.int32)
    return batch


def check_latent_metadata(metadata: dict[str, Any], config, *, vae=None,
                          model_input_shape: Sequence[int] | None = None) -> None:
    """Raises one DataError naming the config key to change when the latents do not fit.

    Checks: data.dataset and data.image_size against what was encoded; the latent shape against
    `model_input_shape` (default: the shape `config.autoencoder` gives `data.image_size` images,
    `first_stage.latent_shape`); autoencoder.scale / shift, when set, against the scale and shift
    recorded at encoding; and, given the `vae` that will decode samples, that it is the VAE that
    encoded the latents and uses the same scale and shift.
    """
    where = f"the latents in {config.data.latent_dir or 'data.latent_dir'}"
    dataset = config.data.get("image_folder", "") or config.data.dataset
    if metadata["dataset"] != dataset:
        key = "image_folder" if config.data.get("image_folder", "") else "dataset"
        raise DataError(f"{where} encode dataset {metadata['dataset']!r}; set "
                        f"--config.data.{key}={metadata['dataset']} (FID statistics and "
                        f"labels come from it) or point data.latent_dir at latents of "
                        f"{dataset!r}.")
    if metadata["resolution"] != config.data.image_size:
        raise DataError(f"{where} encode {metadata['resolution']}px images; set "
                        f"--config.data.image_size={metadata['resolution']}.")
    pixels = bool(config.data.get("cache_pixels", False))
    if (metadata.get("content", "latents") == "pixels") != pixels:
        raise DataError(f"{where} hold {metadata.get('content', 'latents')}, but "
                        f"data.cache_pixels={pixels}; set --config.data.cache_pixels="
                        f"{not pixels} or re-encode into a new data.latent_dir.")
    if pixels:
        if tuple(metadata["latent_shape"])[-1] != config.data.num_channels:
            raise DataError(f"{where} hold {metadata['latent_shape'][-1]}-channel images; set "
                            f"--config.data.num_channels={metadata['latent_shape'][-1]}.")
        return
    stored = tuple(metadata["latent_shape"])
    expected = tuple(model_input_shape) if model_input_shape is not None else \
        first_stage.latent_shape(config)
    if stored[-1] != expected[-1]:
        raise DataError(f"{where} have {stored[-1]} channels but the model expects "
                        f"{expected[-1]}; set --config.autoencoder.latent_channels={stored[-1]} "
                        f"(or autoencoder.pretrained to the VAE that encoded them).")
    if stored != expected:
        raise DataError(f"{where} have shape {stored} but the model expects {expected}; set "
                        f"--config.autoencoder.block_out_channels to the encoder's (downsampling "
                        f"{metadata['resolution'] // stored[0]}) or re-encode the dataset.")
    for key in ("scale", "shift"):
        wanted = getattr(config.autoencoder, key)
        if wanted is not None and not np.isclose(float(wanted), metadata[key], rtol=1e-6):
            raise DataError(f"{where} were encoded with {key} {metadata[key]} but "
                            f"autoencoder.{key}={wanted}; set --config.autoencoder.{key}="
                            f"{metadata[key]}.")
    if vae is not None:
        if vae.fingerprint != metadata["vae_fingerprint"]:
            raise DataError(f"{where} were encoded by another VAE (fingerprint "
                            f"{metadata['vae_fingerprint']}, {metadata['vae']}) than the one "
                            f"that decodes ({vae.fingerprint}, {vae.name}); set "
                            f"--config.autoencoder.pretrained to the encoding VAE or re-encode.")
        for key in ("scale", "shift"):
            if not np.isclose(getattr(vae, key), metadata[key], rtol=1e-6):
                raise DataError(f"{where} were encoded with {key} {metadata[key]}, the decoding "
                                f"VAE uses {getattr(vae, key)}; set --config.autoencoder.{key}="
                                f"{metadata[key]}.")


def check_first_stage(config, vae, *, required: bool) -> None:
    """The first stage `vae` that decodes samples (or whose latents a model trains on) is the
    one that encoded data.latent_dir: a first stage trained further since, or another VAE, is
    one DataError naming the fix. Cheap: the latents' metadata and one hash of the VAE's
    parameters. `required=False` (sampling) passes when the latents are gone."""
    directory = config.data.latent_dir
    if not required and not filesystem.exists(filesystem.join(directory,
                                                               records.METADATA_FILE)):
        return
    check_latent_metadata(read_metadata(directory), config, vae=vae)
