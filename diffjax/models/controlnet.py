"""diffusers' `ControlNetModel` (Stable Diffusion 1.x / 2.x / XL ControlNets) as a Flax module
(NHWC), built on the U-Net's own encoder (`sd_unet.UNetEncoder`).

Structure, as diffusers 0.42 (models/controlnets/controlnet.py):
* `controlnet_cond_embedding`: conv_in 3x3 (conditioning_channels -> c0), SiLU, then per step
  of `conditioning_embedding_out_channels` a 3x3 conv (c_i -> c_i) and a stride-2 3x3 conv
  (c_i -> c_{i+1}), SiLU after each, and `conv_out` 3x3 (-> block_out_channels[0]);
  (16, 32, 96, 256) takes a 512-pixel image to 64x64 latents (factor 2^3);
* the U-Net's conv_in, time embedding (+ SDXL's add_embedding), down blocks and mid block,
  same names and weights (`from_unet` copies them; diffusers' `ControlNetModel.from_unet`);
  the conditioning features are added to conv_in's output;
* `controlnet_down_blocks.0..N` (a 1x1 conv per skip connection) and `controlnet_mid_block`,
  zero-initialised in diffusers (and here when trained from scratch);
* outputs times `conditioning_scale`; with `guess_mode` the i-th of the N + 1 outputs is scaled
  by 10^(-1 + i / N) (torch.logspace(-1, 0, N + 1)) times conditioning_scale;
  `global_pool_conditions` averages each output over H, W; `controlnet_conditioning_channel_
  order="bgr"` flips the conditioning image's channels.

What differs from diffusers' U-Net here is diffusers' own: a ControlNet's conv_in is always 3x3,
its time embedding is 4 x block_out_channels[0] wide with no time_embedding_act_fn /
timestep_post_act, and it never applies center_input_sample. The residuals are consumed by
`UNet2DConditionModel(down_block_additional_residuals=..., mid_block_additional_residual=...)`.
Not implemented (one-line errors from the config): class embeddings, encoder_hid_proj,
mid_block_type "UNetMidBlock2D", addition_embed_type other than SDXL's "text_time".
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.sd_unet import UNetEncoder, example_inputs
from diffjax.models.sd_unet_config import UNetConfig
from diffjax.models.sd_unet_layers import CONV_AXES, conv

DEFAULT_EMBEDDING_CHANNELS = (16, 32, 96, 256)
# ControlNet config.json keys the encoder shares with a UNet2DConditionModel config.
_SHARED_KEYS = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
    "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
    "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
    "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type",
    "attention_head_dim", "num_attention_heads", "use_linear_projection", "class_embed_type",
    "addition_embed_type", "addition_time_embed_dim", "num_class_embeds", "upcast_attention",
    "resnet_time_scale_shift", "projection_class_embeddings_input_dim")
_UP = {"CrossAttnDownBlock2D": "CrossAttnUpBlock2D", "DownBlock2D": "UpBlock2D"}


@dataclasses.dataclass(frozen=True)
class ControlNetConfig:
    """A ControlNetModel's config.json: its encoder (as a UNetConfig) and conditioning."""

    unet: UNetConfig = UNetConfig()
    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = DEFAULT_EMBEDDING_CHANNELS
    channel_order: str = "rgb"
    global_pool_conditions: bool = False

    @property
    def downscale(self) -> int:
        """Conditioning image pixels per latent pixel."""
        return 2 ** (len(self.conditioning_embedding_out_channels) - 1)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], source: str = "config.json"
                       ) -> "ControlNetConfig":
        name = config.get("_class_name", "ControlNetModel")
        if name != "ControlNetModel":
            raise ValueError(f"{source} describes a {name!r}, not a 'ControlNetModel'.")
        encoder = {k: config[k] for k in _SHARED_KEYS if k in config}
        if encoder.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"{source}: mid_block_type={encoder['mid_block_type']!r} is not "
                             f"supported; diffjax's ControlNet has a UNetMidBlock2DCrossAttn.")
        down = encoder.get("down_block_types", UNetConfig().to_diffusers()["down_block_types"])
        encoder["up_block_types"] = [_UP.get(t, t) for t in reversed(down)]
        unet = UNetConfig.from_diffusers(encoder, source)
        order = config.get("controlnet_conditioning_channel_order", "rgb")
        if order not in ("rgb", "bgr"):
            raise ValueError(f"{source}: controlnet_conditioning_channel_order={order!r}; "
                             f"diffusers knows 'rgb' and 'bgr'.")
        channels = tuple(int(c) for c in config.get("conditioning_embedding_out_channels") or
                         DEFAULT_EMBEDDING_CHANNELS)
        return cls(unet, int(config.get("conditioning_channels", 3)), channels, order,
                   bool(config.get("global_pool_conditions", False)))

    @classmethod
    def from_unet(cls, unet: UNetConfig, conditioning_channels: int = 3,
                  conditioning_embedding_out_channels: Sequence[int] = DEFAULT_EMBEDDING_CHANNELS
                  ) -> "ControlNetConfig":
        """diffusers' `ControlNetModel.from_unet`: the U-Net's encoder settings (conv_in 3x3,
        time embedding 4 x c0, no post activations, no center_input_sample)."""
        encoder = dataclasses.replace(
            unet, conv_in_kernel=3, time_embedding_dim=4 * unet.block_out_channels[0],
            time_embedding_act_fn=None, timestep_post_act=None, center_input_sample=False,
            conv_out_kernel=3, out_channels=unet.in_channels)
        return cls(encoder, conditioning_channels, tuple(conditioning_embedding_out_channels))

    def to_diffusers(self) -> dict[str, Any]:
        full = self.unet.to_diffusers()
        config = {k: full[k] for k in _SHARED_KEYS if k in full}
        config.update({
            "_class_name": "ControlNetModel",
            "conditioning_channels": self.conditioning_channels,
            "conditioning_embedding_out_channels": list(self.conditioning_embedding_out_channels),
            "controlnet_conditioning_channel_order": self.channel_order,
            "global_pool_conditions": self.global_pool_conditions,
            "addition_embed_type_num_heads": 64,
        })
        return config


def check_fits(controlnet: ControlNetConfig, unet: UNetConfig, where: str = "ControlNet"
               ) -> None:
    """One line when a ControlNet cannot steer this U-Net."""
    c = controlnet.unet
    if c.cross_attention_dim != unet.cross_attention_dim:
        raise ValueError(f"{where} has cross_attention_dim={c.cross_attention_dim} but the "
                         f"U-Net's is {unet.cross_attention_dim}: it was trained for another "
                         f"text encoder; use a ControlNet made for this model.")
    for key in ("block_out_channels", "layers_per_block", "in_channels", "down_attention"):
        mine, theirs = getattr(c, key), getattr(unet, key)
        if mine != theirs:
            raise ValueError(f"{where} has {key}={mine} but the U-Net has {theirs}: its "
                             f"residuals do not fit the U-Net's skip connections; use a "
                             f"ControlNet made for this model.")
    if c.addition_embed_type != unet.addition_embed_type:
        raise ValueError(f"{where} has addition_embed_type={c.addition_embed_type!r} but the "
                         f"U-Net has {unet.addition_embed_type!r} (SD 1.x/2.x vs SDXL); use a "
                         f"ControlNet made for this model.")


def _skip_channels(config: UNetConfig) -> list[int]:
    channels = [config.block_out_channels[0]]
    for i, width in enumerate(config.block_out_channels):
        channels += [width] * config.layers_per_block[i]
        if i < config.num_blocks - 1:
            channels.append(width)
    return channels


def zero_conv(features: int, dtype, name: str) -> nn.Conv:
    return nn.Conv(features, (1, 1), padding="VALID",
                   kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, CONV_AXES),
                   bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
                   dtype=dtype, param_dtype=jnp.float32, name=name)


class ControlNetConditioningEmbedding(nn.Module):
    features: int
    channels: tuple[int, ...] = DEFAULT_EMBEDDING_CHANNELS
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, cond):
        x = nn.silu(conv(self.channels[0], 3, self.dtype, "conv_in")(cond.astype(self.dtype)))
        for i in range(len(self.channels) - 1):
            x = nn.silu(conv(self.channels[i], 3, self.dtype, f"blocks_{2 * i}")(x))
            x = nn.silu(conv(self.channels[i + 1], 3, self.dtype, f"blocks_{2 * i + 1}",
                             stride=2)(x))
        out = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                      param_dtype=jnp.float32, name="conv_out",
                      kernel_init=nn.with_logical_partitioning(nn.initializers.zeros, CONV_AXES),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ("conv_out",)))
        return out(x)


class ControlNetModel(UNetEncoder):
    """(sample NHWC latents, timesteps, encoder_hidden_states, controlnet_cond NHWC image) ->
    (down_block_res_samples tuple, mid_block_res_sample), NHWC, in the sample's dtype.
    `config` is the encoder's UNetConfig (`ControlNetConfig.unet`)."""

    conditioning_channels: int = 3
    conditioning_embedding_out_channels: tuple[int, ...] = DEFAULT_EMBEDDING_CHANNELS
    channel_order: str = "rgb"
    global_pool_conditions: bool = False

    @classmethod
    def from_config(cls, config: ControlNetConfig, dtype=jnp.float32, **options
                    ) -> "ControlNetModel":
        return cls(config.unet, dtype, conditioning_channels=config.conditioning_channels,
                   conditioning_embedding_out_channels=config.conditioning_embedding_out_channels,
                   channel_order=config.channel_order,
                   global_pool_conditions=config.global_pool_conditions, **options)

    @property
    def controlnet_config(self) -> ControlNetConfig:
        return ControlNetConfig(self.config, self.conditioning_channels,
                                tuple(self.conditioning_embedding_out_channels),
                                self.channel_order, self.global_pool_conditions)

    def setup(self):
        super().setup()
        c = self.config
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            c.block_out_channels[0], tuple(self.conditioning_embedding_out_channels), self.dtype)
        self.controlnet_down_blocks = [zero_conv(width, self.dtype, None)
                                       for width in _skip_channels(c)]
        self.controlnet_mid_block = zero_conv(c.block_out_channels[-1], self.dtype, None)

    def check_condition(self, sample_shape, cond) -> None:
        factor = 2 ** (len(self.conditioning_embedding_out_channels) - 1)
        want = (sample_shape[0], sample_shape[1] * factor, sample_shape[2] * factor,
                self.conditioning_channels)
        shape = tuple(cond.shape)
        if len(shape) != 4 or shape[-1] != self.conditioning_channels:
            raise ValueError(f"controlnet_cond has shape {shape}; this ControlNet takes NHWC "
                             f"images with {self.conditioning_channels} channels, here {want}.")
        if shape[1:3] != want[1:3] or shape[0] != want[0]:
            raise ValueError(f"controlnet_cond has shape {shape} but latents of shape "
                             f"{tuple(sample_shape)} need {want} (the conditioning image is "
                             f"{factor}x the latents' size); resize the conditioning image.")

    def __call__(self, sample, timesteps, encoder_hidden_states, controlnet_cond, *,
                 conditioning_scale: float = 1.0, guess_mode: bool = False, text_embeds=None,
                 time_ids=None, train: bool = False):
        cond = jnp.asarray(controlnet_cond)
        self.check_condition(jnp.shape(sample), cond)
        if self.channel_order == "bgr":
            cond = jnp.flip(cond, axis=-1)
        x, emb, context = self.prepare(sample, timesteps, encoder_hidden_states, text_embeds,
                                       time_ids)
        h = self.conv_in(x) + self.controlnet_cond_embedding(cond)
        h, skips = self.down(h, emb, context, train)
        h = self.middle(h, emb, context, train)
        down = [block(skip) for block, skip in zip(self.controlnet_down_blocks, skips)]
        mid = self.controlnet_mid_block(h)
        scales = _scales(len(down), guess_mode and not self.global_pool_conditions)
        scale = jnp.asarray(conditioning_scale, down[0].dtype)
        down = [d * (scale * s) for d, s in zip(down, scales[:-1])]
        mid = mid * (scale * scales[-1])
        if self.global_pool_conditions:
            down = [jnp.mean(d, axis=(1, 2), keepdims=True) for d in down]
            mid = jnp.mean(mid, axis=(1, 2), keepdims=True)
        dtype = jnp.asarray(sample).dtype
        return tuple(d.astype(dtype) for d in down), mid.astype(dtype)


def _scales(count: int, guess_mode: bool) -> np.ndarray:
    if not guess_mode:
        return np.ones(count + 1, np.float32)
    # torch.logspace(-1, 0, N + 1) in float32: 10 ** linspace.
    return np.power(np.float32(10.0), np.linspace(-1, 0, count + 1, dtype=np.float32))


def example_call_inputs(config: ControlNetConfig, batch: int = 1) -> dict[str, Any]:
    """Abstract inputs for `init` / `jax.eval_shape` (positional ones first)."""
    inputs = example_inputs(config.unet, batch)
    size = inputs["sample"].shape[1] * config.downscale
    inputs["controlnet_cond"] = jax.ShapeDtypeStruct(
        (batch, size, size, config.conditioning_channels), jnp.float32)
    return inputs


@functools.lru_cache(maxsize=8)
def _abstract_variables(config: ControlNetConfig) -> Any:
    module = ControlNetModel.from_config(config)
    inputs = example_call_inputs(config)
    args = [inputs.pop(k) for k in ("sample", "timesteps", "encoder_hidden_states",
                                    "controlnet_cond")]
    return jax.eval_shape(module.init, jax.random.key(0), *args, **inputs)


def abstract_params(module: ControlNetModel) -> Any:
    return nn.unbox(_abstract_variables(module.controlnet_config)["params"])


def logical_axes(module: ControlNetModel) -> Any:
    return nn.get_partition_spec(_abstract_variables(module.controlnet_config)["params"])


def parameter_count(module: ControlNetModel) -> int:
    return sum(int(leaf.size) for leaf in jax.tree.leaves(abstract_params(module)))


def from_unet(unet_params: Any, controlnet: ControlNetModel, rng: jax.Array | None = None
              ) -> dict:
    """ControlNet parameters initialised as diffusers' `ControlNetModel.from_unet`: conv_in,
    time_embedding, add_embedding, down blocks and mid block copied from the U-Net's
    parameters; the conditioning embedding's first layers random (torch's default init,
    conv_out zero) and every zero conv zero."""
    inputs = example_call_inputs(controlnet.controlnet_config)
    args = [jnp.zeros(inputs.pop(k).shape, jnp.float32)
            for k in ("sample", "timesteps", "encoder_hidden_states", "controlnet_cond")]
    kwargs = {k: jnp.zeros(v.shape, v.dtype) for k, v in inputs.items()}
    fresh = nn.unbox(jax.jit(controlnet.init)(
        jax.random.key(0) if rng is None else rng, *args, **kwargs)["params"])
    copied = dict(fresh)
    for name in ("conv_in", "time_embedding", "add_embedding", "mid_block"):
        if name in fresh:
            copied[name] = _copy(fresh[name], unet_params[name], name)
    for name in fresh:
        if name.startswith("down_blocks_"):
            copied[name] = _copy(fresh[name], unet_params[name], name)
    return copied


def _copy(ours: Any, theirs: Any, where: str) -> Any:
    mine = jax.tree_util.tree_structure(ours)
    if mine != jax.tree_util.tree_structure(theirs) or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(ours),
                                                       jax.tree.leaves(theirs))):
        raise ValueError(f"The U-Net's {where} does not have the ControlNet's layout; build the "
                         f"ControlNet with ControlNetConfig.from_unet(the U-Net's config).")
    return jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), ours, theirs)
