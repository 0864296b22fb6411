"""The U-Net: shapes, zero-initialised output, conditioning, mixed precision, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models.unet import UNet

SMALL = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)


def init(model, x, labels=None):
    import flax.linen as nn

    return nn.unbox(model.init(jax.random.key(0), x, jnp.zeros((x.shape[0],)), labels,
                               train=False))


@pytest.mark.parametrize("resblock_type", ["biggan", "ddpm"])
def test_output_shape_and_zero_init(resblock_type):
    model = UNet(**SMALL, resblock_type=resblock_type, init_scale=0.0)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = init(model, x)
    out = model.apply(variables, x, jnp.array([10.0, 500.0]), None, train=False)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert float(jnp.abs(out).max()) < 1e-3, "init_scale=0 must start the output near 0"
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, jnp.ones(2), None,
                                                   train=False) * x))(variables["params"])
    assert float(jnp.abs(grads["Conv_1"]["kernel"]).max()) > 0


def test_noise_level_and_labels_change_the_output():
    model = UNet(**SMALL, init_scale=1.0, num_classes=10, label_dropout=0.0)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    labels = jnp.array([1, 2])
    variables = init(model, x, labels)

    def run(c, y):
        return model.apply(variables, x, c, y, train=False)

    base = run(jnp.array([100.0, 100.0]), labels)
    assert not np.allclose(base, run(jnp.array([900.0, 900.0]), labels))
    assert not np.allclose(base, run(jnp.array([100.0, 100.0]), jnp.array([3, 4])))
    null = run(jnp.array([100.0, 100.0]), None)  # None = the null (unconditional) class
    np.testing.assert_allclose(null, run(jnp.array([100.0, 100.0]), jnp.array([10, 10])), atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
    model32 = UNet(**SMALL, init_scale=1.0)
    model16 = UNet(**SMALL, init_scale=1.0, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    variables = init(model16, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    out16 = model16.apply(variables, x, jnp.ones(2), None, train=False)
    out32 = model32.apply(variables, x, jnp.ones(2), None, train=False)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.1 * float(jnp.abs(out32).max()))


def test_remat_gives_the_same_gradients():
    x = jax.random.normal(jax.random.key(4), (2, 8, 8, 1))
    plain, remat = UNet(**SMALL, init_scale=1.0), UNet(**SMALL, init_scale=1.0, remat=True)
    params = init(plain, x)["params"]

    def grad(model):
        return jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, jnp.ones(2), None,
                                                      train=False) ** 2))(params)

    for a, b in zip(jax.tree.leaves(grad(plain)), jax.tree.leaves(grad(remat))):
        # Recomputed activations fuse differently in XLA: equal up to float32 rounding.
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_indivisible_image_size_is_a_clear_error():
    model = UNet(**{**SMALL, "ch_mult": (1, 2, 2, 2)})
    with pytest.raises(ValueError, match="not divisible by 2\\^3"):
        init(model, jnp.zeros((1, 12, 12, 1)))
