"""ControlNet for score_sde's NCSN++ / DDPM++ U-Net (`ncsnpp.NCSNpp`), built the way diffusers
builds one for Stable Diffusion's U-Net (Zhang et al., 2023):

* a trainable copy of the network's noise/class embedding, conv_in, downsampling path and middle
  (`NCSNppControlNet` subclasses `NCSNpp` and runs the same `_embedding`, `_down`, `_middle`,
  so every copied layer has the base's parameter name and `initialise_from_base` copies it);
* a small conditioning embedding (`ConditioningEmbedding`: conv 3x3 -> 16, SiLU, then per
  stage a 3x3 conv and a 3x3 conv to the next width, stride 2 while the conditioning image is
  larger than the network input, SiLU after each; a zero-initialised 3x3 conv to nf) whose
  output is added to conv_in's;
* a zero-initialised 1x1 conv on every skip connection the up path consumes
  (`controlnet_down_i`) and on the middle's output (`controlnet_mid_block`), times
  `conditioning_scale`.

`ControlledNetwork(base, controlnet)` is the network a ControlNet run samples and trains with:
`net(x, noise_cond, {"labels": labels or None, "cond": conditioning image NHWC}, train=...)`; the
base runs deterministically (its dropout off, as diffusers keeps the frozen U-Net in eval mode)
and takes the residuals on its skips and middle output (`NCSNpp.__call__`'s down_residuals /
mid_residual). At initialisation the zero convs make the controlled network equal the base.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.ncsnpp import NCSNpp
from diffjax.models.ncsnpp_layers import BIAS_AXES, CONV_AXES, conv3x3, default_init

CONDITION_KEY = "cond"
LABELS_KEY = "labels"


def zero_conv(features: int, kernel: int, dtype, name: str) -> nn.Conv:
    padding = ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(features, (kernel, kernel), padding=padding,
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, CONV_AXES),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
                   dtype=dtype, param_dtype=jnp.float32, name=name)


class ConditioningEmbedding(nn.Module):
    """Conditioning image (NHWC) -> features of the network input's size and `features` wide."""

    features: int
    channels: Sequence[int] = (16, 32)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cond, target_size: int):
        x = cond.astype(self.dtype)
        size = x.shape[1]
        if size % target_size or (size // target_size) & (size // target_size - 1):
            raise ValueError(f"The conditioning image is {size}x{x.shape[2]} but the network "
                             f"input is {target_size} wide: it must be the same size or a "
                             f"power-of-two multiple.")
        x = nn.silu(conv3x3(self.channels[0], dtype=self.dtype, name="conv_in")(x))
        for i in range(len(self.channels) - 1):
            x = nn.silu(conv3x3(self.channels[i], dtype=self.dtype, name=f"blocks_{2 * i}")(x))
            stride = 2 if x.shape[1] > target_size else 1
            x = nn.Conv(self.channels[i + 1], (3, 3), strides=(stride, stride),
                        padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=default_init(1.0),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, BIAS_AXES),
                        name=f"blocks_{2 * i + 1}")(x)
            x = nn.silu(x)
        while x.shape[1] > target_size:  # more stride than stages: average the rest away
            x = nn.avg_pool(x, (2, 2), (2, 2))
        return zero_conv(self.features, 3, self.dtype, "conv_out")(x)


class NCSNppControlNet(NCSNpp):
    """The residuals (one per skip connection, then the middle's) for a conditioning image."""

    conditioning_channels: int = 1
    embedding_channels: Sequence[int] = (16, 32)

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, cond=None, *, train: bool = False,
                 conditioning_scale: float = 1.0):
        self._check(x)
        if cond is None or cond.ndim != 4 or cond.shape[-1] != self.conditioning_channels:
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"The ControlNet takes a conditioning image [B, H, W, "
                             f"{self.conditioning_channels}], got {got}.")
        if cond.shape[0] != x.shape[0]:
            raise ValueError(f"{cond.shape[0]} conditioning images for a batch of "
                             f"{x.shape[0]}.")
        noise_cond = self._noise_levels(x, noise_cond)
        temb = self._embedding(noise_cond, labels, train)
        x = self._input(x)
        hint = ConditioningEmbedding(self.nf, tuple(self.embedding_channels), self.dtype,
                                     name="controlnet_cond_embedding")(cond, x.shape[1])
        hs = self._down(x, temb, train, hint=hint)
        h = self._middle(hs[-1], temb, train)
        scale = jnp.asarray(conditioning_scale, self.dtype)
        down = tuple(zero_conv(s.shape[-1], 1, self.dtype, f"controlnet_down_{i}")(s) * scale
                     for i, s in enumerate(hs))
        mid = zero_conv(h.shape[-1], 1, self.dtype, "controlnet_mid_block")(h) * scale
        return down, mid


class ControlledNetwork(nn.Module):
    """A frozen base network steered by a ControlNet: `labels` = {"labels", "cond"}."""

    base: nn.Module
    controlnet: nn.Module
    conditioning_scale: float = 1.0

    def __call__(self, x, noise_cond, labels=None, *, train: bool = False):
        if not isinstance(labels, dict) or CONDITION_KEY not in labels:
            raise ValueError("A ControlNet network takes labels={'labels': class ids or None, "
                             "'cond': the conditioning image}.")
        classes, cond = labels.get(LABELS_KEY), labels[CONDITION_KEY]
        down, mid = self.controlnet(x, noise_cond, classes, cond, train=train,
                                    conditioning_scale=self.conditioning_scale)
        return self.base(x, noise_cond, classes, train=False, down_residuals=down,
                         mid_residual=mid)


def initialise_from_base(controlnet_params: Any, base_params: Any) -> Any:
    """ControlNet parameters with every layer the base also has copied from it (diffusers'
    `ControlNetModel.from_unet`); the conditioning embedding and zero convs keep their init."""
    def copy(ours, theirs):
        if isinstance(ours, dict):
            return {k: copy(v, theirs.get(k) if isinstance(theirs, dict) else None)
                    for k, v in ours.items()}
        if theirs is not None and getattr(theirs, "shape", None) == getattr(ours, "shape", None):
            return jnp.asarray(theirs, ours.dtype) if isinstance(ours, jax.Array) else theirs
        return ours

    return copy(controlnet_params, base_params)
