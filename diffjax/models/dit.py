"""DiT: the Diffusion Transformer of Peebles & Xie (2023), with adaLN-Zero.

The image is cut into p x p patches, each patch becomes a token, and a stack
of transformer blocks conditioned on c = noise-level embedding + label
embedding predicts one output patch per token. Conditioning enters only via
adaptive LayerNorm: each block regresses shift/scale/gate vectors from c, and
those regressions start at zero so that every block starts as the identity
and the whole network starts by predicting exactly zero ("adaLN-Zero").

`second_time_embedding=True` is MeanFlow's DiT (Geng et al., 2025, Gsunshine/meanflow's
models_dit.py): noise_cond [B, 2] = (c(t), t - r) and c = t_embed + h_embed + y_embed, the
second embedding an identical TimestepEmbedder of t - r.

`learn_sigma=True` gives the paper's output of 2C channels: the noise
prediction, then the per-pixel interpolation v between log beta_t and the
log posterior variance (Nichol & Dhariwal); the parameter counts are then the
paper's (DiT-XL/2: 675,129,632 in facebookresearch/DiT's models.py, of which
294,912 are its frozen sin-cos position table, here a constant, not a
parameter). With learn_sigma=False the output has C channels (the noise).

Parameters carry the logical axis names of the network contract ('embed',
'mlp', 'heads', 'kv', 'patch', 'classes', 'cond'); the attention kernels keep
'heads' as its own dimension so that it can be sharded for tensor
parallelism, and the adaLN kernels keep the six modulation vectors as an
unnamed dimension of their own so that splitting them never reshards.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.embeddings import LabelEmbedding, NoiseLevelEmbedding, split_noise_cond

Dtype = jnp.dtype

# (depth, hidden_size, num_heads) of the paper's model family.
DIT_SIZES: dict[str, tuple[int, int, int]] = {
    'S': (12, 384, 6),
    'B': (12, 768, 12),
    'L': (24, 1024, 16),
    'XL': (28, 1152, 16),
}

POS_EMBED_KINDS = ('sincos', 'learned')

# Activations between blocks: batch over the data axes, tokens replicated.
TOKEN_AXES = ('batch', 'length', 'embed')


def dit_kwargs(size: str, patch_size: int) -> dict:
    """Constructor arguments of the paper's DiT-<size>/<patch_size>."""
    if size not in DIT_SIZES:
        raise ValueError(
            f'Unknown DiT size {size!r}; valid sizes are {list(DIT_SIZES)}.')
    depth, hidden_size, num_heads = DIT_SIZES[size]
    return dict(patch_size=patch_size, hidden_size=hidden_size, depth=depth,
                num_heads=num_heads)


def _xavier(names):
    return nn.with_logical_partitioning(nn.initializers.xavier_uniform(), names)


def _zeros(names):
    return nn.with_logical_partitioning(nn.initializers.zeros, names)


class NamedDenseGeneral(nn.Module):
    """Contracts the last `num_in_axes` axes of x with a kernel [*in, *features], plus a bias.

    flax's DenseGeneral creates a flattened 2-D kernel and reshapes it, which breaks logical
    names on a kernel of rank > 2 once sharding rules are active; this keeps the real shape.
    """
    features: tuple[int, ...]
    kernel_names: tuple
    bias_names: tuple
    num_in_axes: int = 1
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in, n_out = self.num_in_axes, len(self.features)
        kernel_shape = tuple(x.shape[-n_in:]) + tuple(self.features)
        init = nn.initializers.zeros if self.zero_init else nn.initializers.variance_scaling(
            1.0, 'fan_avg', 'uniform', in_axis=tuple(range(n_in)),
            out_axis=tuple(range(n_in, n_in + n_out)))
        kernel = self.param('kernel', nn.with_logical_partitioning(init, self.kernel_names),
                            kernel_shape, jnp.float32)
        bias = self.param('bias', _zeros(self.bias_names), tuple(self.features), jnp.float32)
        contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                (contract, ((), ())))
        return y + bias.astype(self.dtype)


def sincos_2d_position_embedding(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding, [grid_h * grid_w, dim] float32.

    Half of the channels encode the column, half the row, each with the 1-D
    [sin, cos] encoding of MAE/DiT. Tokens are in row-major (h, w) order, the
    order `patchify` produces.
    """
    if dim % 4:
        raise ValueError(
            f'sin-cos position embedding needs hidden_size divisible by 4, got '
            f'{dim}; change hidden_size or use pos_embed="learned".')

    def encode_1d(positions: np.ndarray, width: int) -> np.ndarray:
        omega = 1.0 / 10000.0 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
        angles = positions.reshape(-1)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                             np.arange(grid_w, dtype=np.float64), indexing='ij')
    embedding = np.concatenate(
        [encode_1d(cols, dim // 2), encode_1d(rows, dim // 2)], axis=1)
    return embedding.astype(np.float32)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
    batch, height, width, channels = x.shape
    p = patch_size
    x = x.reshape(batch, height // p, p, width // p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, (height // p) * (width // p), p * p * channels)


def unpatchify(tokens: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
    """Inverse of `patchify`: [B, (H/p)*(W/p), p*p*C] -> [B, H, W, C]."""
    batch = tokens.shape[0]
    p = patch_size
    channels = tokens.shape[-1] // (p * p)
    x = tokens.reshape(batch, height // p, width // p, p, p, channels)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch, height, width, channels)


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


def _plain_layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    # No affine parameters: adaLN supplies the per-example shift and scale.
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False,
                        dtype=dtype, name=name)


class AdaLNModulation(nn.Module):
    """SiLU(c) -> `num_vectors` vectors of width `hidden_size`, zero at init.

    The kernel is [cond, num_vectors, embed] so each vector is a plain slice
    of a (possibly 'embed'-sharded) output rather than a chunk of one.
    """
    num_vectors: int
    hidden_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, c: jax.Array) -> list[jax.Array]:
        modulation = NamedDenseGeneral(
            features=(self.num_vectors, self.hidden_size),
            kernel_names=('cond', None, 'embed'), bias_names=(None, 'embed'),
            zero_init=True, dtype=self.dtype, name='linear')(nn.silu(c))
        return [modulation[:, i] for i in range(self.num_vectors)]


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused [embed, 3, heads, kv] qkv kernel
    (xavier over the whole [d, 3d] matrix, as in DiT's timm Attention)."""
    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden_size = x.shape[-1]
        head_dim = hidden_size // self.num_heads
        qkv = NamedDenseGeneral(
            features=(3, self.num_heads, head_dim),
            kernel_names=('embed', None, 'heads', 'kv'),
            bias_names=(None, 'heads', 'kv'), dtype=self.dtype, name='qkv')(x)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # implementation=None lets JAX pick the fused cuDNN kernel on GPUs.
        attended = jax.nn.dot_product_attention(query, key, value,
                                                implementation=None)
        return NamedDenseGeneral(
            features=(hidden_size,), num_in_axes=2,
            kernel_names=('heads', 'kv', 'embed'), bias_names=('embed',),
            dtype=self.dtype, name='out')(attended)


class MLP(nn.Module):
    mlp_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=_xavier(('embed', 'mlp')),
                          bias_init=_zeros(('mlp',)), name='fc1')(x)
        hidden = nn.gelu(hidden, approximate=True)
        return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=_xavier(('mlp', 'embed')),
                        bias_init=_zeros(('embed',)), name='fc2')(hidden)


class DiTBlock(nn.Module):
    """Pre-norm transformer block whose norms and residual gates come from c."""
    hidden_size: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        (shift_attn, scale_attn, gate_attn,
         shift_mlp, scale_mlp, gate_mlp) = AdaLNModulation(
            6, self.hidden_size, dtype=self.dtype, name='adaLN')(c)
        h = _modulate(_plain_layer_norm(self.dtype, 'norm1')(x), shift_attn, scale_attn)
        x = x + gate_attn[:, None, :] * SelfAttention(
            self.num_heads, dtype=self.dtype, name='attn')(h)
        h = _modulate(_plain_layer_norm(self.dtype, 'norm2')(x), shift_mlp, scale_mlp)
        x = x + gate_mlp[:, None, :] * MLP(
            int(self.hidden_size * self.mlp_ratio), dtype=self.dtype, name='mlp')(h)
        return nn.with_logical_constraint(x, TOKEN_AXES)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a zero-initialised Linear to the patch pixels."""
    hidden_size: int
    patch_features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        shift, scale = AdaLNModulation(2, self.hidden_size, dtype=self.dtype,
                                       name='adaLN')(c)
        x = _modulate(_plain_layer_norm(self.dtype, 'norm')(x), shift, scale)
        return nn.Dense(self.patch_features, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=_zeros(('embed', 'patch')),
                        bias_init=_zeros(('patch',)), name='linear')(x)


class DiT(nn.Module):
    """Diffusion Transformer: (x [B,H,W,C], noise_cond [B], labels [B]|None)
    -> the noise prediction [B,H,W,C], with learn_sigma [B,H,W,2C] (noise, then v)."""
    patch_size: int
    hidden_size: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    num_classes: int = 0
    label_dropout: float = 0.1
    pos_embed: str = 'sincos'
    noise_embedding: str = 'positional'
    fourier_scale: float = 16.0
    learn_sigma: bool = False
    second_time_embedding: bool = False  # noise_cond [B, 2] = (c(t), t - r): MeanFlow's DiT
    dtype: Dtype = jnp.float32
    remat: bool = False

    def _check_config(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(f'DiT expects x of shape [B, H, W, C], got {x.shape}.')
        _, height, width, _ = x.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f'DiT input height and width must be divisible by patch_size={p}, '
                f'got H={height}, W={width} (x.shape={x.shape}); pad or resize the '
                f'images to a multiple of {p}, or pick a patch_size dividing both.')
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f'hidden_size={self.hidden_size} is not divisible by '
                f'num_heads={self.num_heads}; pick a head count that divides it.')
        if self.pos_embed not in POS_EMBED_KINDS:
            raise ValueError(f'Unknown pos_embed {self.pos_embed!r}; choose one '
                             f'of {list(POS_EMBED_KINDS)}.')

    def _position_embedding(self, grid_h: int, grid_w: int) -> jax.Array:
        if self.pos_embed == 'sincos':
            table = jnp.asarray(sincos_2d_position_embedding(self.hidden_size, grid_h, grid_w))
        else:
            table = self.param(
                'pos_embed',
                nn.with_logical_partitioning(nn.initializers.normal(stddev=0.02),
                                             (None, 'embed')),
                (grid_h * grid_w, self.hidden_size), jnp.float32)
        return table.astype(self.dtype)[None]

    def _conditioning(self, noise_cond: jax.Array, labels: jax.Array | None,
                      batch: int, train: bool) -> jax.Array:
        noise_cond, interval = split_noise_cond(noise_cond, batch, self.second_time_embedding)
        c = NoiseLevelEmbedding(self.hidden_size, kind=self.noise_embedding,
                                fourier_scale=self.fourier_scale, dtype=self.dtype,
                                name='noise_embed')(noise_cond)
        if self.second_time_embedding:
            # MeanFlow's DiT: a second TimestepEmbedder (its h_embedder) of t - r, summed.
            c = c + NoiseLevelEmbedding(self.hidden_size, kind=self.noise_embedding,
                                        fourier_scale=self.fourier_scale, dtype=self.dtype,
                                        name='interval_embed')(interval)
        if self.num_classes > 0:
            c = c + LabelEmbedding(self.num_classes, self.hidden_size,
                                   self.label_dropout, dtype=self.dtype,
                                   name='label_embed')(labels, train=train,
                                                       batch_size=batch)
        return c

    @nn.compact
    def __call__(self, x: jax.Array, noise_cond: jax.Array,
                 labels: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        self._check_config(x)
        batch, height, width, in_channels = x.shape
        p = self.patch_size
        out_channels = 2 * in_channels if self.learn_sigma else in_channels

        # Patch embedding as a Linear on flattened patches: identical to the
        # paper's stride-p conv, and xavier on [p*p*C, d] is its init.
        tokens = nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=_xavier(('patch', 'embed')),
                          bias_init=_zeros(('embed',)),
                          name='patch_embed')(patchify(x, p))
        tokens = tokens + self._position_embedding(height // p, width // p)
        tokens = nn.with_logical_constraint(tokens, TOKEN_AXES)

        c = self._conditioning(noise_cond, labels, batch, train)

        block_cls = nn.remat(DiTBlock) if self.remat else DiTBlock
        for i in range(self.depth):
            tokens = block_cls(self.hidden_size, self.num_heads, self.mlp_ratio,
                               dtype=self.dtype, name=f'block_{i}')(tokens, c)

        patches = FinalLayer(self.hidden_size, p * p * out_channels,
                             dtype=self.dtype, name='final')(tokens, c)
        return unpatchify(patches, p, height, width).astype(x.dtype)
