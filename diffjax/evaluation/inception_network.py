"""The FID Inception network (TF "2015-12-05" graph) as a Flax linen module.

Published FID / IS / KID numbers are all computed with this exact graph, which
differs from the usual InceptionV3 in ways that move FID by whole points:

* batch norm has no learned scale in the TF graph (``scale`` is all ones for
  those weights) and uses eps 1e-3;
* the 3x3 average pools inside Mixed_5*, Mixed_6b-e and Mixed_7b divide by the
  number of *unpadded* pixels (TF "SAME" avg-pool semantics);
* the pool branch of the last block (Mixed_7c) is a 3x3 *max* pool.

Layer and parameter names follow torchvision / pytorch-fid so that a
pytorch-fid state dict maps onto the tree key for key (see inception_weights).
The module expects float NHWC input at 299x299 already scaled to [-1, 1); the
resize and scaling that make the input match the reference live in
``diffjax.evaluation.inception``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

FEATURE_DIM = 2048
NUM_LOGITS = 1008
INPUT_SIZE = 299
BATCH_NORM_EPS = 1e-3

# Float32 everywhere: on GPU/TPU the default conv precision (TF32 / bf16 passes)
# drifts far enough from the reference to break 1e-3 feature parity.
_PRECISION = jax.lax.Precision.HIGHEST


class ConvBatchNormRelu(nn.Module):
    """Conv (no bias) -> inference batch norm -> ReLU, the graph's only conv unit."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel_shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), kernel_shape)
        scale = self.param("scale", nn.initializers.ones, (self.features,))
        beta = self.param("beta", nn.initializers.zeros, (self.features,))
        mean = self.param("mean", nn.initializers.zeros, (self.features,))
        var = self.param("var", nn.initializers.ones, (self.features,))
        pad_h, pad_w = self.padding
        y = jax.lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(self.strides, self.strides),
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=_PRECISION,
        )
        y = (y - mean) * (jax.lax.rsqrt(var + BATCH_NORM_EPS) * scale) + beta
        return nn.relu(y)


def _unpadded_avg_pool_3x3(x: jax.Array) -> jax.Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride_2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d)."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = ConvBatchNormRelu(64, (1, 1), name="branch1x1")(x)
        branch5x5 = ConvBatchNormRelu(48, (1, 1), name="branch5x5_1")(x)
        branch5x5 = ConvBatchNormRelu(64, (5, 5), padding=(2, 2), name="branch5x5_2")(branch5x5)
        branch3x3dbl = ConvBatchNormRelu(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = ConvBatchNormRelu(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = ConvBatchNormRelu(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = ConvBatchNormRelu(self.pool_features, (1, 1), name="branch_pool")(_unpadded_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = ConvBatchNormRelu(384, (3, 3), strides=2, name="branch3x3")(x)
        branch3x3dbl = ConvBatchNormRelu(64, (1, 1), name="branch3x3dbl_1")(x)
        branch3x3dbl = ConvBatchNormRelu(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = ConvBatchNormRelu(96, (3, 3), strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b-e)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        branch1x1 = ConvBatchNormRelu(192, (1, 1), name="branch1x1")(x)
        branch7x7 = ConvBatchNormRelu(c7, (1, 1), name="branch7x7_1")(x)
        branch7x7 = ConvBatchNormRelu(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = ConvBatchNormRelu(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        dbl = ConvBatchNormRelu(c7, (1, 1), name="branch7x7dbl_1")(x)
        dbl = ConvBatchNormRelu(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(dbl)
        dbl = ConvBatchNormRelu(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(dbl)
        dbl = ConvBatchNormRelu(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(dbl)
        dbl = ConvBatchNormRelu(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(dbl)
        branch_pool = ConvBatchNormRelu(192, (1, 1), name="branch_pool")(_unpadded_avg_pool_3x3(x))
        return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch3x3 = ConvBatchNormRelu(192, (1, 1), name="branch3x3_1")(x)
        branch3x3 = ConvBatchNormRelu(320, (3, 3), strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = ConvBatchNormRelu(192, (1, 1), name="branch7x7x3_1")(x)
        branch7x7x3 = ConvBatchNormRelu(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = ConvBatchNormRelu(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = ConvBatchNormRelu(192, (3, 3), strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride_2(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 heads (Mixed_7b, Mixed_7c)."""

    # The TF graph's Mixed_7c pools with max, Mixed_7b with unpadded average.
    pool_is_max: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = ConvBatchNormRelu(320, (1, 1), name="branch1x1")(x)
        branch3x3 = ConvBatchNormRelu(384, (1, 1), name="branch3x3_1")(x)
        branch3x3 = [
            ConvBatchNormRelu(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
            ConvBatchNormRelu(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
        ]
        dbl = ConvBatchNormRelu(448, (1, 1), name="branch3x3dbl_1")(x)
        dbl = ConvBatchNormRelu(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(dbl)
        dbl = [
            ConvBatchNormRelu(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(dbl),
            ConvBatchNormRelu(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(dbl),
        ]
        if self.pool_is_max:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _unpadded_avg_pool_3x3(x)
        branch_pool = ConvBatchNormRelu(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, *branch3x3, *dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
    """Maps [N, 299, 299, 3] inputs in [-1, 1) to pool3 features (and logits).

    With ``with_logits`` the 1008-way classifier of the TF graph (``softmax``
    layer; ``fc`` in pytorch-fid) is applied to the pool3 features, which is
    what the Inception Score uses.
    """

    with_logits: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
        x = ConvBatchNormRelu(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = ConvBatchNormRelu(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = ConvBatchNormRelu(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        x = ConvBatchNormRelu(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = ConvBatchNormRelu(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride_2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for block_name, channels_7x7 in _MIXED_6_CHANNELS:
            x = InceptionC(channels_7x7, name=block_name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(pool_is_max=False, name="Mixed_7b")(x)
        x = InceptionE(pool_is_max=True, name="Mixed_7c")(x)
        # The reference pools with an 8x8 window, which is the whole map at 299.
        features = jnp.mean(x, axis=(1, 2))
        if not self.with_logits:
            return features
        logits = nn.Dense(NUM_LOGITS, precision=_PRECISION, name="logits")(features)
        return features, logits


_MIXED_6_CHANNELS: Sequence[tuple[str, int]] = (
    ("Mixed_6b", 128),
    ("Mixed_6c", 160),
    ("Mixed_6d", 160),
    ("Mixed_6e", 192),
)


def expected_param_shapes(with_logits: bool) -> dict:
    """Shape tree of the params, computed without allocating weights."""
    model = FIDInceptionV3(with_logits=with_logits)
    dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy)
    return jax.tree_util.tree_map(lambda leaf: tuple(leaf.shape), variables["params"])
