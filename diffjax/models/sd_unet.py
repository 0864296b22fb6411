"""Stable Diffusion's U-Net, diffusers' `UNet2DConditionModel`, as a Flax module (NHWC).

The architecture comes from the diffusers config.json (`UNetConfig.from_diffusers`, in
sd_unet_config.py); weights load from a diffusers folder with numpy (sd_unet_weights.py). The
layer-for-layer description and what diffjax does differently are in sd_unet_layers.py and
sd_unet_blocks.py. SD 1.x (conv proj_in/out), SD 2.x (linear proj_in/out, per-block heads,
upcast_attention) and SDXL (text_time additional embedding: pooled text embeds concatenated with
the sinusoids of the time ids, through add_embedding) are this one module.

Forward, as `UNet2DConditionModel.forward` (diffusers 0.42):
  (center_input_sample: 2x - 1) -> time features (float32 sinusoids) -> time_embedding (+ SDXL
  add_embedding) -> (time_embedding_act_fn) = emb; conv_in; down blocks collecting skips; (+
  ControlNet down residuals on every skip); mid block (+ ControlNet mid residual); up blocks
  consuming the skips, up-sampling to the next skip's size when the input size is not divisible
  by 2^(levels-1); GroupNorm, act, conv_out.

Differences from diffusers, all deliberate: ControlNet residuals must come together (diffusers
reads down residuals alone as a T2I-Adapter's and silently drops a mid residual alone); attention
masks, class labels and cross_attention_kwargs (LoRA scale, GLIGEN, FreeU) are not taken here.

`UNetEncoder` (conv_in, time embedding, down blocks, mid block; methods `prepare`, `embed`,
`encode` = conv_in + `down`, `middle`) is the part a ControlNet copies: a ControlNet module
subclasses it, keeping the same parameter names (`conv_in`, `time_embedding`, `add_embedding`,
`down_blocks_i`, `mid_block`), and adds its conditioning between conv_in and `down`. Any of these
methods runs alone through `module.apply(variables, ..., method="encode")`.

`train=True` only matters for a config with dropout > 0 (then pass rngs={"dropout": key});
every published SD U-Net has dropout 0.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.sd_unet_blocks import (DownBlock, MidBlock, TimestepEmbedding, UpBlock,
                                           timestep_features)
from diffjax.models.sd_unet_config import UNetConfig
from diffjax.models.sd_unet_layers import (ACTIVATIONS, ATTENTION_IMPLEMENTATIONS, IMAGE_AXES, conv,
                                           group_norm)


class UNetEncoder(nn.Module):
    """conv_in, time embedding, down blocks and mid block of a UNet2DConditionModel."""

    config: UNetConfig = UNetConfig()
    dtype: Any = jnp.float32
    attention_implementation: str | None = None
    remat: bool = False

    def _settings(self) -> dict:
        c = self.config
        return dict(groups=c.norm_num_groups, eps=c.norm_eps, act_fn=c.act_fn, dropout=c.dropout,
                    use_linear_projection=c.use_linear_projection,
                    implementation=self.attention_implementation, remat=self.remat,
                    dtype=self.dtype)

    def setup(self):
        c = self.config
        if self.attention_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention_implementation={self.attention_implementation!r}; "
                             f"choose one of {list(ATTENTION_IMPLEMENTATIONS)}.")
        self.conv_in = conv(c.block_out_channels[0], c.conv_in_kernel, self.dtype, "conv_in")
        self.time_embedding = TimestepEmbedding(c.time_embedding_dim, c.act_fn,
                                                c.timestep_post_act, self.dtype)
        if c.addition_embed_type == "text_time":
            # diffusers builds add_embedding with TimestepEmbedding's default act ("silu").
            self.add_embedding = TimestepEmbedding(c.time_embedding_dim, "silu", None, self.dtype)
        self.down_blocks = [
            DownBlock(**self._settings(), out_channels=channels, num_layers=c.layers_per_block[i],
                      attention=c.down_attention[i], heads=c.heads[i], depths=c.down_depths[i],
                      only_cross_attention=c.only_cross_attention[i],
                      add_downsample=i < c.num_blocks - 1, downsample_padding=c.downsample_padding)
            for i, channels in enumerate(c.block_out_channels)]
        if c.mid_block:
            self.mid_block = MidBlock(**self._settings(), heads=c.heads[-1], depth=c.mid_depth,
                                      output_scale_factor=c.mid_block_scale_factor)

    def embed(self, timesteps, batch: int, text_embeds=None, time_ids=None) -> jax.Array:
        """The time embedding `emb` [batch, time_embedding_dim] every resnet receives."""
        c = self.config
        timesteps = jnp.asarray(timesteps)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = jnp.broadcast_to(timesteps, (batch,))
        features = timestep_features(timesteps, c.block_out_channels[0], c.flip_sin_to_cos,
                                     c.freq_shift)
        emb = self.time_embedding(features.astype(self.dtype))
        if c.addition_embed_type == "text_time":
            emb = emb + self.add_embedding(self._text_time(text_embeds, time_ids, batch))
        if c.time_embedding_act_fn:
            emb = ACTIVATIONS[c.time_embedding_act_fn](emb)
        return emb

    def _text_time(self, text_embeds, time_ids, batch: int) -> jax.Array:
        c = self.config
        if text_embeds is None or time_ids is None:
            raise ValueError("This U-Net has addition_embed_type='text_time' (SDXL): pass "
                             "text_embeds (the pooled text embedding) and time_ids (original "
                             "size, crop, target size).")
        text_embeds, time_ids = jnp.asarray(text_embeds), jnp.asarray(time_ids)
        features = timestep_features(time_ids.reshape(-1), c.addition_time_embed_dim,
                                     c.flip_sin_to_cos, c.freq_shift).reshape(batch, -1)
        width = text_embeds.shape[-1] + features.shape[-1]
        if width != c.projection_class_embeddings_input_dim:
            raise ValueError(
                f"text_embeds {tuple(text_embeds.shape)} and time_ids {tuple(time_ids.shape)} "
                f"give {width} features but projection_class_embeddings_input_dim="
                f"{c.projection_class_embeddings_input_dim}; pass the pooled embedding of the "
                f"text encoder this U-Net was trained with and its time ids.")
        return jnp.concatenate([text_embeds.astype(self.dtype),
                                features.astype(self.dtype)], axis=-1)

    def encode(self, sample, emb, context, train: bool = False):
        """conv_in and the down blocks: (hidden state, skips), skips in creation order."""
        return self.down(self.conv_in(sample), emb, context, train)

    def down(self, h, emb, context, train: bool = False):
        """The down blocks from conv_in's output `h` (a ControlNet adds its conditioning to `h`
        first): (hidden state, skips), `h` itself the first skip."""
        h = nn.with_logical_constraint(h, IMAGE_AXES)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, emb, context, train)
            skips.extend(block_skips)
        return h, tuple(skips)

    def middle(self, h, emb, context, train: bool = False):
        return self.mid_block(h, emb, context, train) if self.config.mid_block else h

    def prepare(self, sample, timesteps, encoder_hidden_states, text_embeds, time_ids):
        """(sample, emb, context) in the compute dtype, after center_input_sample."""
        sample = jnp.asarray(sample)
        if sample.ndim != 4 or sample.shape[-1] != self.config.in_channels:
            raise ValueError(f"sample must be NHWC with {self.config.in_channels} channels, got "
                             f"shape {tuple(sample.shape)}.")
        x = sample.astype(self.dtype)
        if self.config.center_input_sample:
            x = 2 * x - 1.0
        emb = self.embed(timesteps, sample.shape[0], text_embeds, time_ids)
        return x, emb, jnp.asarray(encoder_hidden_states).astype(self.dtype)


class UNet2DConditionModel(UNetEncoder):
    """diffusers' UNet2DConditionModel: (sample NHWC, timesteps [B] or scalar, float or int,
    encoder_hidden_states [B, L, D]) -> the prediction, NHWC, in the sample's dtype."""

    def setup(self):
        super().setup()
        c = self.config
        channels = tuple(reversed(c.block_out_channels))
        settings = self._settings()
        self.up_blocks = [
            UpBlock(**settings, out_channels=channels[i],
                    num_layers=tuple(reversed(c.layers_per_block))[i] + 1,
                    attention=c.up_attention[i], heads=c.up_heads[i], depths=c.up_depths[i],
                    only_cross_attention=c.up_only_cross_attention[i],
                    add_upsample=i < c.num_blocks - 1)
            for i in range(c.num_blocks)]
        self.conv_norm_out = group_norm(c.norm_num_groups, c.norm_eps, self.dtype,
                                        "conv_norm_out")
        self.conv_out = conv(c.out_channels, c.conv_out_kernel, self.dtype, "conv_out")

    def decode(self, h, skips, emb, context, train: bool = False,
               input_size: tuple[int, int] | None = None):
        """The up blocks (each takes layers + 1 skips, the newest first) and the output head.
        `input_size`: the sample's H, W (default: the first skip's, the same for odd conv_in
        kernels); when 2^(levels-1) does not divide it, up-sampling goes to the skips' sizes."""
        c = self.config
        factor = 2 ** (c.num_blocks - 1)
        input_size = tuple(skips[0].shape[1:3]) if input_size is None else input_size
        forward_size = any(d % factor for d in input_size)
        skips = list(skips)
        for i, block in enumerate(self.up_blocks):
            mine, skips = skips[-block.num_layers:], skips[:-block.num_layers]
            size = tuple(skips[-1].shape[1:3]) if forward_size and block.add_upsample else None
            h = block(h, tuple(mine), emb, context, size, train)
        h = ACTIVATIONS[c.act_fn](self.conv_norm_out(h))
        return self.conv_out(h)

    def __call__(self, sample, timesteps, encoder_hidden_states, *, text_embeds=None,
                 time_ids=None, down_block_additional_residuals: Sequence[jax.Array] | None = None,
                 mid_block_additional_residual: jax.Array | None = None, train: bool = False):
        x, emb, context = self.prepare(sample, timesteps, encoder_hidden_states, text_embeds,
                                       time_ids)
        h, skips = self.encode(x, emb, context, train)
        controlnet = (down_block_additional_residuals, mid_block_additional_residual)
        if any(r is not None for r in controlnet) and any(r is None for r in controlnet):
            raise ValueError("ControlNet residuals come together: pass both "
                             "down_block_additional_residuals and mid_block_additional_residual.")
        if down_block_additional_residuals is not None:
            skips = add_residuals(skips, down_block_additional_residuals)
        h = self.middle(h, emb, context, train)
        if mid_block_additional_residual is not None:
            if tuple(mid_block_additional_residual.shape) != tuple(h.shape):
                raise ValueError(f"mid_block_additional_residual has shape "
                                 f"{tuple(mid_block_additional_residual.shape)}; the mid block's "
                                 f"output is {tuple(h.shape)} (NHWC).")
            h = h + jnp.asarray(mid_block_additional_residual).astype(h.dtype)
        out = self.decode(h, skips, emb, context, train, tuple(x.shape[1:3]))
        return out.astype(jnp.asarray(sample).dtype)


def add_residuals(skips: Sequence[jax.Array], residuals: Sequence[jax.Array]) -> tuple:
    """The skips with a ControlNet's down residuals added, one for one."""
    if len(residuals) != len(skips):
        raise ValueError(f"down_block_additional_residuals has {len(residuals)} tensors but the "
                         f"U-Net has {len(skips)} skip connections.")
    out = []
    for k, (skip, residual) in enumerate(zip(skips, residuals)):
        if tuple(residual.shape) != tuple(skip.shape):
            raise ValueError(f"down_block_additional_residuals[{k}] has shape "
                             f"{tuple(residual.shape)}; the skip it adds to is "
                             f"{tuple(skip.shape)} (NHWC).")
        out.append(skip + jnp.asarray(residual).astype(skip.dtype))
    return tuple(out)


def example_inputs(config: UNetConfig, batch: int = 1, tokens: int = 1) -> dict[str, Any]:
    """Abstract inputs (jax.ShapeDtypeStruct) for `init` / `jax.eval_shape`: the smallest latents
    the down path accepts, `tokens` text tokens, and SDXL's text_embeds / time_ids (any split of
    projection_class_embeddings_input_dim gives the same parameters)."""
    size = 2 ** (config.num_blocks - 1)
    spec = jax.ShapeDtypeStruct
    inputs = dict(sample=spec((batch, size, size, config.in_channels), jnp.float32),
                  timesteps=spec((batch,), jnp.float32),
                  encoder_hidden_states=spec((batch, tokens, config.cross_attention_dim),
                                             jnp.float32))
    if config.addition_embed_type == "text_time":
        ids = 1
        width = config.projection_class_embeddings_input_dim - config.addition_time_embed_dim
        inputs.update(text_embeds=spec((batch, width), jnp.float32),
                      time_ids=spec((batch, ids), jnp.float32))
    return inputs


def abstract_params(module: UNet2DConditionModel) -> Any:
    """Shapes of the module's (unboxed) parameters, without allocating them."""
    return nn.unbox(_abstract_variables(module.config)["params"])


def logical_axes(module: UNet2DConditionModel) -> Any:
    """The parameters' logical axis names (PartitionSpecs), for diffjax.parallel.sharding."""
    return nn.get_partition_spec(_abstract_variables(module.config)["params"])


@functools.lru_cache(maxsize=8)
def _abstract_variables(config: UNetConfig) -> Any:
    # Parameter shapes depend on the architecture only (not on dtype, remat or the attention
    # kernel), and tracing a full SDXL costs seconds: once per config.
    module = UNet2DConditionModel(config)
    inputs = example_inputs(config)
    sample, timesteps, context = (inputs.pop(k) for k in
                                  ("sample", "timesteps", "encoder_hidden_states"))
    return jax.eval_shape(module.init, jax.random.key(0), sample, timesteps, context, **inputs)


def parameter_count(module: UNet2DConditionModel) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(abstract_params(module)))
