"""Tests of the DiT backbone (diffjax/models/dit.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from diffjax.models.dit import (
    DiT,
    DiTBlock,
    dit_kwargs,
    patchify,
    sincos_2d_position_embedding,
    unpatchify,
)

NUM_CLASSES = 10
TINY = dict(patch_size=2, hidden_size=32, depth=2, num_heads=4)
LOGICAL_NAMES = {'embed', 'mlp', 'heads', 'kv', 'patch', 'classes', 'norm', 'cond'}


def _inputs(batch=4, height=8, width=8, channels=3):
    key_x, key_t = jax.random.split(jax.random.key(42))
    x = jax.random.normal(key_x, (batch, height, width, channels))
    noise_cond = jax.random.uniform(key_t, (batch,)) * 999.0
    labels = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
    return x, noise_cond, labels


def _init(model, x, noise_cond, labels):
    # Jitted: initialising op by op costs more than compiling the tiny model.
    return jax.jit(lambda: model.init(
        {'params': jax.random.key(0), 'dropout': jax.random.key(1)},
        x, noise_cond, labels, train=False))()


def _perturbed(variables, scale=0.1):
    """Unboxed params with noise added everywhere, so that the zero-initialised
    layers no longer hide the dependence of the output on the inputs. The noise
    comes from numpy: jitted threefry for every leaf takes seconds to compile."""
    rng = np.random.default_rng(7)
    return {'params': jax.tree.map(
        lambda leaf: leaf + scale * rng.standard_normal(leaf.shape, np.float32),
        nn.meta.unbox(variables)['params'])}


@pytest.fixture(scope='module')
def conditional():
    """The tiny class-conditional DiT, its inputs, and fresh + perturbed weights,
    shared so that the module compiles once for the whole file."""
    model = DiT(**TINY, num_classes=NUM_CLASSES)
    x, noise_cond, labels = _inputs()
    variables = _init(model, x, noise_cond, labels)
    return model, (x, noise_cond, labels), variables, _perturbed(variables)


# sum(p.numel() for p in DiT.parameters()) of facebookresearch/DiT's models.py at 256 px
# (32x32x4 latents, 1000 classes, learn_sigma=True), and the size of its frozen sin-cos table
# `pos_embed`, which is a parameter there and a constant here. Paper: 33M, 130M, 458M, 675M.
REFERENCE_PARAMS = {('S', 2): (32_963_360, 98_304), ('B', 2): (130_512_416, 196_608),
                    ('L', 2): (458_102_816, 262_144), ('XL', 2): (675_129_632, 294_912),
                    ('XL', 4): (675_074_432, 73_728), ('S', 8): (33_148_160, 6_144)}


@pytest.mark.parametrize('size, patch', list(REFERENCE_PARAMS))
def test_parameter_count_equals_reference(size, patch):
    model = DiT(**dit_kwargs(size, patch_size=patch), num_classes=1000, learn_sigma=True)
    shapes = jax.eval_shape(
        lambda: model.init({'params': jax.random.key(0)}, jnp.zeros((1, 32, 32, 4)),
                           jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)))
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes['params']))
    reference, pos_table = REFERENCE_PARAMS[(size, patch)]
    print(f'DiT-{size}/{patch}: {count:,} parameters + {pos_table:,} fixed position table')
    assert count + pos_table == reference


def test_learn_sigma_doubles_the_output_channels(conditional):
    model, (x, noise_cond, labels), _, perturbed = conditional
    wide = model.clone(learn_sigma=True)
    variables = jax.eval_shape(lambda: wide.init({'params': jax.random.key(0)}, x, noise_cond,
                                                 labels))
    out = jax.eval_shape(lambda v: wide.apply(v, x, noise_cond, labels), variables)
    assert out.shape == x.shape[:-1] + (2 * x.shape[-1],)


def test_dit_kwargs_rejects_unknown_size():
    with pytest.raises(ValueError, match="'S', 'B', 'L', 'XL'"):
        dit_kwargs('M', 2)


def test_patchify_roundtrip():
    x = jax.random.normal(jax.random.key(0), (2, 8, 12, 3))
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 6, 48)
    np.testing.assert_array_equal(tokens[0, 1], x[0, 0:4, 4:8].reshape(-1))
    np.testing.assert_array_equal(unpatchify(tokens, 4, 8, 12), x)


def test_sincos_position_embedding_nonsquare():
    table = sincos_2d_position_embedding(16, 2, 3)
    assert table.shape == (6, 16)
    # Token (row 1, col 2) = index 5: first half encodes the column, second the row.
    np.testing.assert_allclose(table[5, :4], np.sin(2.0 / 10000.0 ** (np.arange(4) / 4)), rtol=1e-6)
    np.testing.assert_allclose(table[5, 8:12], np.sin(1.0 / 10000.0 ** (np.arange(4) / 4)), rtol=1e-6)


def test_adaln_zero_blocks_are_identity_and_output_is_zero(conditional):
    model, (x, noise_cond, labels), variables, _ = conditional

    @jax.jit
    def apply_recording_blocks(variables):
        block_calls = []

        def record_blocks(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, DiTBlock) and context.method_name == '__call__':
                block_calls.append((args[0], out))
            return out

        with nn.intercept_methods(record_blocks):
            out = model.apply(variables, x, noise_cond, labels, train=False)
        return out, block_calls

    out, block_calls = apply_recording_blocks(variables)

    assert len(block_calls) == TINY['depth']
    for block_input, block_output in block_calls:
        assert float(jnp.abs(block_input).max()) > 0.0
        np.testing.assert_array_equal(block_output, block_input)
    assert out.shape == x.shape
    np.testing.assert_array_equal(out, jnp.zeros_like(x))


def test_label_dropout_replaces_labels_with_null_class(conditional):
    model, (x, noise_cond, labels), _, variables = conditional
    always_drop = model.clone(label_dropout=1.0)

    @jax.jit
    def three_ways(variables):
        return (always_drop.apply(variables, x, noise_cond, None, train=False),
                always_drop.apply(variables, x, noise_cond, labels, train=True,
                                  rngs={'dropout': jax.random.key(3)}),
                always_drop.apply(variables, x, noise_cond, labels, train=False))

    unconditional, dropped, conditional_out = three_ways(variables)

    np.testing.assert_allclose(dropped, unconditional, rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(conditional_out - unconditional).max()) > 1e-3


def test_unconditional_model_ignores_labels():
    model = DiT(**TINY)
    x, noise_cond, labels = _inputs()

    @jax.jit
    def init_and_apply():
        variables = _perturbed(model.init(jax.random.key(0), x, noise_cond, None))
        return (variables, model.apply(variables, x, noise_cond, labels),
                model.apply(variables, x, noise_cond, None))

    variables, with_labels, without_labels = init_and_apply()
    assert 'label_embed' not in variables['params']
    np.testing.assert_array_equal(with_labels, without_labels)


def test_jit_and_grad_with_and_without_remat(conditional):
    model, (x, noise_cond, labels), fresh, perturbed = conditional
    rematted = model.clone(remat=True)

    @jax.jit
    def loss_and_grads(params):
        def loss(model, params):
            prediction = model.apply({'params': params}, x, noise_cond, labels,
                                     train=True, rngs={'dropout': jax.random.key(5)})
            return jnp.mean((prediction - x) ** 2)
        return (jax.value_and_grad(lambda p: loss(model, p))(params),
                jax.grad(lambda p: loss(rematted, p))(params))

    (loss, grads), remat_grads = loss_and_grads(perturbed['params'])
    assert bool(jnp.isfinite(loss))
    for path, grad in jax.tree.leaves_with_path(grads):
        assert bool(jnp.all(jnp.isfinite(grad))), jax.tree_util.keystr(path)
    assert float(jnp.abs(grads['final']['linear']['kernel']).max()) > 0.0
    assert float(jnp.abs(grads['block_0']['attn']['qkv']['kernel']).max()) > 0.0
    for plain, remat in zip(jax.tree.leaves(grads), jax.tree.leaves(remat_grads)):
        np.testing.assert_allclose(plain, remat, rtol=1e-4, atol=1e-6)

    # At the zero init the output layer still gets a gradient, so training starts.
    (_, init_grads), _ = loss_and_grads(nn.meta.unbox(fresh)['params'])
    assert float(jnp.abs(init_grads['final']['linear']['kernel']).max()) > 0.0


def test_remat_keeps_parameter_tree(conditional):
    model, (x, noise_cond, labels), variables, _ = conditional
    rematted = model.clone(remat=True)
    shapes = jax.eval_shape(lambda: rematted.init(
        {'params': jax.random.key(0)}, x, noise_cond, labels, train=False))
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)


def test_bfloat16_compute_keeps_float32_params(conditional):
    model, (x, noise_cond, labels), _, perturbed = conditional
    bf16 = model.clone(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda: bf16.init(
        {'params': jax.random.key(0)}, x, noise_cond, labels, train=False))
    for leaf in jax.tree.leaves(shapes):
        assert leaf.dtype == jnp.float32

    out_fp32, out_bf16 = jax.jit(lambda v: (model.apply(v, x, noise_cond, labels),
                                            bf16.apply(v, x, noise_cond, labels)))(perturbed)
    assert out_bf16.dtype == x.dtype
    assert bool(jnp.all(jnp.isfinite(out_bf16)))
    relative_error = jnp.linalg.norm(out_bf16 - out_fp32) / jnp.linalg.norm(out_fp32)
    assert float(relative_error) < 0.05


def test_every_parameter_has_logical_names(conditional):
    model, (x, noise_cond, labels), _, _ = conditional
    # The options add the two parameters the default model lacks.
    model = model.clone(pos_embed='learned', noise_embedding='fourier')
    variables = jax.eval_shape(lambda: model.init(
        {'params': jax.random.key(0)}, x, noise_cond, labels, train=False))
    boxed = jax.tree.leaves(variables['params'],
                            is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert all(isinstance(v, nn.LogicallyPartitioned) for v in boxed)
    specs = nn.get_partition_spec(variables)['params']
    for path, spec in jax.tree.leaves_with_path(
            specs, is_leaf=lambda s: isinstance(s, PartitionSpec)):
        where = jax.tree_util.keystr(path)
        assert isinstance(spec, PartitionSpec), where
        named = [name for name in spec if name is not None]
        assert named, f'{where} has no logical axis names'
        assert set(named) <= LOGICAL_NAMES, where
    assert specs['pos_embed'] == PartitionSpec(None, 'embed')
    assert specs['noise_embed']['frequencies']['frequencies'] == PartitionSpec('norm')
    block = specs['block_0']
    assert block['attn']['qkv']['kernel'] == PartitionSpec('embed', None, 'heads', 'kv')
    assert block['attn']['out']['kernel'] == PartitionSpec('heads', 'kv', 'embed')
    assert block['mlp']['fc1']['kernel'] == PartitionSpec('embed', 'mlp')
    assert block['mlp']['fc2']['kernel'] == PartitionSpec('mlp', 'embed')
    assert block['adaLN']['linear']['kernel'] == PartitionSpec('cond', None, 'embed')
    assert specs['patch_embed']['kernel'] == PartitionSpec('patch', 'embed')
    assert specs['final']['linear']['kernel'] == PartitionSpec('embed', 'patch')
    assert specs['label_embed']['embedding'] == PartitionSpec('classes', 'cond')


def test_runs_under_mesh_and_logical_rules(conditional):
    """One-device mesh: checks that the constraints and rules are well formed."""
    model, (x, noise_cond, labels), _, perturbed = conditional
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ('data', 'model'))
    rules = (('batch', 'data'), ('embed', 'data'), ('cond', 'data'), ('heads', 'model'),
             ('mlp', 'model'), ('classes', 'model'), ('length', None), ('kv', None),
             ('patch', None), ('norm', None))
    with mesh, nn.logical_axis_rules(rules):
        out = jax.jit(lambda v: model.apply(v, x, noise_cond, labels))(perturbed)
    plain = jax.jit(lambda v: model.apply(v, x, noise_cond, labels))(perturbed)
    np.testing.assert_allclose(out, plain,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('pos_embed,noise_embedding',
                         [('learned', 'positional'), ('sincos', 'fourier')])
def test_options_and_nonsquare_input(pos_embed, noise_embedding):
    model = DiT(**TINY, pos_embed=pos_embed, noise_embedding=noise_embedding)
    x, noise_cond, _ = _inputs(height=4, width=12)
    out = jax.jit(lambda: model.apply(
        _perturbed(model.init(jax.random.key(0), x, noise_cond, None)), x, noise_cond))()
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def test_scalar_noise_cond_is_broadcast(conditional):
    model, (x, _, labels), _, perturbed = conditional
    scalar, vector = jax.jit(lambda v: (
        model.apply(v, x, jnp.float32(3.0), labels),
        model.apply(v, x, jnp.full((4,), 3.0), labels)))(perturbed)
    np.testing.assert_allclose(scalar, vector, rtol=1e-6)


def test_indivisible_input_names_the_fix():
    x, noise_cond, _ = _inputs(height=9, width=8)
    with pytest.raises(ValueError, match='divisible by patch_size=2.*H=9, W=8'):
        DiT(**TINY).init(jax.random.key(0), x, noise_cond)


def test_unknown_pos_embed():
    x, noise_cond, _ = _inputs()
    with pytest.raises(ValueError, match='sincos'):
        DiT(**TINY, pos_embed='rope').init(jax.random.key(0), x, noise_cond)
