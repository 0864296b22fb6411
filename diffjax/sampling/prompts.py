"""Prompts for text models: read from the config, encoded by the run's own text encoder.

`sampling.prompts` (and `eval.prompts`) is a file of prompts, one per line, or a "|"-separated
list ("a thick seven|number five"). `PromptEncoder(config)` loads the text encoder that encoded
the run's cached dataset (`data.text_encoder*`, checked against the cache's metadata, weights
by fingerprint) and turns prompts into the network's conditioning {"states", "mask", "pooled"}
(numpy, one row per prompt), exactly as encode_latents encoded the training captions. The
cached captions themselves (`cached_conditions`) need no encoder: grids and FID samples use them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from diffjax.latents import read_metadata, text_cache
from diffjax.storage import filesystem as fs


def read_prompts(spec: str, key: str = "sampling.prompts", *, allow_empty: bool = False
                 ) -> list[str]:
    """The prompts `spec` names: a file (one per line; blank lines ignored) or "a|b|c"."""
    spec = str(spec or "").strip()
    if not spec:
        if allow_empty:
            return []
        raise ValueError(f"{key} is empty; pass a file of prompts or --config.{key}='a|b'.")
    if "|" not in spec and fs.exists(spec) and not fs.is_dir(spec):
        raw = fs.read_bytes(spec)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{spec} ({key}) is not UTF-8 text ({e}); re-save it as UTF-8.") \
                from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        prompts = [part.strip() for part in spec.split("|") if part.strip()]
    if not prompts:
        raise ValueError(f"{key}={spec!r} holds no prompt; write one per line or 'a|b'.")
    return prompts


class PromptEncoder:
    """The run's text encoder: prompts -> conditioning (numpy)."""

    def __init__(self, config):
        self.config = config
        self.encoder = text_cache.encoder_from_config(config)
        text_cache.check_text(read_metadata(config.data.latent_dir), config,
                              encoder=self.encoder)

    def __call__(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        check = text_cache.length_checker(self.encoder)
        for prompt in prompts:
            problem = check(prompt)
            if problem:
                raise ValueError(f"Prompt {problem} (the model was trained on that many).")
        parts = [text_cache.encode_padded(self.encoder, prompts[i:i + text_cache.TEXT_BATCH])
                 for i in range(0, len(prompts), text_cache.TEXT_BATCH)]
        states, pooled, mask = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return {"states": states.astype(np.float32), "mask": mask.astype(np.int32),
                "pooled": pooled.astype(np.float32)}


def cached_conditions(directory: str, records: Sequence[int], caption: int = 0
                      ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The cached conditioning and text of caption `caption` (or the record's last) of the
    given records of a text cache: what the model was trained on, no encoder needed."""
    from diffjax.latents import LatentSource

    source = LatentSource(directory)
    rows = source.__getitems__([int(r) % len(source) for r in records])
    picks = [min(caption, int(r["num_captions"]) - 1) for r in rows]
    cond: dict[str, Any] = {
        "states": np.stack([r["text_states"][k] for r, k in zip(rows, picks)]).astype(
            np.float32),
        "mask": np.stack([r["text_mask"][k] for r, k in zip(rows, picks)]).astype(np.int32),
        "pooled": np.stack([r["text_pooled"][k] for r, k in zip(rows, picks)]).astype(
            np.float32)}
    return cond, [r["captions"][k] for r, k in zip(rows, picks)]
