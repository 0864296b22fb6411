"""Conditioning embeddings shared by every diffjax backbone.

A network sees the noise level only as an anonymous float per example
(``noise_cond``: 999*t for VP-type SDEs, log(sigma) for VE), so the layers
here map that float, and optionally a class label, to a conditioning vector.

Logical axis names used for parameters (see the network contract):
  * 'cond'    width of the conditioning vector these layers produce;
  * 'mlp'     hidden width of the noise-level MLP;
  * 'classes' rows of the label table;
  * 'norm'    small replicated vectors (the fixed Fourier frequencies).
The input side of the first noise-level Linear (the frequency features) is
left unnamed on purpose: it is 256 wide, tiny, and always replicated.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def _sinusoids(noise_cond: jax.Array, dim: int, *, name: str, min_dim: int, log_max: float,
               endpoint: bool, sin_first: bool) -> jax.Array:
    """[B] -> [B, dim]: geometric frequencies exp(-log_max k / n), n = half (ADM) or half - 1
    (endpoint: the last frequency is exactly exp(-log_max)); an odd dim gets a zero column."""
    if dim < min_dim:
        raise ValueError(f'{name} needs dim >= {min_dim}, got dim={dim}.')
    noise_cond = jnp.asarray(noise_cond, jnp.float32)
    if noise_cond.ndim != 1:
        raise ValueError(
            f'{name} expects noise_cond of shape [B], got {noise_cond.shape}; flatten it or '
            f'pass one scalar per example.')
    half = dim // 2
    k = jnp.arange(half, dtype=jnp.float32)
    # Each reference's own operation order, so the float32 results stay theirs bit for bit.
    frequencies = jnp.exp(k * -(log_max / (half - 1)) if endpoint else -log_max * k / half)
    angles = noise_cond[:, None] * frequencies[None, :]
    pair = (jnp.sin(angles), jnp.cos(angles)) if sin_first else (jnp.cos(angles), jnp.sin(angles))
    embedding = jnp.concatenate(pair, axis=-1)
    if dim % 2:
        embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
    return embedding


def timestep_embedding(noise_cond: jax.Array, dim: int,
                       max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding of a per-example scalar, [B] -> [B, dim] float32.

    Frequencies are geometric from 1 down to 1/max_period, laid out as
    [cos(all frequencies), sin(all frequencies)] (the ADM/DiT layout). An odd
    ``dim`` gets one zero column at the end so callers may pick any width.
    """
    return _sinusoids(noise_cond, dim, name='timestep_embedding', min_dim=2,
                      log_max=math.log(max_period), endpoint=False, sin_first=False)


def score_sde_timestep_embedding(noise_cond: jax.Array, dim: int,
                                 max_positions: float = 10000.0) -> jax.Array:
    """score_sde's sinusoidal embedding (DDPM++), [B] -> [B, dim] float32.

    Unlike `timestep_embedding`, the frequencies exp(-ln(max_positions) k / (half - 1)) reach
    1/max_positions exactly (EDM calls this `endpoint=True`), and the layout is [sin, cos].
    """
    return _sinusoids(noise_cond, dim, name='score_sde_timestep_embedding', min_dim=4,
                      log_max=math.log(max_positions), endpoint=True, sin_first=True)


def split_noise_cond(noise_cond, batch: int, second_time: bool):
    """(noise_cond [B], second time [B] or None): a network with a second time input
    (MeanFlow's (t, t - r)) takes noise_cond of shape [B, 2]; the others one scalar per example
    (a scalar broadcasts)."""
    noise_cond = jnp.asarray(noise_cond, jnp.float32)
    if not second_time:
        return jnp.broadcast_to(noise_cond, (batch,)), None
    if noise_cond.ndim != 2 or noise_cond.shape[-1] != 2:
        raise ValueError(
            f'A network with model.second_time_embedding=True takes noise_cond of shape '
            f'[B, 2] (the time and the interval t - r), got {noise_cond.shape}.')
    noise_cond = jnp.broadcast_to(noise_cond, (batch, 2))
    return noise_cond[:, 0], noise_cond[:, 1]


class SinusoidalEmbedding(nn.Module):
    """Module wrapper around `timestep_embedding` so both kinds of frequency
    features can be looked up by name in `EMBEDDING_KINDS` and built alike."""
    dim: int
    max_period: float = 10000.0

    def __call__(self, noise_cond: jax.Array) -> jax.Array:
        return timestep_embedding(noise_cond, self.dim, self.max_period)


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of the noise level (NCSN++ for VE SDEs).

    The frequencies are stored as a parameter so that they live in
    checkpoints with the rest of the model, but they are fixed: the
    stop_gradient makes their gradient exactly zero (as in NCSN++).
    """
    dim: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, noise_cond: jax.Array) -> jax.Array:
        if self.dim % 2:
            raise ValueError(
                f'GaussianFourierEmbedding needs an even dim (sin and cos '
                f'halves), got dim={self.dim}; use dim={self.dim + 1}.')
        frequencies = self.param(
            'frequencies',
            nn.with_logical_partitioning(
                nn.initializers.normal(stddev=self.scale), ('norm',)),
            (self.dim // 2,), jnp.float32)
        frequencies = jax.lax.stop_gradient(frequencies)
        noise_cond = jnp.asarray(noise_cond, jnp.float32)
        angles = noise_cond[:, None] * frequencies[None, :] * (2.0 * math.pi)
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


# Name -> frequency-feature module. Both take the output width as `dim`.
EMBEDDING_KINDS: dict[str, type[nn.Module]] = {
    'positional': SinusoidalEmbedding,
    'fourier': GaussianFourierEmbedding,
}


def _check_embedding_kind(kind: str) -> None:
    if kind not in EMBEDDING_KINDS:
        raise ValueError(
            f'Unknown noise embedding kind {kind!r}; choose one of '
            f'{sorted(EMBEDDING_KINDS)}.')


class NoiseLevelEmbedding(nn.Module):
    """Noise level -> conditioning vector: frequency features, then
    Linear-SiLU-Linear (DiT's TimestepEmbedder; hidden width = output width).

    `dim` is the output width; `frequency_dim` the width of the fixed
    sinusoidal or Fourier features fed to the MLP (256 in DiT).
    """
    dim: int
    kind: str = 'positional'
    fourier_scale: float = 16.0
    frequency_dim: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, noise_cond: jax.Array) -> jax.Array:
        _check_embedding_kind(self.kind)
        kind_options = {'fourier': {'scale': self.fourier_scale}}.get(self.kind, {})
        features = EMBEDDING_KINDS[self.kind](
            dim=self.frequency_dim, name='frequencies', **kind_options)(noise_cond)
        # DiT initialises this MLP with normal(0.02) rather than xavier.
        kernel_init = nn.initializers.normal(stddev=0.02)
        hidden = nn.Dense(
            self.dim, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(kernel_init, (None, 'mlp')),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('mlp',)),
            name='mlp_in')(features)
        hidden = nn.silu(hidden)
        return nn.Dense(
            self.dim, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.with_logical_partitioning(kernel_init, ('mlp', 'cond')),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('cond',)),
            name='mlp_out')(hidden)


class LabelEmbedding(nn.Module):
    """Class label -> conditioning vector, with a learned "null" class.

    The table has num_classes + 1 rows; row `num_classes` is the null class
    that classifier-free guidance uses for the unconditional prediction.
    During training each label is replaced by the null class with
    probability `dropout_prob` (drawn from the 'dropout' rng stream), which
    teaches the same network both the conditional and unconditional model.

    `labels=None` means "every example is unconditional". Since the batch
    size is then unknown, the result is one [1, dim] row that broadcasts
    against the noise-level embedding; pass `batch_size` to get [B, dim].
    """
    num_classes: int
    dim: int
    dropout_prob: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, labels: jax.Array | None, *, train: bool,
                 batch_size: int | None = None) -> jax.Array:
        if self.num_classes <= 0:
            raise ValueError(
                f'LabelEmbedding needs num_classes >= 1, got {self.num_classes}; '
                f'an unconditional model should not create a LabelEmbedding.')
        if not 0.0 <= self.dropout_prob <= 1.0:
            raise ValueError(
                f'label dropout_prob must lie in [0, 1], got {self.dropout_prob}.')
        table = self.param(
            'embedding',
            nn.with_logical_partitioning(
                nn.initializers.normal(stddev=0.02), ('classes', 'cond')),
            (self.num_classes + 1, self.dim), jnp.float32)
        null_index = self.num_classes
        if labels is None:
            labels = jnp.full((batch_size or 1,), null_index, jnp.int32)
        else:
            labels = jnp.asarray(labels, jnp.int32)
            if labels.ndim != 1:
                raise ValueError(
                    f'labels must have shape [B], got {labels.shape}.')
            if train and self.dropout_prob > 0.0:
                drop = jax.random.bernoulli(
                    self.make_rng('dropout'), self.dropout_prob, labels.shape)
                labels = jnp.where(drop, null_index, labels)
        return jnp.take(table, labels, axis=0).astype(self.dtype)
