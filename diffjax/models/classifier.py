"""Noise-conditional classifiers p(y | x_t) for classifier guidance (Dhariwal & Nichol, 2021).

`classifier(x_t_in, noise_cond, labels=None, *, train) -> logits [B, num_classes]`: the call of
every diffjax network (labels are ignored), so the training state, sharding and checkpoints are
the diffusion model's. What noise_cond and the input scaling are is decided where the classifier
is bound to a process (`diffjax.diffusion.classifier_guidance`), as for the networks.

- "unet": the encoder half of diffjax's U-Net, as ADM's `EncoderUNetModel` (and score_sde's
  controllable-generation classifier, a Wide ResNet on the same time embedding): conv_in,
  BigGAN residual blocks per level with downsampling blocks between levels, the middle block
  (residual, attention, residual), then ADM's "adaptive" pooling head: GroupNorm, SiLU, global
  average pooling and a zero-initialised Linear to the logits. Residual blocks, attention and
  the time embedding are the U-Net's (`ncsnpp_layers`), so the widths read as the U-Net's.
- "dit": a small DiT encoder: patches, DiT blocks conditioned on the noise level (adaLN-Zero),
  mean over tokens, LayerNorm and a zero-initialised Linear.

Neither is ADM's classifier weight for weight; "adm" (`diffjax.models.adm_classifier`) is, and
converts ADM's published classifiers.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.dit import TOKEN_AXES, DiTBlock, patchify, sincos_2d_position_embedding
from diffjax.models.embeddings import (GaussianFourierEmbedding, NoiseLevelEmbedding,
                                       score_sde_timestep_embedding)
from diffjax.models.ncsnpp_layers import (AttnBlockpp, ResnetBlockBigGANpp, conv3x3, dense,
                                          get_activation, group_norm)

CLASSIFIER_KINDS = ("unet", "dit", "adm")  # adm: `diffjax.models.adm_classifier`


def _logits_layer(num_classes: int, name: str) -> nn.Dense:
    return nn.Dense(num_classes, param_dtype=jnp.float32,
                    kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                             ("conv_in", None)),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                    name=name)


class EncoderUNetClassifier(nn.Module):
    num_classes: int
    nf: int = 32
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.0
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    nonlinearity: str = "swish"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, *, train: bool = False) -> jax.Array:
        del labels
        act = get_activation(self.nonlinearity)
        nf, dtype = self.nf, self.dtype
        batch = x.shape[0]
        noise_cond = jnp.broadcast_to(jnp.asarray(noise_cond, jnp.float32), (batch,))
        if self.embedding_type == "fourier":
            features = GaussianFourierEmbedding(2 * nf, scale=self.fourier_scale,
                                                name="noise_features")(noise_cond)
        else:
            features = score_sde_timestep_embedding(noise_cond, nf)
        temb = dense(4 * nf, dtype=dtype, name="temb_0")(features.astype(dtype))
        temb = dense(4 * nf, dtype=dtype, name="temb_1")(act(temb))

        def block(name, out_ch=None, down=False):
            return ResnetBlockBigGANpp(out_ch=out_ch, act=act, down=down, dropout=self.dropout,
                                       skip_rescale=True, init_scale=0.0, dtype=dtype, name=name)

        h = conv3x3(nf, dtype=dtype, name="conv_in")(x.astype(dtype))
        for level, mult in enumerate(self.ch_mult):
            for i in range(self.num_res_blocks):
                h = block(f"down_{level}_block_{i}", nf * mult)(h, temb, train)
                if h.shape[2] in self.attn_resolutions:
                    h = AttnBlockpp(skip_rescale=True, dtype=dtype,
                                    name=f"down_{level}_attn_{i}")(h)
            if level != len(self.ch_mult) - 1:
                h = block(f"down_{level}_resample", down=True)(h, temb, train)
        h = block("mid_block_0")(h, temb, train)
        h = AttnBlockpp(skip_rescale=True, dtype=dtype, name="mid_attn")(h)
        h = block("mid_block_1")(h, temb, train)
        h = act(group_norm(h.shape[-1], dtype=dtype, name="norm_out")(h))
        pooled = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
        return _logits_layer(self.num_classes, "logits")(pooled)


class DiTClassifier(nn.Module):
    num_classes: int
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    embedding_type: str = "positional"
    fourier_scale: float = 16.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, noise_cond, labels=None, *, train: bool = False) -> jax.Array:
        del labels, train
        batch, height, width, _ = x.shape
        p = self.patch_size
        tokens = nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.with_logical_partitioning(
                              nn.initializers.xavier_uniform(), ("patch", "embed")),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 ("embed",)),
                          name="patch_embed")(patchify(x, p))
        positions = sincos_2d_position_embedding(self.hidden_size, height // p, width // p)
        tokens = nn.with_logical_constraint(tokens + jnp.asarray(positions)[None], TOKEN_AXES)
        noise_cond = jnp.broadcast_to(jnp.asarray(noise_cond, jnp.float32), (batch,))
        c = NoiseLevelEmbedding(self.hidden_size, kind=self.embedding_type,
                                fourier_scale=self.fourier_scale, dtype=self.dtype,
                                name="noise_embed")(noise_cond)
        for i in range(self.depth):
            tokens = DiTBlock(self.hidden_size, self.num_heads, dtype=self.dtype,
                              name=f"block_{i}")(tokens, c)
        pooled = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                              name="norm")(jnp.mean(tokens.astype(jnp.float32), axis=1))
        return _logits_layer(self.num_classes, "logits")(pooled)
