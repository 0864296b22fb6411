"""PixArt-alpha (Chen et al. 2023): DiT blocks with cross-attention to text and adaLN-single.

Per block, as PixArt-alpha's `PixArtBlock` (diffusion/model/nets/PixArt.py):
    shift1, scale1, gate1, shift2, scale2, gate2 = scale_shift_table + t0     (6 x [B, d])
    x = x + gate1 * attn(LN(x) * (1 + scale1) + shift1)
    x = x + cross_attn(x, y, mask)                  (no norm, no gate: PixArt's order)
    x = x + gate2 * mlp(LN(x) * (1 + scale2) + shift2)
adaLN-single: ONE time MLP for the whole network, t = TimestepEmbedder(t) (DiT's) and
t0 = Linear(SiLU(t)) -> 6 d, shared by every block, each block adding its own learned
`scale_shift_table` [6, d] (initialised N(0, 1/d)); the final layer modulates with
t + its own table [2, d]. The caption projection is an MLP D_text -> d -> d with the tanh GELU
(PixArt's `CaptionEmbedder.y_proj`); the cross-attention (q from the image tokens, k/v from the
projected text tokens, the padding mask on the keys) ends in a zero-initialised projection, so
every block starts without text, as PixArt initialises it. LayerNorms have no affine
parameters (eps 1e-6); the MLP is d -> 4d -> d with the tanh GELU; self-attention is DiT's (one
fused qkv Linear). Patch embedding, the fixed 2-D sin-cos positions and unpatchify are DiT's
(`diffjax.models.dit`); PixArt's `lewei_scale` is 1 and its base size the grid, so its
position table is DiT's.

Parameter count: PixArt-XL/2 (depth 28, width 1152, 16 heads, patch 2, 4 latent channels,
learn_sigma, T5's 4096-wide states) has 610,856,096 parameters, exactly diffusers'
`PixArtTransformer2DModel` at sample_size 64 (PixArt-XL-2-512x512) and PixArt-alpha's
`PixArt_XL_2` (tests/test_pixart.py, measured on the meta device with diffusers 0.42.1).
The 1024-px PixArt-MS variant adds resolution/aspect-ratio embedders (493,056 more) that are
not implemented here.

Differences from the reference, on purpose:
- the text conditioning is a dict {"states" [B, L, D], "mask" [B, L], "pooled" [B, P]}
  (diffjax's cached text-encoder outputs; "pooled" is not used, as in PixArt);
- caption dropout is not inside the network (PixArt's `CaptionEmbedder.token_drop` swaps in a
  fixed random buffer `y_embedding`): diffjax's objective swaps in the null caption (the empty
  prompt's encoding, what diffusers' pipelines use as the negative prompt) in-graph, and
  guidance uses the same null; there is no `y_embedding` buffer;
- PixArt packs the valid text tokens of the batch into one sequence (xformers' block-diagonal
  mask); here the batch keeps its padded [B, L] layout with the padding masked on the keys,
  which computes the same attention. A row whose mask hides every token attends to all of its
  tokens instead of producing NaN;
- drop_path and window attention (both off in PixArt-alpha's released models) are left out;
- initialisation: t_block's kernel is xavier-uniform (PixArt: N(0, 0.02)); every other layer
  is initialised as PixArt initialises it.
Sizes S/B/L/XL are DiT's (`dit.DIT_SIZES`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.dit import (MLP, TOKEN_AXES, NamedDenseGeneral, SelfAttention,
                                _plain_layer_norm, patchify, sincos_2d_position_embedding,
                                unpatchify)
from diffjax.models.embeddings import NoiseLevelEmbedding

Dtype = jnp.dtype
TEXT_KEYS = ("states", "mask", "pooled")


def _normal(stddev: float, names):
    return nn.with_logical_partitioning(nn.initializers.normal(stddev), names)


def _table(name: str, module: nn.Module, rows: int, width: int) -> jax.Array:
    """PixArt's scale_shift_table: [rows, width] ~ N(0, 1/width)."""
    return module.param(name, _normal(width ** -0.5, (None, 'embed')), (rows, width),
                        jnp.float32)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


class CaptionProjection(nn.Module):
    """PixArt's y_proj: Linear(D_text, d) -> GELU(tanh) -> Linear(d, d), N(0, 0.02) kernels."""
    hidden_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, states: jax.Array) -> jax.Array:
        h = nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_normal(0.02, (None, 'mlp')),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
                     name='fc1')(states)
        h = nn.gelu(h, approximate=True)
        return nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=_normal(0.02, ('mlp', 'embed')),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ('embed',)),
                        name='fc2')(h)


class CrossAttention(nn.Module):
    """PixArt's MultiHeadCrossAttention: q_linear(x), kv_linear(y) (one [d, 2d] Linear), the
    padding mask on the keys, then a zero-initialised proj."""
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array) -> jax.Array:
        d = x.shape[-1]
        head_dim = d // self.num_heads
        q = NamedDenseGeneral((self.num_heads, head_dim), ('embed', 'heads', 'kv'),
                              ('heads', 'kv'), dtype=self.dtype, name='q_linear')(x)
        kv = NamedDenseGeneral((2, self.num_heads, head_dim), ('embed', None, 'heads', 'kv'),
                               (None, 'heads', 'kv'), dtype=self.dtype,
                               name='kv_linear')(context)
        valid = mask != 0
        valid = jnp.where(valid.any(-1, keepdims=True), valid, True)  # no all-masked rows
        out = jax.nn.dot_product_attention(q, kv[:, :, 0], kv[:, :, 1],
                                           mask=valid[:, None, None, :], implementation=None)
        return NamedDenseGeneral((d,), ('heads', 'kv', 'embed'), ('embed',), num_in_axes=2,
                                 zero_init=True, dtype=self.dtype, name='proj')(out)


class PixArtBlock(nn.Module):
    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array, mask: jax.Array,
                 t0: jax.Array) -> jax.Array:
        table = _table('scale_shift_table', self, 6, self.hidden_size).astype(self.dtype)
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
         gate_mlp) = [table[i][None] + t0[:, i] for i in range(6)]
        h = _modulate(_plain_layer_norm(self.dtype, 'norm1')(x), shift_msa, scale_msa)
        x = x + gate_msa[:, None, :] * SelfAttention(self.num_heads, dtype=self.dtype,
                                                     name='attn')(h)
        x = x + CrossAttention(self.num_heads, dtype=self.dtype, name='cross_attn')(
            x, context, mask)
        h = _modulate(_plain_layer_norm(self.dtype, 'norm2')(x), shift_mlp, scale_mlp)
        x = x + gate_mlp[:, None, :] * MLP(int(self.hidden_size * self.mlp_ratio),
                                           dtype=self.dtype, name='mlp')(h)
        return nn.with_logical_constraint(x, TOKEN_AXES)


class FinalLayer(nn.Module):
    """PixArt's T2IFinalLayer: LN, modulation by t + table [2, d], zero-initialised Linear."""
    hidden_size: int
    patch_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        table = _table('scale_shift_table', self, 2, self.hidden_size).astype(self.dtype)
        shift, scale = table[0][None] + t, table[1][None] + t
        x = _modulate(_plain_layer_norm(self.dtype, 'norm')(x), shift, scale)
        return nn.Dense(self.patch_features, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 ('embed', 'patch')),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ('patch',)),
                        name='linear')(x)


def check_text_condition(cond) -> dict:
    if not isinstance(cond, dict) or any(k not in cond for k in TEXT_KEYS[:2]):
        raise ValueError(
            f'PixArt is conditioned on text: pass {{"states": [B, L, D], "mask": [B, L], '
            f'"pooled": [B, P]}} (cached text encoder outputs), not {type(cond).__name__}; '
            f'set --config.data.text_encoder for model.name="pixart".')
    return cond


class PixArt(nn.Module):
    """(x [B, H, W, C], noise_cond [B], text {"states", "mask", "pooled"}) -> [B, H, W, C]
    (with learn_sigma [B, H, W, 2C]: the prediction, then DiT's variance interpolation)."""
    patch_size: int
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    noise_embedding: str = 'positional'
    fourier_scale: float = 16.0
    learn_sigma: bool = False
    dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond: jax.Array, text=None, *,
                 train: bool = False) -> jax.Array:
        del train  # no dropout: caption dropout happens in the objective
        text = check_text_condition(text)
        if x.ndim != 4 or x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
            raise ValueError(f'PixArt expects [B, H, W, C] with H and W divisible by '
                             f'patch_size={self.patch_size}, got {x.shape}.')
        if self.hidden_size % self.num_heads:
            raise ValueError(f'hidden_size={self.hidden_size} is not divisible by '
                             f'num_heads={self.num_heads}; pick a head count that divides it.')
        batch, height, width, channels = x.shape
        p, d = self.patch_size, self.hidden_size
        out_channels = 2 * channels if self.learn_sigma else channels

        tokens = nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.with_logical_partitioning(
                              nn.initializers.xavier_uniform(), ('patch', 'embed')),
                          bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 ('embed',)),
                          name='patch_embed')(patchify(x, p))
        table = sincos_2d_position_embedding(d, height // p, width // p)
        tokens = nn.with_logical_constraint(tokens + jnp.asarray(table, self.dtype)[None],
                                            TOKEN_AXES)

        noise_cond = jnp.broadcast_to(jnp.asarray(noise_cond, jnp.float32), (batch,))
        t = NoiseLevelEmbedding(d, kind=self.noise_embedding, fourier_scale=self.fourier_scale,
                                dtype=self.dtype, name='t_embedder')(noise_cond)
        t0 = NamedDenseGeneral((6, d), ('cond', None, 'embed'), (None, 'embed'),
                               dtype=self.dtype, name='t_block')(nn.silu(t))
        context = CaptionProjection(d, dtype=self.dtype, name='y_proj')(
            jnp.asarray(text['states']).astype(self.dtype))
        mask = jnp.asarray(text['mask'])

        block_cls = nn.remat(PixArtBlock) if self.remat else PixArtBlock
        for i in range(self.depth):
            tokens = block_cls(d, self.num_heads, self.mlp_ratio, dtype=self.dtype,
                               name=f'block_{i}')(tokens, context, mask, t0)
        patches = FinalLayer(d, p * p * out_channels, dtype=self.dtype, name='final')(tokens, t)
        return unpatchify(patches, p, height, width).astype(x.dtype)
