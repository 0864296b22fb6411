"""Tests of the shared conditioning embeddings (diffjax/models/embeddings.py)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.embeddings import (
    EMBEDDING_KINDS,
    GaussianFourierEmbedding,
    LabelEmbedding,
    NoiseLevelEmbedding,
    score_sde_timestep_embedding,
    timestep_embedding,
)


def _numpy_sinusoidal(noise_cond, dim, max_period=10000.0):
    half = dim // 2
    out = np.zeros((len(noise_cond), dim))
    for b, value in enumerate(noise_cond):
        for i in range(half):
            frequency = max_period ** (-i / half)
            out[b, i] = math.cos(value * frequency)
            out[b, half + i] = math.sin(value * frequency)
    return out


@pytest.mark.parametrize('dim', [8, 33, 256])
def test_timestep_embedding_matches_numpy_formula(dim):
    noise_cond = np.array([0.0, 1.0, 17.5, 999.0, -3.2])
    got = timestep_embedding(jnp.asarray(noise_cond), dim)
    assert got.shape == (5, dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), _numpy_sinusoidal(noise_cond, dim),
                               atol=2e-4)


@pytest.mark.parametrize('dim', [8, 33, 128])
def test_score_sde_embedding_matches_its_formula(dim):
    """score_sde's layers.get_timestep_embedding: exp(-ln(1e4) k / (half - 1)), [sin, cos]."""
    noise_cond = np.array([0.0, 1.0, 17.5, 999.0])
    half = dim // 2
    angles = noise_cond[:, None] * np.exp(-math.log(10000.0) * np.arange(half) / (half - 1))
    expected = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    if dim % 2:
        expected = np.pad(expected, ((0, 0), (0, 1)))
    got = score_sde_timestep_embedding(jnp.asarray(noise_cond), dim)
    assert got.shape == (4, dim)
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-4)


def test_timestep_embedding_rejects_non_vector_input():
    with pytest.raises(ValueError, match=r'shape \[B\]'):
        timestep_embedding(jnp.zeros((2, 3)), 16)


def test_fourier_embedding_shape_and_frozen_frequencies():
    module = GaussianFourierEmbedding(dim=16, scale=16.0)
    noise_cond = jnp.array([-2.0, 0.5, 3.0])
    variables = module.init(jax.random.key(0), noise_cond)
    frequencies = nn.meta.unbox(variables)['params']['frequencies']
    assert frequencies.shape == (8,)
    # Drawn from normal * scale: far wider than a unit normal.
    assert float(jnp.std(frequencies)) > 4.0

    out = module.apply(variables, noise_cond)
    assert out.shape == (3, 16)
    angles = noise_cond[:, None] * frequencies[None] * 2 * np.pi
    np.testing.assert_allclose(out, jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], -1),
                               atol=1e-5)

    def loss(params):
        return jnp.sum(module.apply({'params': params}, noise_cond) ** 2 * noise_cond[:, None])

    grads = jax.grad(loss)(nn.meta.unbox(variables)['params'])
    assert np.all(np.asarray(grads['frequencies']) == 0.0)


def test_fourier_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match='even dim'):
        GaussianFourierEmbedding(dim=7).init(jax.random.key(0), jnp.zeros((2,)))


def test_embedding_kinds_lookup():
    assert set(EMBEDDING_KINDS) == {'positional', 'fourier'}
    assert EMBEDDING_KINDS['fourier'] is GaussianFourierEmbedding


@pytest.mark.parametrize('kind', ['positional', 'fourier'])
def test_noise_level_embedding_shapes_and_names(kind):
    module = NoiseLevelEmbedding(dim=24, kind=kind, frequency_dim=32)
    variables = module.init(jax.random.key(0), jnp.array([0.1, 500.0]))
    out = module.apply(variables, jnp.array([0.1, 500.0]))
    assert out.shape == (2, 24) and bool(jnp.all(jnp.isfinite(out)))
    params = variables['params']
    assert params['mlp_in']['kernel'].value.shape == (32, 24)
    assert params['mlp_in']['kernel'].names == (None, 'mlp')
    assert params['mlp_out']['kernel'].names == ('mlp', 'cond')
    assert ('frequencies' in params) == (kind == 'fourier')


def test_noise_level_embedding_unknown_kind():
    with pytest.raises(ValueError, match='positional'):
        NoiseLevelEmbedding(dim=8, kind='gaussian').init(jax.random.key(0), jnp.zeros((1,)))


def _label_setup(dropout_prob):
    module = LabelEmbedding(num_classes=10, dim=8, dropout_prob=dropout_prob)
    labels = jnp.arange(10, dtype=jnp.int32)
    variables = module.init(jax.random.key(0), labels, train=False)
    return module, labels, variables


def test_label_table_has_null_row():
    _, _, variables = _label_setup(0.1)
    table = variables['params']['embedding']
    assert table.value.shape == (11, 8)
    assert table.names == ('classes', 'cond')


def test_label_dropout_only_in_training():
    module, labels, variables = _label_setup(1.0)
    table = variables['params']['embedding'].value
    rngs = {'dropout': jax.random.key(1)}
    dropped = module.apply(variables, labels, train=True, rngs=rngs)
    np.testing.assert_array_equal(dropped, jnp.broadcast_to(table[10], (10, 8)))
    kept = module.apply(variables, labels, train=False)
    np.testing.assert_array_equal(kept, table[:10])


def test_label_dropout_rate():
    module = LabelEmbedding(num_classes=3, dim=4, dropout_prob=0.25)
    labels = jnp.zeros((20000,), jnp.int32)
    variables = module.init(jax.random.key(0), labels, train=False)
    out = module.apply(variables, labels, train=True, rngs={'dropout': jax.random.key(2)})
    null_row = variables['params']['embedding'].value[3]
    fraction = float(jnp.mean(jnp.all(out == null_row, axis=-1)))
    assert abs(fraction - 0.25) < 0.02


def test_label_none_means_null_class():
    module, _, variables = _label_setup(0.1)
    table = variables['params']['embedding'].value
    broadcastable = module.apply(variables, None, train=True)
    assert broadcastable.shape == (1, 8)
    full = module.apply(variables, None, train=False, batch_size=5)
    np.testing.assert_array_equal(full, jnp.broadcast_to(table[10], (5, 8)))


def test_label_embedding_needs_classes():
    with pytest.raises(ValueError, match='num_classes'):
        LabelEmbedding(num_classes=0, dim=4, dropout_prob=0.1).init(
            jax.random.key(0), jnp.zeros((2,), jnp.int32), train=False)
