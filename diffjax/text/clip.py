"""CLIP's text transformer, layer for layer transformers' `CLIPTextModel` and
`CLIPTextModelWithProjection` — the text encoders of Stable Diffusion 1.x / 2.x / XL.

Structure (transformers' names, which are also the Flax paths: `encoder.layers.3.self_attn.
q_proj.weight` is params['encoder']['layers_3']['self_attn']['q_proj']['kernel']):
token embedding + learned position embedding; `num_hidden_layers` pre-LN layers
`x + out_proj(attn(layer_norm1 x))`, `x + fc2(act(fc1(layer_norm2 x)))` with q/k/v/out biases,
scale head_dim^-0.5 and the causal mask always (AND the padding `attention_mask` when one is
given, as transformers combines them); `final_layer_norm`; the pooled output is the final-LN'd
state at the first `eos_token_id` (configs from before transformers PR #24773 say
eos_token_id 2: then, as transformers does, at the argmax of the ids, which is the first
<|endoftext|> of a CLIP vocabulary); `text_projection` (no bias) of the pooled output gives
`text_embeds`.

`hidden_states` has num_hidden_layers + 1 entries (the embeddings, then each layer's output),
none with the final LN — as transformers' `output_hidden_states=True`. Every size comes from
config.json (`CLIPTextConfig.from_json`; a CLIPModel's config.json with a nested `text_config`
works too); missing entries take transformers' defaults.

The Stable Diffusion conditioning rules are the functions at the bottom: `clip_skip_context`
(SD 1.x / 2.x, diffusers' `clip_skip`) and `sdxl_context` (SDXL's penultimate state).

Differences from transformers: dropout is left out (0 in every published text encoder);
`position_ids` are always 0..T-1; inputs are (B, T) only; a row whose attention mask hides every
key it could see (never the case for tokenizer output, which starts with <|startoftext|>) gets
an average of the values instead of transformers' result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from diffjax.text import layers

# eos_token_id of configs written before transformers fixed it (PR #24773); pool at argmax(ids).
LEGACY_EOS_TOKEN_ID = 2


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The sizes of a CLIP text encoder (transformers' CLIPTextConfig defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 49407

    @classmethod
    def from_json(cls, config: Mapping[str, Any], source: str = "config.json"
                  ) -> "CLIPTextConfig":
        """From a CLIPTextConfig's config.json, or a CLIPConfig's (its `text_config`, with the
        top-level `projection_dim` that CLIPModel's text_projection uses)."""
        text = config
        if isinstance(config.get("text_config"), Mapping):
            text = {**config["text_config"]}
            if "projection_dim" in config:
                text["projection_dim"] = config["projection_dim"]
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in text.items() if k in fields and v is not None}
        if not isinstance(values.get("eos_token_id", 0), int):
            raise ValueError(f"{source}: eos_token_id {values['eos_token_id']!r} is not one "
                             f"integer; CLIP pools at one end-of-text token.")
        made = cls(**values)
        layers.activation(made.hidden_act, source)
        if made.hidden_size % made.num_attention_heads:
            raise ValueError(f"{source}: hidden_size {made.hidden_size} is not a multiple of "
                             f"num_attention_heads {made.num_attention_heads}.")
        return made


@flax.struct.dataclass
class CLIPTextOutput:
    """What the network returns (float32; float64 when it computes in float64)."""

    last_hidden_state: jax.Array  # (B, T, D), final LN applied
    pooler_output: jax.Array  # (B, D), last_hidden_state at the end-of-text token
    hidden_states: tuple  # num_hidden_layers + 1 arrays (B, T, D), no final LN
    text_embeds: jax.Array | None = None  # (B, projection_dim) with the projection, else None


class CLIPTextEmbeddings(nn.Module):
    config: CLIPTextConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.token_embedding = layers.embedding(c.vocab_size, c.hidden_size, ("vocab", "embed"),
                                                self.dtype, "token_embedding")
        self.position_embedding = layers.embedding(
            c.max_position_embeddings, c.hidden_size, ("length", "embed"), self.dtype,
            "position_embedding")

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        length = input_ids.shape[-1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"{length} tokens exceed max_position_embeddings="
                             f"{self.config.max_position_embeddings}; truncate the prompts.")
        positions = self.position_embedding(jnp.arange(length))
        return self.token_embedding(input_ids) + positions[None]


class CLIPAttention(nn.Module):
    num_heads: int
    dtype: Any = jnp.float32
    causal: bool = True  # the text tower; the vision tower (clip_vision.py) attends everywhere

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
        d = x.shape[-1]
        q, k, v = (layers.dense(d, ("embed", "heads"), self.dtype, name)(x)
                   for name in ("q_proj", "k_proj", "v_proj"))
        out = layers.multi_head_attention(q, k, v, self.num_heads, attention_mask,
                                          is_causal=self.causal)
        return layers.dense(d, ("heads", "embed"), self.dtype, "out_proj")(out)


class CLIPMLP(nn.Module):
    intermediate_size: int
    hidden_act: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = layers.dense(self.intermediate_size, ("embed", "mlp"), self.dtype, "fc1")(x)
        h = layers.ACTIVATIONS[self.hidden_act](h)
        return layers.dense(x.shape[-1], ("mlp", "embed"), self.dtype, "fc2")(h)


class CLIPEncoderLayer(nn.Module):
    config: Any  # CLIPTextConfig or clip_vision.CLIPVisionConfig (the same layer sizes)
    dtype: Any = jnp.float32
    causal: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
        c = self.config
        h = layers.layer_norm(c.layer_norm_eps, self.dtype, "layer_norm1")(x)
        x = x + CLIPAttention(c.num_attention_heads, self.dtype, self.causal, name="self_attn")(
            h, attention_mask)
        h = layers.layer_norm(c.layer_norm_eps, self.dtype, "layer_norm2")(x)
        x = x + CLIPMLP(c.intermediate_size, c.hidden_act, self.dtype, name="mlp")(h)
        return nn.with_logical_constraint(x, layers.TOKEN_AXES)


class CLIPEncoder(nn.Module):
    config: Any
    dtype: Any = jnp.float32
    causal: bool = True

    def setup(self):
        self.layers = [CLIPEncoderLayer(self.config, self.dtype, self.causal)
                       for _ in range(self.config.num_hidden_layers)]

    def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> tuple:
        # Unrolled (not scanned): each layer keeps its own parameter names, and a text encoder
        # runs once per batch, so compile time, not step time, is what this costs.
        states = [x]
        for layer in self.layers:
            states.append(layer(states[-1], attention_mask))
        return tuple(states)


def pooling_positions(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """Where transformers' CLIPTextModel pools: the first `eos_token_id`, or argmax(ids) for the
    legacy eos_token_id 2 (0 when a row has no end-of-text token, as torch's argmax gives)."""
    if eos_token_id == LEGACY_EOS_TOKEN_ID:
        return jnp.argmax(input_ids, axis=-1)
    return jnp.argmax(input_ids == eos_token_id, axis=-1)


class CLIPTextModel(nn.Module):
    """transformers' CLIPTextModel, or CLIPTextModelWithProjection when `with_projection`.

    `__call__(input_ids (B, T) int, attention_mask (B, T) or None) -> CLIPTextOutput`. SD
    pipelines pass no attention mask (only the causal one applies), unless the encoder's
    config.json says `use_attention_mask`.
    """

    config: CLIPTextConfig
    with_projection: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.embeddings = CLIPTextEmbeddings(c, self.dtype)
        self.encoder = CLIPEncoder(c, self.dtype)
        self.final_layer_norm = layers.layer_norm(c.layer_norm_eps, self.dtype,
                                                  "final_layer_norm")
        if self.with_projection:
            self.text_projection = layers.dense(c.projection_dim, ("embed", None), self.dtype,
                                                "text_projection", use_bias=False)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None
                 ) -> CLIPTextOutput:
        out = layers.output_dtype(self.dtype)
        x = nn.with_logical_constraint(self.embeddings(input_ids), layers.TOKEN_AXES)
        hidden_states = self.encoder(x, attention_mask)
        last = self.final_layer_norm(hidden_states[-1])
        pooled = last[jnp.arange(last.shape[0]),
                      pooling_positions(input_ids, self.config.eos_token_id)]
        text_embeds = self.text_projection(pooled).astype(out) if self.with_projection else None
        return CLIPTextOutput(last.astype(out), pooled.astype(out),
                              tuple(h.astype(out) for h in hidden_states), text_embeds)

    def final_norm(self, hidden: jax.Array) -> jax.Array:
        """The final LayerNorm alone (for clip_skip: `module.apply(v, h, method='final_norm')`)."""
        return self.final_layer_norm(hidden).astype(layers.output_dtype(self.dtype))


def abstract_params(module: CLIPTextModel) -> Any:
    """Shapes of the module's (unboxed) parameters, without allocating them."""
    ids = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    return nn.unbox(jax.eval_shape(module.init, jax.random.key(0), ids)["params"])


def clip_skip_context(module: CLIPTextModel, params: Any, output: CLIPTextOutput,
                      clip_skip: int | None = None) -> jax.Array:
    """The SD 1.x / 2.x U-Net context: `last_hidden_state`, or with `clip_skip=k` the state k
    layers before the last, hidden_states[-(k+1)], through the final LayerNorm — exactly what
    diffusers' StableDiffusionPipeline.encode_prompt does (clip_skip=1 is the penultimate
    layer). SD 2.x folders already hold 23 of OpenCLIP's 24 layers, so their plain last state is
    OpenCLIP's penultimate layer."""
    if not clip_skip:
        return output.last_hidden_state
    check_skip(clip_skip, len(output.hidden_states) - 1, "clip_skip")
    return module.apply({"params": params}, output.hidden_states[-(clip_skip + 1)],
                        method=CLIPTextModel.final_norm)


def sdxl_context(output: CLIPTextOutput, clip_skip: int | None = None) -> jax.Array:
    """One SDXL encoder's share of the U-Net context: hidden_states[-2] WITHOUT the final LN, or
    hidden_states[-(clip_skip + 2)] (diffusers' StableDiffusionXLPipeline). SDXL concatenates
    the two encoders' states on the last axis (768 + 1280 = 2048) and uses the second encoder's
    `text_embeds` as the pooled embedding."""
    skip = clip_skip or 0
    check_skip(skip + 1, len(output.hidden_states) - 1, "clip_skip + 1")
    return output.hidden_states[-(skip + 2)]


def check_skip(skip: int, num_layers: int, what: str) -> None:
    if not 0 <= skip <= num_layers:
        raise ValueError(f"{what}={skip} reaches past the embeddings of a {num_layers}-layer "
                         f"text encoder; use at most {num_layers}.")
