"""The text half of a cached dataset: captions encoded once, so that training runs no encoder.

`--mode=encode_latents` with `data.text_encoder` set stores, next to each record's latents (or
pixels, `data.cache_pixels`), the encoder's outputs for up to `data.captions_per_image`
captions of the example (MaxDiffusion's `cache_latents_text_encoder_outputs`): token states,
pooled output and attention mask; training draws one caption per example per step in-graph from
(seed, step). The plan (and so metadata.json) names the encoder and its settings:

    "text": {"encoder": {"name", "folder", "config_folder", "version", "max_length",
                         "fingerprint"},
             "captions_per_image", "length", "width", "pooled_width", "captions",
             "skipped", "null_file"}

A resumed encoding with another encoder, folder, length or weights is refused by the plan check
(`writer._check_plan`); training and sampling compare their config with it (`check_text`).

The null conditioning of classifier-free guidance is the encoding of the empty prompt "" (what
diffusers' pipelines use as the negative prompt), stored once in `text_null.npz` beside the
metadata; `training.caption_null="zeros"` zeroes its states and pooled output instead (SDXL's
force_zeros_for_empty_prompt), keeping the empty prompt's mask. Caption dropout in training and
guidance in sampling read the same `null_conditioning`.
"""

from __future__ import annotations

import io
from typing import Any, Callable, Sequence

import numpy as np

from diffjax.data.pipeline import DataError
from diffjax.latents import records
from diffjax.storage import filesystem as fs

NULL_FILE = "text_null.npz"
NULL_KINDS = ("empty", "zeros")
TEXT_BATCH = 64  # captions per encoder call: one compiled shape


def is_text(config) -> bool:
    return bool(config.data.get("text_encoder", ""))


def encoder_from_config(config):
    """The configured text encoder (diffjax.text), weights loaded."""
    from diffjax.text import load_text_encoder

    d = config.data
    options = {"max_length": int(d.text_max_length)} if d.text_max_length and \
        d.text_encoder != "clip" else {}
    return load_text_encoder(d.text_encoder, d.text_encoder_folder or None, **options)


def conditioning_shapes(config) -> tuple[int, int, int]:
    """(L, D, P) of the configured encoder's outputs, from its config files (no weights)."""
    from diffjax.text import output_shapes

    d = config.data
    return output_shapes(d.text_encoder, d.text_encoder_folder or None,
                         int(d.text_max_length) or None)


def encode_padded(encoder, texts: Sequence[str]
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(states, pooled, mask) of `texts` (at most TEXT_BATCH), run as one padded TEXT_BATCH
    batch, so that every call uses the same compiled encoder."""
    texts = list(texts)
    states, pooled, mask = encoder.encode(texts + [""] * (TEXT_BATCH - len(texts)))
    n = len(texts)
    return np.asarray(states)[:n], np.asarray(pooled)[:n], np.asarray(mask)[:n]


def text_plan(config, encoder, *, source: str, skipped: int) -> dict[str, Any]:
    """The "text" entry of a plan: the encoder's identity and the record layout."""
    states, pooled, _ = encode_padded(encoder, [""])
    return {"encoder": {**encoder.identity(), "config_folder": config.data.text_encoder_folder},
            "captions_per_image": int(config.data.captions_per_image),
            "length": int(states.shape[1]), "width": int(states.shape[2]),
            "pooled_width": int(pooled.shape[1]), "captions": source, "skipped": int(skipped),
            "null_file": NULL_FILE}


def text_layout(text: dict[str, Any] | None) -> records.TextLayout | None:
    if not text:
        return None
    return records.TextLayout(int(text["captions_per_image"]), int(text["length"]),
                              int(text["width"]), int(text["pooled_width"]))


def length_checker(encoder) -> Callable[[str], str | None]:
    """A caption's problem when it is longer than the encoder reads (None when it fits)."""
    limit = encoder.max_length

    def check(caption: str) -> str | None:
        count = encoder.token_counts([caption])[0]
        if count <= limit:
            return None
        return (f"the caption {caption[:50]!r} has {count} tokens, more than the {limit} the "
                f"text encoder reads; shorten it or raise --config.data.text_max_length")

    return check


def encode_captions(encoder, captions: Sequence[Sequence[str]], per_image: int
                    ) -> dict[str, np.ndarray]:
    """The text fields of `records.TextLayout` for each example's captions (the first
    `per_image`; missing ones are zero rows). Equal captions are encoded once; the encoder runs
    on batches of TEXT_BATCH (padded), so it compiles once."""
    kept = [list(c)[:per_image] for c in captions]
    unique = sorted({c for texts in kept for c in texts})
    position = {c: i for i, c in enumerate(unique)}
    parts = [encode_padded(encoder, unique[begin:begin + TEXT_BATCH])
             for begin in range(0, len(unique), TEXT_BATCH)]
    states, pooled, masks = (np.concatenate([p[i] for p in parts]) for i in range(3))
    n = len(kept)
    out = {"text_states": np.zeros((n, per_image, *states.shape[1:]), np.float32),
           "text_mask": np.zeros((n, per_image, masks.shape[1]), np.uint8),
           "text_pooled": np.zeros((n, per_image, pooled.shape[1]), np.float32),
           "num_captions": np.asarray([len(t) for t in kept], np.int32)}
    for row, texts in enumerate(kept):
        for k, caption in enumerate(texts):
            i = position[caption]
            out["text_states"][row, k], out["text_pooled"][row, k] = states[i], pooled[i]
            out["text_mask"][row, k] = masks[i]
    return out


def write_null(directory: str, encoder) -> None:
    """The empty prompt's encoding, float32: states [L, D], mask [L], pooled [P]."""
    states, pooled, mask = encode_padded(encoder, [""])
    buffer = io.BytesIO()
    np.savez(buffer, states=np.asarray(states[0], np.float32), mask=np.asarray(mask[0], np.int32),
             pooled=np.asarray(pooled[0], np.float32))
    fs.write_atomic(fs.join(directory, NULL_FILE), buffer.getvalue())


def read_null(directory: str) -> dict[str, np.ndarray]:
    path = fs.join(directory, NULL_FILE)
    if not fs.exists(path):
        raise DataError(f"{path} is missing: the text cache is incomplete; rerun "
                        f"--mode=encode_latents with --config.data.latent_dir={directory}.")
    with np.load(io.BytesIO(fs.read_bytes(path))) as stored:
        return {name: np.asarray(stored[name]) for name in ("states", "mask", "pooled")}


def null_conditioning(config, directory: str | None = None) -> dict[str, np.ndarray]:
    """The conditioning of the null caption (one example, no batch axis): the empty prompt's
    encoding, or with training.caption_null="zeros" zero states and pooled output."""
    kind = config.training.caption_null
    if kind not in NULL_KINDS:
        raise ValueError(f"training.caption_null={kind!r}; choose one of {list(NULL_KINDS)}.")
    null = read_null(directory or config.data.latent_dir)
    if kind == "zeros":
        null = {"states": np.zeros_like(null["states"]), "mask": null["mask"],
                "pooled": np.zeros_like(null["pooled"])}
    return null


def check_text(metadata: dict[str, Any], config, *, encoder=None) -> None:
    """One DataError naming the config key when the cached text does not fit the config (and,
    given the loaded `encoder`, when other weights encoded it)."""
    where = f"the dataset in {config.data.latent_dir}"
    text = metadata.get("text")
    d = config.data
    if not text:
        raise DataError(f"{where} holds no captions, but data.text_encoder={d.text_encoder!r}; "
                        f"re-encode it with captions (--mode=encode_latents into a new "
                        f"data.latent_dir) or set --config.data.text_encoder=''.")
    recorded = text["encoder"]
    if recorded["name"] != d.text_encoder:
        raise DataError(f"{where} was encoded by the text encoder {recorded['name']!r}; set "
                        f"--config.data.text_encoder={recorded['name']} or re-encode it.")
    if recorded.get("config_folder", "") != d.text_encoder_folder:
        raise DataError(f"{where} was encoded by the text encoder in "
                        f"{recorded.get('config_folder') or 'its pip package'!r}; set "
                        f"--config.data.text_encoder_folder={recorded.get('config_folder', '')} "
                        f"or re-encode it.")
    wanted_length = conditioning_shapes(config)[0]
    if int(text["length"]) != wanted_length:
        raise DataError(f"{where} holds {text['length']} tokens per caption, the config asks "
                        f"for {wanted_length}; set --config.data.text_max_length="
                        f"{text['length']} or re-encode it.")
    if encoder is not None and encoder.fingerprint != recorded["fingerprint"]:
        raise DataError(f"{where} was encoded by other text-encoder weights (fingerprint "
                        f"{recorded['fingerprint']}, {recorded['folder']}) than "
                        f"{encoder.folder} ({encoder.fingerprint}); point "
                        f"data.text_encoder_folder at the encoding weights or re-encode.")
