"""BERT as a sentence encoder: transformers' `BertModel`, layer for layer, and
sentence-transformers' mean pooling + L2 normalisation (all-MiniLM-L6-v2 and its kin).

Structure (transformers' names are the Flax paths: `encoder.layer.2.attention.self.query.weight`
is params['encoder']['layer_2']['attention']['self']['query']['kernel']): word + absolute
position + token-type embeddings, LayerNorm; `num_hidden_layers` POST-LN layers
`x = LN(x + dense(attn(x)))`, `x = LN(x + dense(act(dense(x))))` with biases everywhere, scale
head_dim^-0.5 and the padding attention mask on the keys (bidirectional, no causal mask); the
optional pooler tanh(dense(state of [CLS])). LayerNorm eps comes from config.json (1e-12 for
BERT); `gelu` is the exact erf GELU, as transformers' ACT2FN["gelu"].

`hidden_states` has num_hidden_layers + 1 entries (the embeddings after their LayerNorm, then
each layer's output), as transformers' `output_hidden_states=True`.

`sentence_embedding` is sentence-transformers' Pooling(mean) then Normalize: the mean of the
last states over the tokens the mask keeps (the count clamped at 1e-9), divided by
max(L2 norm, 1e-12).

Differences from transformers: dropout is left out (inference); position ids are always
0..T-1 and token types default to 0; only `position_embedding_type="absolute"` encoders, no
decoder/cross-attention variants; a row whose mask hides every token is not meaningful.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from diffjax.text import layers

POOLING_COUNT_MIN = 1e-9  # sentence-transformers' clamp of the token count
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default eps


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The sizes of a BERT encoder (transformers' BertConfig defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, config: Mapping[str, Any], source: str = "config.json") -> "BertConfig":
        kind = config.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"{source}: position_embedding_type {kind!r} is not supported; "
                             f"diffjax's BERT has absolute position embeddings only.")
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise ValueError(f"{source}: a decoder BERT (is_decoder / add_cross_attention) is "
                             f"not supported; diffjax's BERT is an encoder.")
        fields = {f.name for f in dataclasses.fields(cls)}
        made = cls(**{k: v for k, v in config.items() if k in fields and v is not None})
        layers.activation(made.hidden_act, source)
        if made.hidden_size % made.num_attention_heads:
            raise ValueError(f"{source}: hidden_size {made.hidden_size} is not a multiple of "
                             f"num_attention_heads {made.num_attention_heads}.")
        return made


@flax.struct.dataclass
class BertOutput:
    last_hidden_state: jax.Array  # (B, T, D)
    hidden_states: tuple  # num_hidden_layers + 1 arrays (B, T, D)
    pooler_output: jax.Array | None = None  # (B, D) tanh(dense([CLS])) when there is a pooler


class BertEmbeddings(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        c = self.config
        length = input_ids.shape[-1]
        if length > c.max_position_embeddings:
            raise ValueError(f"{length} tokens exceed max_position_embeddings="
                             f"{c.max_position_embeddings}; truncate the text.")
        words = layers.embedding(c.vocab_size, c.hidden_size, ("vocab", "embed"), self.dtype,
                                 "word_embeddings")(input_ids)
        types = layers.embedding(c.type_vocab_size, c.hidden_size, (None, "embed"), self.dtype,
                                 "token_type_embeddings")(token_type_ids)
        positions = layers.embedding(c.max_position_embeddings, c.hidden_size,
                                     ("length", "embed"), self.dtype,
                                     "position_embeddings")(jnp.arange(length))
        x = words + types + positions[None]
        return layers.layer_norm(c.layer_norm_eps, self.dtype, "LayerNorm")(x)


class BertSelfAttention(nn.Module):
    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
        d = x.shape[-1]
        q, k, v = (layers.dense(d, ("embed", "heads"), self.dtype, name)(x)
                   for name in ("query", "key", "value"))
        return layers.multi_head_attention(q, k, v, self.num_heads, attention_mask,
                                           is_causal=False)


class BertResidualOutput(nn.Module):
    """BertSelfOutput / BertOutput: LN(residual + dense(x))."""

    features: int
    axes: tuple
    epsilon: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array) -> jax.Array:
        h = layers.dense(self.features, self.axes, self.dtype, "dense")(x)
        return layers.layer_norm(self.epsilon, self.dtype, "LayerNorm")(residual + h)


class BertAttention(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
        c = self.config
        h = BertSelfAttention(c.num_attention_heads, self.dtype, name="self")(x, attention_mask)
        return BertResidualOutput(c.hidden_size, ("heads", "embed"), c.layer_norm_eps,
                                  self.dtype, name="output")(h, x)


class BertIntermediate(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        h = layers.dense(c.intermediate_size, ("embed", "mlp"), self.dtype, "dense")(x)
        return layers.ACTIVATIONS[c.hidden_act](h)


class BertLayer(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
        c = self.config
        x = BertAttention(c, self.dtype, name="attention")(x, attention_mask)
        h = BertIntermediate(c, self.dtype, name="intermediate")(x)
        x = BertResidualOutput(c.hidden_size, ("mlp", "embed"), c.layer_norm_eps, self.dtype,
                               name="output")(h, x)
        return nn.with_logical_constraint(x, layers.TOKEN_AXES)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> tuple:
        states = [x]
        for i in range(self.config.num_hidden_layers):  # unrolled: one parameter name per layer
            states.append(BertLayer(self.config, self.dtype, name=f"layer_{i}")(
                states[-1], attention_mask))
        return tuple(states)


class BertPooler(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, states: jax.Array) -> jax.Array:
        dense = layers.dense(states.shape[-1], ("embed", None), self.dtype, "dense")
        return jnp.tanh(dense(states[:, 0]))


class BertModel(nn.Module):
    """transformers' BertModel (`add_pooling_layer` as there).

    `__call__(input_ids (B, T) int, attention_mask (B, T), token_type_ids=None) -> BertOutput`.
    """

    config: BertConfig
    add_pooling_layer: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> BertOutput:
        c, out = self.config, layers.output_dtype(self.dtype)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(c, self.dtype, name="embeddings")(input_ids, token_type_ids)
        x = nn.with_logical_constraint(x, layers.TOKEN_AXES)
        states = BertEncoder(c, self.dtype, name="encoder")(x, attention_mask)
        pooled = (BertPooler(self.dtype, name="pooler")(states[-1]).astype(out)
                  if self.add_pooling_layer else None)
        return BertOutput(states[-1].astype(out), tuple(s.astype(out) for s in states), pooled)


def abstract_params(module: BertModel) -> Any:
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return nn.unbox(jax.eval_shape(module.init, jax.random.key(0), ids, ids)["params"])


def mean_pooling(token_states: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """sentence-transformers' mean over the tokens the mask keeps."""
    mask = attention_mask[..., None].astype(token_states.dtype)
    count = jnp.maximum(mask.sum(axis=1), POOLING_COUNT_MIN)
    return (token_states * mask).sum(axis=1) / count


def l2_normalize(x: jax.Array) -> jax.Array:
    """torch.nn.functional.normalize(x, p=2, dim=-1)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), NORMALIZE_EPS)


def sentence_embedding(token_states: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return l2_normalize(mean_pooling(token_states, attention_mask))
