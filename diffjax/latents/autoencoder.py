"""The KL autoencoder of latent diffusion, layer for layer diffusers' `AutoencoderKL`.

This is the first stage of Stable Diffusion (SD-VAE, `stabilityai/sd-vae-ft-ema` / `-mse`), of
SD-XL and, with 16 latent channels and no quant convs, of SD3 and Flux. Every size comes from the
diffusers `config.json` (`AutoencoderKL.from_diffusers_config`), and parameter paths mirror the
diffusers state-dict names (`encoder.down_blocks.0.resnets.1.conv2.weight` is
`params['encoder']['down_blocks_0']['resnets_1']['conv2']['kernel']`), so loading is a renaming
plus the NCHW -> NHWC kernel transposition (`diffjax/latents/diffusers_weights.py`).

Layout is NHWC. Parameters are float32 and carry logical axis names (convolution output channels
`conv_out`, input channels `conv_in`, norms `norm`) so the mesh rules shard them like the U-Net;
`dtype` is the compute dtype (bfloat16 halves activation memory; norms and attention softmax
still reduce in float32, as diffusers' `upcast_softmax` does).

Structure (diffusers names): encoder = conv_in, `DownEncoderBlock2D` per entry of
`block_out_channels` (`layers_per_block` ResnetBlock2D, then a stride-2 conv after right/bottom
zero padding except in the last block), mid block (resnet, single-head attention, resnet),
GroupNorm, SiLU, conv_out to 2 * latent_channels; quant_conv (1x1); the posterior
N(mean, exp(logvar)) with logvar clamped to [-30, 20]; post_quant_conv (1x1); decoder = conv_in,
mid block, `UpDecoderBlock2D` per level (`layers_per_block + 1` resnets, then nearest x2 and a
conv except in the last block), GroupNorm, SiLU, conv_out. Every GroupNorm has
`norm_num_groups` groups and eps 1e-6; dropout is 0 in every diffusers VAE and is left out.

Deliberate difference: when trained from scratch, kernels start as torch's default
(kaiming-uniform, a = sqrt(5)) but biases start at zero (torch draws them uniformly).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.latents import posterior

CONV_AXES = (None, None, "conv_in", "conv_out")
DENSE_AXES = ("conv_in", "conv_out")
GROUPNORM_EPS = 1e-6

# torch's default Conv2d/Linear init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(features: int, kernel: int, dtype, *, stride: int = 1, padding: Any = None,
          name: str | None = None) -> nn.Conv:
    if padding is None:
        padding = ((kernel // 2, kernel // 2),) * 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=padding,
        kernel_init=nn.with_logical_partitioning(_TORCH_KERNEL_INIT, CONV_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        dtype=dtype, param_dtype=jnp.float32, name=name)


def _dense(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.with_logical_partitioning(_TORCH_KERNEL_INIT, DENSE_AXES),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        dtype=dtype, param_dtype=jnp.float32, name=name)


def _group_norm(groups: int, dtype, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(
        num_groups=groups, epsilon=GROUPNORM_EPS, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        dtype=dtype, param_dtype=jnp.float32, name=name)


class ResnetBlock(nn.Module):
    """diffusers' ResnetBlock2D without a time embedding (temb_channels=None)."""

    out_channels: int
    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm1")(x))
        h = _conv(self.out_channels, 3, self.dtype, name="conv1")(h)
        h = nn.silu(_group_norm(self.groups, self.dtype, "norm2")(h))
        h = _conv(self.out_channels, 3, self.dtype, name="conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, name="conv_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """The mid-block self-attention: GroupNorm, q/k/v/out projections, residual.

    diffusers builds it with heads = channels // attention_head_dim and attention_head_dim =
    channels, so it is single-head with head dimension = channels (scale 1/sqrt(channels)).
    """

    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, height, width, c = x.shape
        h = _group_norm(self.groups, self.dtype, "group_norm")(x).reshape(b, height * width, c)
        q, k, v = (_dense(c, self.dtype, name)(h)[:, :, None, :]
                   for name in ("to_q", "to_k", "to_v"))
        h = jax.nn.dot_product_attention(q, k, v).reshape(b, height * width, c)
        h = _dense(c, self.dtype, "to_out_0")(h)
        return x + h.reshape(b, height, width, c)


class MidBlock(nn.Module):
    groups: int
    add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        x = ResnetBlock(c, self.groups, self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = Attention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock(c, self.groups, self.dtype, name="resnets_1")(x)


class Downsample(nn.Module):
    """Downsample2D(padding=0): zero-pad right and bottom by one, then a 3x3 conv of stride 2."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv(x.shape[-1], 3, self.dtype, stride=2, padding=((0, 1), (0, 1)),
                     name="conv")(x)


class Upsample(nn.Module):
    """Upsample2D: nearest-neighbour x2, then a 3x3 conv."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(x.shape[-1], 3, self.dtype, name="conv")(x)


class DownEncoderBlock(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    add_downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
        return Downsample(self.dtype, name="downsamplers_0")(x) if self.add_downsample else x


class UpDecoderBlock(nn.Module):
    out_channels: int
    num_layers: int
    groups: int
    add_upsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"resnets_{i}")(x)
        return Upsample(self.dtype, name="upsamplers_0")(x) if self.add_upsample else x


class Encoder(nn.Module):
    block_out_channels: Sequence[int]
    layers_per_block: int
    latent_channels: int
    groups: int
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _conv(self.block_out_channels[0], 3, self.dtype, name="conv_in")(x)
        last = len(self.block_out_channels) - 1
        for level, channels in enumerate(self.block_out_channels):
            h = DownEncoderBlock(channels, self.layers_per_block, self.groups, level != last,
                                 self.dtype, name=f"down_blocks_{level}")(h)
        h = MidBlock(self.groups, self.mid_block_add_attention, self.dtype, name="mid_block")(h)
        h = nn.silu(_group_norm(self.groups, self.dtype, "conv_norm_out")(h))
        return _conv(2 * self.latent_channels, 3, self.dtype, name="conv_out")(h)


class Decoder(nn.Module):
    block_out_channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    groups: int
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        channels = list(reversed(self.block_out_channels))
        h = _conv(channels[0], 3, self.dtype, name="conv_in")(z)
        h = MidBlock(self.groups, self.mid_block_add_attention, self.dtype, name="mid_block")(h)
        for level, width in enumerate(channels):
            h = UpDecoderBlock(width, self.layers_per_block + 1, self.groups,
                               level != len(channels) - 1, self.dtype,
                               name=f"up_blocks_{level}")(h)
        h = nn.silu(_group_norm(self.groups, self.dtype, "conv_norm_out")(h))
        return _conv(self.out_channels, 3, self.dtype, name="conv_out")(h)


class AutoencoderKL(nn.Module):
    """diffusers' AutoencoderKL in NHWC. Images are float in [-1, 1].

    `encode(x) -> (mean, logvar)` of the diagonal Gaussian posterior (float32, the VAE's own
    latent space, logvar clamped); `decode(z) -> images` (float32); `__call__` does both, with a
    posterior sample when `sample_posterior` (then `rng` is required) and returns
    (reconstruction, mean, logvar). Scale and shift of the latents are not part of the network:
    see `diffjax.latents.vae.VAE`.
    """

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: Sequence[int] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def setup(self):
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise ValueError(
                    f"autoencoder.block_out_channels={tuple(self.block_out_channels)} has "
                    f"{channels} channels, not divisible by norm_num_groups="
                    f"{self.norm_num_groups}; choose channel counts that are multiples of it.")
        self.encoder = Encoder(tuple(self.block_out_channels), self.layers_per_block,
                               self.latent_channels, self.norm_num_groups,
                               self.mid_block_add_attention, self.dtype)
        self.decoder = Decoder(tuple(self.block_out_channels), self.layers_per_block,
                               self.out_channels, self.norm_num_groups,
                               self.mid_block_add_attention, self.dtype)
        if self.use_quant_conv:
            self.quant_conv = _conv(2 * self.latent_channels, 1, self.dtype)
        if self.use_post_quant_conv:
            self.post_quant_conv = _conv(self.latent_channels, 1, self.dtype)

    def encode(self, x):
        f = self.downsampling_factor
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(
                f"Images of {x.shape[1]}x{x.shape[2]} pixels are not divisible by the "
                f"autoencoder's downsampling factor {f}; set --config.data.image_size to a "
                f"multiple of {f}.")
        h = self.encoder(x.astype(self.dtype))
        if self.use_quant_conv:
            h = self.quant_conv(h)
        return posterior.split_moments(h.astype(jnp.float32))

    def decode(self, z):
        z = z.astype(self.dtype)
        if self.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, x, *, sample_posterior: bool = False, rng: jax.Array | None = None,
                 train: bool = False):
        # `train` only keeps the diffjax network convention (`model.init(rng, x, train=False)`,
        # as diffjax.state.train_state does): diffusers' VAEs have no dropout, so it changes nothing.
        del train
        mean, logvar = self.encode(x)
        if sample_posterior:
            if rng is None:
                raise ValueError("sample_posterior=True needs an rng.")
            z = posterior.sample(rng, mean, posterior.std_from_logvar(logvar))
        else:
            z = mean
        return self.decode(z), mean, logvar

    @classmethod
    def from_diffusers_config(cls, config: Mapping[str, Any], dtype=jnp.float32,
                              source: str = "config.json") -> "AutoencoderKL":
        """The network a diffusers `AutoencoderKL` config.json describes (diffusers' defaults
        for absent keys); a config diffjax cannot reproduce exactly is a ValueError."""
        get = lambda key, default: config.get(key, default)  # noqa: E731
        name = get("_class_name", "AutoencoderKL")
        if name != "AutoencoderKL":
            raise ValueError(f"{source} describes a {name!r}, not an 'AutoencoderKL'; diffjax "
                             f"loads diffusers AutoencoderKL folders only.")
        channels = tuple(int(c) for c in get("block_out_channels", (64,)))
        expected = {
            "down_block_types": ("DownEncoderBlock2D",) * len(channels),
            "up_block_types": ("UpDecoderBlock2D",) * len(channels),
            "act_fn": "silu",
        }
        for key, want in expected.items():
            value = get(key, want)
            value = tuple(value) if isinstance(value, (list, tuple)) else value
            if value != want:
                raise ValueError(f"{source}: {key}={value!r} is not supported; diffjax's "
                                 f"AutoencoderKL has {key}={want!r}.")
        return cls(
            in_channels=int(get("in_channels", 3)),
            out_channels=int(get("out_channels", 3)),
            block_out_channels=channels,
            layers_per_block=int(get("layers_per_block", 1)),
            latent_channels=int(get("latent_channels", 4)),
            norm_num_groups=int(get("norm_num_groups", 32)),
            use_quant_conv=bool(get("use_quant_conv", True)),
            use_post_quant_conv=bool(get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(get("mid_block_add_attention", True)),
            dtype=dtype,
        )

    def diffusers_config(self) -> dict[str, Any]:
        """The config.json of this network, for writing a diffusers folder."""
        n = len(self.block_out_channels)
        return {
            "_class_name": "AutoencoderKL", "in_channels": self.in_channels,
            "out_channels": self.out_channels, "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block, "act_fn": "silu",
            "latent_channels": self.latent_channels, "norm_num_groups": self.norm_num_groups,
            "use_quant_conv": self.use_quant_conv,
            "use_post_quant_conv": self.use_post_quant_conv,
            "mid_block_add_attention": self.mid_block_add_attention,
        }
