"""Prompts to the U-Net's conditioning, as diffusers' Stable Diffusion pipelines build it.

SD 1.x / 2.x (`StableDiffusionPipeline.encode_prompt`): the CLIP text encoder's
`last_hidden_state` (or the `clip_skip` state through the final LayerNorm); no attention mask
unless the encoder's config.json asks for one. A missing negative prompt is the empty prompt.

SDXL (`StableDiffusionXLPipeline.encode_prompt`): both encoders see the prompt (prompt_2 =
prompt unless given); the context is hidden_states[-2] of each, without the final LayerNorm,
concatenated on the feature axis; the pooled embedding is the second encoder's `text_embeds`.
A missing negative prompt with `force_zeros_for_empty_prompt` (SDXL base's setting) is zeros for
both, not the empty prompt's encoding. The six time ids are (height, width, 0, 0, height, width):
original size, crop top-left, target size.

Tokenising runs on the host (strings); the encoders are pure functions of the token ids, jitted
inside the pipeline's one program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.text import clip, clip_weights
from diffjax.text.clip_tokenizer import CLIPTokenizer


@dataclasses.dataclass(frozen=True, eq=False)
class ClipEncoder:
    """One CLIP text encoder of a pipeline: tokenizer, module, parameters."""

    tokenizer: CLIPTokenizer
    module: clip.CLIPTextModel
    params: Any
    use_attention_mask: bool

    @classmethod
    def load(cls, folder: str, encoder: str, tokenizer: str, dtype=None,
             cleaning: str = "clip") -> "ClipEncoder":
        module, params, config = clip_weights.read_folder(folder, encoder, dtype)
        return cls(CLIPTokenizer(folder, tokenizer, cleaning), module, params,
                   bool(config.get("use_attention_mask", False)))

    def apply(self, params, ids: jax.Array, mask: jax.Array) -> clip.CLIPTextOutput:
        return self.module.apply({"params": params}, ids,
                                 mask if self.use_attention_mask else None)


@dataclasses.dataclass(frozen=True)
class Tokens:
    """Host-side token ids of the prompts and the negative prompts, per encoder."""

    ids: tuple[np.ndarray, ...]  # per encoder: (B, L) prompts
    mask: tuple[np.ndarray, ...]
    negative_ids: tuple[np.ndarray, ...]
    negative_mask: tuple[np.ndarray, ...]
    zero_negative: bool  # SDXL: the negative conditioning is zeros


def as_list(prompt: str | Sequence[str] | None, batch: int, what: str) -> list[str] | None:
    if prompt is None:
        return None
    prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} {what}s for {batch} prompts; pass one per prompt "
                         f"or a single string.")
    return prompts


def tokenize(encoders: Sequence[ClipEncoder], prompts: list[str], negative: list[str] | None,
             *, force_zeros_for_empty_prompt: bool) -> Tokens:
    """Token ids for the prompts and the negative prompts (the empty prompt when None)."""
    zero = negative is None and force_zeros_for_empty_prompt and len(encoders) == 2
    negative = negative if negative is not None else [""] * len(prompts)
    positive = [e.tokenizer(prompts) for e in encoders]
    negated = [e.tokenizer(negative) for e in encoders]
    return Tokens(tuple(t.input_ids for t in positive), tuple(t.attention_mask for t in positive),
                  tuple(t.input_ids for t in negated), tuple(t.attention_mask for t in negated),
                  zero)


def encode(encoders: Sequence[ClipEncoder], params: Sequence[Any], ids: Sequence[jax.Array],
           mask: Sequence[jax.Array], clip_skip: int = 0) -> tuple[jax.Array, jax.Array | None]:
    """(context (B, L, D), pooled (B, P) for SDXL else None), in-graph."""
    if len(encoders) == 1:
        encoder, = encoders
        output = encoder.apply(params[0], ids[0], mask[0])
        return clip.clip_skip_context(encoder.module, params[0], output, clip_skip), None
    outputs = [e.apply(p, i, m) for e, p, i, m in zip(encoders, params, ids, mask)]
    context = jnp.concatenate([clip.sdxl_context(o, clip_skip) for o in outputs], axis=-1)
    last = outputs[-1]
    if last.text_embeds is None:
        raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection "
                         "(its text_embeds are the pooled conditioning).")
    return context, last.text_embeds


def sdxl_time_ids(height: int, width: int, batch: int) -> np.ndarray:
    """(B, 6): original size, crop top-left (0, 0), target size, as diffusers' default."""
    return np.tile(np.array([[height, width, 0, 0, height, width]], np.float32), (batch, 1))
