"""NCSN++ / DDPM++ (Song et al., 2021): score_sde's `models/ncsnpp.py` network, in Flax.

DDPM++ and NCSN++ are configurations of this one network (see `configs/cifar10_ddpmpp_vp.py`
and `configs/cifar10_ncsnpp_ve.py`); every switch of the reference is here and computes the same
function weight for weight (`tests/test_convert.py` compares raw outputs with score_sde's own
code). Parameter counts equal score_sde's: 61,804,419 for DDPM++ cont. (VP), 106,632,579 deep;
62,758,915 for NCSN++ cont. (VE), 107,587,075 deep (`tests/test_ncsnpp.py`).

Call contract: `net(x, noise_cond, labels, *, train)`. The network knows no SDE, but two switches
rely on what `diffjax.diffusion.parameterization` feeds it, exactly as score_sde's `get_score_fn` does:
- `embedding_type="positional"` embeds noise_cond as given (999 t for VP / sub-VP);
  `"fourier"` embeds it with fixed Gaussian Fourier features (score_sde feeds log sigma for VE).
- `scale_by_sigma=True` divides the output by exp(noise_cond), i.e. by sigma when noise_cond is
  log sigma (VE). score_sde's continuous VE network takes sigma and applies the log itself; here
  the score module takes the log, so the function is identical and the output is the score
  (`model.parameterization="score"`).
- `centered=False` maps [0, 1] input to 2x - 1 inside the network (score_sde's data.centered).

Differences, all additions: `num_classes > 0` adds diffjax's class embedding (a table with a
null row for classifier-free guidance) to the time embedding (`label_embedding="embedding"`) or,
as EDM's SongUNet does, to the noise features before the embedding MLP ("noise_features");
`augment_dim > 0` adds EDM's augmentation-label layer (`map_augment`, Linear(augment_dim, features)
without bias) to the noise features, fed zeros (diffjax has no augmentation pipeline), so EDM's
networks have their exact parameter count (55,735,299 for edm-cifar10-32x32-cond-vp);
attention uses `jax.nn.dot_product_attention` (the same function; fused on GPUs).

Top-level submodules are created in the order of score_sde's `all_modules` list; the converter
(`diffjax.convert`) relies on that order to map `all_modules.<i>` onto these names.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from diffjax.models import fir
from diffjax.models.embeddings import (GaussianFourierEmbedding, LabelEmbedding,
                                       score_sde_timestep_embedding)
from diffjax.models.ncsnpp_layers import (DENSE_AXES, AttnBlockpp, Combine, Downsample,
                                          ResnetBlockBigGANpp, ResnetBlockDDPMpp, Upsample, conv3x3,
                                          default_init, dense, get_activation, group_norm)

CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("positional", "fourier"),
    "label_embedding": ("embedding", "noise_features"),
}
# Where each choice lives in the config, for error messages.
CONFIG_KEYS = {"embedding_type": "model.noise_embedding"}


class NCSNpp(nn.Module):
    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "none"
    progressive_combine: str = "sum"
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    noise_conditional: bool = True  # score_sde's model.conditional: condition on the noise level
    scale_by_sigma: bool = False
    centered: bool = True
    nonlinearity: str = "swish"
    num_classes: int = 0  # diffjax extension: class-conditional with a null class
    label_dropout: float = 0.1
    label_embedding: str = "embedding"
    augment_dim: int = 0  # EDM's map_augment: augmentation labels (always zero here) -> features
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def _check(self, x):
        for field, choices in CHOICES.items():
            value = getattr(self, field)
            if value not in choices:
                key = CONFIG_KEYS.get(field, f"model.unet.{field}")
                raise ValueError(f"{key}={value!r}; choose one of {list(choices)}.")
        levels = len(self.ch_mult)
        if x.ndim != 4 or x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
            raise ValueError(
                f"Image shape {x.shape[1:]} is not [H, W, C] with H and W divisible by "
                f"2^{levels - 1} for ch_mult={tuple(self.ch_mult)}; use fewer levels "
                f"(model.unet.ch_mult) or another data.image_size.")
        if self.num_classes > 0 and not self.noise_conditional:
            raise ValueError("Class conditioning (model.conditional) needs "
                             "model.unet.noise_conditional=True.")
        if self.augment_dim < 0 or self.augment_dim and not self.noise_conditional:
            raise ValueError(f"model.unet.augment_dim={self.augment_dim} needs "
                             f"model.unet.noise_conditional=True and augment_dim >= 0.")

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, *, train: bool = False,
                 down_residuals=None, mid_residual=None):
        """`down_residuals` / `mid_residual`: a ControlNet's outputs (`ncsnpp_controlnet`),
        added to the skip connections and to the middle's output, as diffusers' U-Net adds
        them; None for the plain network."""
        self._check(x)
        noise_cond = self._noise_levels(x, noise_cond)
        temb = self._embedding(noise_cond, labels, train)
        x = self._input(x)
        out_channels = x.shape[-1]
        hs = self._down(x, temb, train)
        h = self._middle(hs[-1], temb, train)
        if (down_residuals is None) != (mid_residual is None):
            raise ValueError("ControlNet residuals come together: pass both down_residuals and "
                             "mid_residual.")
        if down_residuals is not None:
            if len(down_residuals) != len(hs):
                raise ValueError(f"{len(down_residuals)} down residuals for {len(hs)} skip "
                                 f"connections.")
            hs = [skip + residual.astype(skip.dtype) for skip, residual in zip(hs, down_residuals)]
            h = h + mid_residual.astype(h.dtype)
        h = self._up(h, hs, temb, train, out_channels)
        h = h.astype(jnp.float32)
        if self.scale_by_sigma:
            h = h / jnp.exp(noise_cond)[:, None, None, None]
        return h

    # The pieces below run inside the compact __call__ (of this class or of a ControlNet that
    # subclasses it), so the submodules they create keep these names in every network.
    def _act(self):
        return get_activation(self.nonlinearity)

    def _res_block(self, name, out_ch=None, **kwargs):
        res_cls = ResnetBlockBigGANpp if self.resblock_type == "biggan" else ResnetBlockDDPMpp
        if self.remat:
            res_cls = nn.remat(res_cls, static_argnums=(3,))
        common = dict(act=self._act(), dropout=self.dropout, skip_rescale=self.skip_rescale,
                      init_scale=self.init_scale, dtype=self.dtype)
        if self.resblock_type == "biggan":
            common.update(fir=self.fir, fir_kernel=tuple(self.fir_kernel))
        return res_cls(out_ch=out_ch, **common, **kwargs, name=name)

    def _attn(self, name):
        return AttnBlockpp(skip_rescale=self.skip_rescale, init_scale=self.init_scale,
                           dtype=self.dtype, name=name)

    def _resample(self) -> dict:
        return dict(with_conv=self.resamp_with_conv, fir=self.fir,
                    fir_kernel=tuple(self.fir_kernel), dtype=self.dtype)

    def _noise_levels(self, x, noise_cond):
        return jnp.broadcast_to(jnp.asarray(noise_cond, jnp.float32), (x.shape[0],))

    def _embedding(self, noise_cond, labels, train: bool):
        """The noise-level (+ class) embedding every residual block receives, or None."""
        nf, dtype, batch = self.nf, self.dtype, noise_cond.shape[0]
        if self.embedding_type == "fourier":
            features = GaussianFourierEmbedding(2 * nf, scale=self.fourier_scale,
                                                name="noise_features")(noise_cond)
        else:
            features = score_sde_timestep_embedding(noise_cond, nf)
        use_labels = self.num_classes > 0

        def label_embedding(dim):
            return LabelEmbedding(self.num_classes, dim, self.label_dropout, dtype=jnp.float32,
                                  name="label_embedding")(labels, train=train, batch_size=batch)

        temb = None
        if self.noise_conditional:
            if use_labels and self.label_embedding == "noise_features":
                features = features + label_embedding(features.shape[-1])
            if self.augment_dim:
                # EDM's map_augment (Linear without bias) on its augmentation labels. diffjax has
                # no augmentation pipeline, so the labels are zero ("not augmented", what EDM
                # feeds at sampling) and the layer only holds the weights of EDM's network.
                no_augment = jnp.zeros((batch, self.augment_dim), jnp.float32)
                features = features + nn.Dense(
                    features.shape[-1], use_bias=False, kernel_init=default_init(1.0, DENSE_AXES),
                    param_dtype=jnp.float32, name="augment_embedding")(no_augment)
            act = self._act()
            temb = dense(4 * nf, dtype=dtype, name="temb_0")(features.astype(dtype))
            temb = dense(4 * nf, dtype=dtype, name="temb_1")(act(temb))
            if use_labels and self.label_embedding == "embedding":
                temb = temb + label_embedding(4 * nf).astype(temb.dtype)
        return temb

    def _input(self, x):
        x = x.astype(jnp.float32)
        if not self.centered:
            x = 2 * x - 1.0  # [0, 1] data: score_sde maps it to [-1, 1] inside the network
        return x.astype(self.dtype)

    def _down(self, x, temb, train: bool, hint=None):
        """conv_in and the downsampling path: every activation the up path consumes (`hs`),
        the last one the middle's input. `hint` (a ControlNet's conditioning features) is added
        to conv_in's output."""
        resample = self._resample()
        input_pyramid = x if self.progressive_input != "none" else None
        h = conv3x3(self.nf, dtype=self.dtype, name="conv_in")(x)
        hs = [h if hint is None else h + hint.astype(h.dtype)]
        num_levels = len(self.ch_mult)
        for level in range(num_levels):
            for i in range(self.num_res_blocks):
                h = self._res_block(f"down_{level}_block_{i}", self.nf * self.ch_mult[level])(
                    hs[-1], temb, train)
                if h.shape[2] in self.attn_resolutions:
                    h = self._attn(f"down_{level}_attn_{i}")(h)
                hs.append(h)
            if level == num_levels - 1:
                continue
            if self.resblock_type == "ddpm":
                h = Downsample(hs[-1].shape[-1], **resample, name=f"down_{level}_resample")(hs[-1])
            else:
                h = self._res_block(f"down_{level}_resample", down=True)(hs[-1], temb, train)
            if self.progressive_input == "input_skip":
                input_pyramid = (fir.downsample_2d(input_pyramid, self.fir_kernel) if self.fir
                                 else fir.naive_downsample_2d(input_pyramid))
                h = Combine(self.progressive_combine, dtype=self.dtype,
                            name=f"down_{level}_pyramid")(input_pyramid, h)
            elif self.progressive_input == "residual":
                input_pyramid = Downsample(h.shape[-1], **{**resample, "with_conv": True},
                                           name=f"down_{level}_pyramid")(input_pyramid)
                input_pyramid = (input_pyramid + h) / np.sqrt(2.0) if self.skip_rescale \
                    else input_pyramid + h
                h = input_pyramid
            hs.append(h)
        return hs

    def _middle(self, h, temb, train: bool):
        h = self._res_block("mid_block_0")(h, temb, train)
        h = self._attn("mid_attn")(h)
        return self._res_block("mid_block_1")(h, temb, train)

    def _up(self, h, hs, temb, train: bool, out_channels: int):
        """The upsampling path (consuming every skip) and the output head."""
        hs = list(hs)
        act, dtype, resample = self._act(), self.dtype, self._resample()
        num_levels = len(self.ch_mult)
        pyramid = None
        for level in reversed(range(num_levels)):
            for i in range(self.num_res_blocks + 1):
                h = self._res_block(f"up_{level}_block_{i}", self.nf * self.ch_mult[level])(
                    jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
            if h.shape[2] in self.attn_resolutions:
                h = self._attn(f"up_{level}_attn")(h)
            if self.progressive != "none":
                pyramid, h = self._progressive_output(level, num_levels, h, pyramid, act,
                                                      out_channels, resample)
            if level != 0:
                if self.resblock_type == "ddpm":
                    h = Upsample(h.shape[-1], **resample, name=f"up_{level}_resample")(h)
                else:
                    h = self._res_block(f"up_{level}_resample", up=True)(h, temb, train)
        assert not hs, "every down-path activation must feed the up path"

        if self.progressive == "output_skip":
            return pyramid
        h = act(group_norm(h.shape[-1], dtype=dtype, name="norm_out")(h))
        return conv3x3(out_channels, init_scale=self.init_scale, dtype=dtype, name="conv_out")(h)

    def _progressive_output(self, level, num_levels, h, pyramid, act, out_channels, resample):
        """score_sde's output pyramid: 'output_skip' sums per-level image predictions,
        'residual' carries a feature pyramid that joins h at every level."""
        dtype = self.dtype
        channels = h.shape[-1]
        if self.progressive == "output_skip":
            out = act(group_norm(channels, dtype=dtype, name=f"up_{level}_pyramid_norm")(h))
            out = conv3x3(out_channels, init_scale=self.init_scale, dtype=dtype,
                          name=f"up_{level}_pyramid_conv")(out)
            if level == num_levels - 1:
                return out, h
            upsampled = (fir.upsample_2d(pyramid, self.fir_kernel) if self.fir
                         else fir.naive_upsample_2d(pyramid))
            return upsampled + out, h
        if level == num_levels - 1:  # 'residual'
            out = act(group_norm(channels, dtype=dtype, name=f"up_{level}_pyramid_norm")(h))
            return conv3x3(channels, dtype=dtype, name=f"up_{level}_pyramid_conv")(out), h
        pyramid = Upsample(channels, **{**resample, "with_conv": True},
                           name=f"up_{level}_pyramid")(pyramid)
        pyramid = (pyramid + h) / np.sqrt(2.0) if self.skip_rescale else pyramid + h
        return pyramid, pyramid
