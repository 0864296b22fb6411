"""The blocks of diffusers' UNet2DConditionModel: time embedding, down, mid and up blocks (NHWC).

* `timestep_features`: diffusers' `get_timestep_embedding` (the `Timesteps` module): sinusoids
  of float32 timesteps at frequencies exp(-ln(10000) k / (half - freq_shift)), [sin, cos] or, with
  flip_sin_to_cos, [cos, sin]. diffusers computes it in float32 whatever the model's dtype, and so
  does diffjax. The frequency table is a float32 constant rounded from float64 (torch's float32
  exp differs from XLA's by one ulp in places; the correctly rounded table matches torch's far
  more often, which keeps float64 checks tight).
* `TimestepEmbedding`: linear_1, act, linear_2 (and an optional post-activation).
* `DownBlock` is `CrossAttnDownBlock2D` (attention=True) or `DownBlock2D`: per layer a resnet
  (then a Transformer2DModel), every output kept as a skip connection, then an optional stride-2
  conv whose output is a skip too.
* `MidBlock` is `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) once; its resnets
  divide by mid_block_scale_factor.
* `UpBlock` is `CrossAttnUpBlock2D` / `UpBlock2D`: per layer concatenate the last unused skip on
  the channels, resnet (then transformer); then an optional nearest x2 (or to the next skip's
  size) + conv.

Reusable by a ControlNet: it builds the same time embedding, down blocks and mid block.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.sd_unet_layers import (ACTIVATIONS, IMAGE_AXES, Downsample2D, ResnetBlock2D,
                                           Transformer2DModel, Upsample2D, dense)


def timestep_features(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool,
                      freq_shift: float, max_period: float = 10000.0) -> jax.Array:
    """[N] timesteps (any real or integer dtype) -> [N, dim] float32, as diffusers computes it."""
    half = dim // 2
    exponent = np.float32(-math.log(max_period)) * np.arange(half, dtype=np.float32)
    exponent = exponent / np.float32(half - freq_shift)
    frequencies = np.exp(exponent.astype(np.float64)).astype(np.float32)
    angles = jnp.asarray(timesteps).astype(jnp.float32)[:, None] * frequencies[None, :]
    pair = (jnp.cos(angles), jnp.sin(angles)) if flip_sin_to_cos else (
        jnp.sin(angles), jnp.cos(angles))
    features = jnp.concatenate(pair, axis=-1)
    if dim % 2:
        features = jnp.pad(features, ((0, 0), (0, 1)))
    return features


class TimestepEmbedding(nn.Module):
    features: int
    act_fn: str = "silu"
    post_act_fn: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = dense(self.features, self.dtype, "linear_1", (None, "cond"))(x.astype(self.dtype))
        x = dense(self.features, self.dtype, "linear_2", ("cond", None))(
            ACTIVATIONS[self.act_fn](x))
        return ACTIVATIONS[self.post_act_fn](x) if self.post_act_fn else x


class BlockSettings(nn.Module):
    """Fields every block shares (a base class, never called itself)."""

    groups: int = 32
    eps: float = 1e-5
    act_fn: str = "silu"
    dropout: float = 0.0
    use_linear_projection: bool = False
    implementation: str | None = None
    remat: bool = False
    dtype: Any = jnp.float32

    def resnet(self, channels: int, name: str, scale: float = 1.0) -> nn.Module:
        # static_argnums counts self: (x, temb, train) are 1, 2, 3.
        cls = nn.remat(ResnetBlock2D, static_argnums=(3,)) if self.remat else ResnetBlock2D
        return cls(channels, self.groups, self.eps, self.act_fn, scale, self.dropout,
                   self.dtype, name=name)

    def transformer(self, heads: int, depth: int, only_cross_attention: bool,
                    name: str) -> nn.Module:
        return Transformer2DModel(heads, depth, self.groups, self.use_linear_projection,
                                  only_cross_attention, self.implementation, self.remat,
                                  self.dtype, name=name)


class DownBlock(BlockSettings):
    out_channels: int = 320
    num_layers: int = 2
    attention: bool = True  # CrossAttnDownBlock2D, else DownBlock2D
    heads: int = 8
    depths: tuple[int, ...] = (1, 1)
    only_cross_attention: bool = False
    add_downsample: bool = True
    downsample_padding: int = 1

    @nn.compact
    def __call__(self, x, temb, context, train: bool = False):
        skips = []
        for i in range(self.num_layers):
            x = self.resnet(self.out_channels, f"resnets_{i}")(x, temb, train)
            if self.attention:
                x = self.transformer(self.heads, self.depths[i], self.only_cross_attention,
                                     f"attentions_{i}")(x, context)
            x = nn.with_logical_constraint(x, IMAGE_AXES)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.downsample_padding, self.dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, tuple(skips)


class MidBlock(BlockSettings):
    heads: int = 8
    depth: int = 1
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x, temb, context, train: bool = False):
        channels = x.shape[-1]
        x = self.resnet(channels, "resnets_0", self.output_scale_factor)(x, temb, train)
        x = self.transformer(self.heads, self.depth, False, "attentions_0")(x, context)
        x = self.resnet(channels, "resnets_1", self.output_scale_factor)(x, temb, train)
        return nn.with_logical_constraint(x, IMAGE_AXES)


class UpBlock(BlockSettings):
    out_channels: int = 320
    num_layers: int = 3
    attention: bool = True  # CrossAttnUpBlock2D, else UpBlock2D
    heads: int = 8
    depths: tuple[int, ...] = (1, 1, 1)
    only_cross_attention: bool = False
    add_upsample: bool = True

    @nn.compact
    def __call__(self, x, skips, temb, context, upsample_size=None, train: bool = False):
        """`skips`: this block's skip connections, oldest first (the last one is used first)."""
        for i in range(self.num_layers):
            x = jnp.concatenate([x, skips[-1 - i].astype(x.dtype)], axis=-1)
            x = self.resnet(self.out_channels, f"resnets_{i}")(x, temb, train)
            if self.attention:
                x = self.transformer(self.heads, self.depths[i], self.only_cross_attention,
                                     f"attentions_{i}")(x, context)
        if self.add_upsample:
            x = Upsample2D(self.dtype, name="upsamplers_0")(x, upsample_size)
        return nn.with_logical_constraint(x, IMAGE_AXES)
