"""PixArt-alpha (diffjax/models/pixart.py): the published size, text conditioning through the
padding mask, and the zero-initialised start (no text, zero output)."""

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.pixart import PixArt

# diffusers 0.42.1 PixArtTransformer2DModel(num_layers=28, num_attention_heads=16,
# attention_head_dim=72, in_channels=4, out_channels=8, caption_channels=4096, sample_size=64,
# norm_type="ada_norm_single"), i.e. PixArt-XL-2-512x512, counted on the meta device; PixArt-
# alpha's PixArt_XL_2 has the same parameters (its pos_embed and y_embedding are buffers).
PIXART_XL_2 = 610_856_096


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def text(batch, length, width, mask=None):
    states = jax.random.normal(jax.random.key(1), (batch, length, width))
    mask = jnp.ones((batch, length), jnp.int32) if mask is None else mask
    return {"states": states, "mask": mask, "pooled": jnp.zeros((batch, width))}


def test_pixart_xl_2_has_the_published_parameter_count():
    model = PixArt(patch_size=2, hidden_size=1152, depth=28, num_heads=16, learn_sigma=True)
    x = jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32)
    cond = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                        text(1, 120, 4096))
    variables = jax.eval_shape(lambda x, c, t: model.init(jax.random.key(0), x, c, t), x,
                               jax.ShapeDtypeStruct((1,), jnp.float32), cond)
    assert count(variables["params"]) == PIXART_XL_2


def test_padding_tokens_do_not_change_the_output_and_text_does():
    model = PixArt(patch_size=2, hidden_size=32, depth=2, num_heads=2)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    t = jnp.array([10.0, 500.0])
    cond = text(2, 6, 16, jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]))
    params = model.init(jax.random.key(2), x, t, cond)["params"]
    # At initialisation the cross-attention projections and the output layer are zero.
    assert not np.asarray(model.apply({"params": params}, x, t, cond)).any()
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(3), p.shape),
                          params)
    out = model.apply({"params": params}, x, t, cond)
    padded = dict(cond, states=cond["states"].at[0, 3:].set(100.0).at[1, 5:].set(-7.0))
    np.testing.assert_allclose(model.apply({"params": params}, x, t, padded), out, atol=1e-5)
    other = dict(cond, states=cond["states"].at[:, 0].add(1.0))
    assert np.abs(np.asarray(model.apply({"params": params}, x, t, other) - out)).max() > 1e-3
