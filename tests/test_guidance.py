"""Classifier-free guidance in DiT's convention: s = 1 is conditional sampling, one batched network
call, channel-limited guidance (DiT, learned variance), per-class grids."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from conftest import run_cli
from PIL import Image

from diffjax.diffusion.guidance import classifier_free_guidance, grid_labels
from diffjax.diffusion.parameterization import make_score_fn
from diffjax.diffusion.processes import VPSDE
from diffjax.models.unet import UNet
from diffjax.sampling.sde_solvers import euler_maruyama

NUM_CLASSES = 10


def conditional_net():
    model = UNet(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), init_scale=1.0,
                 num_classes=NUM_CLASSES, label_dropout=0.0, dropout=0.0)
    x = jnp.zeros((4, 8, 8, 1))
    params = nn.unbox(model.init(jax.random.key(0), x, jnp.zeros(4), jnp.zeros(4, jnp.int32),
                                 train=False))["params"]
    calls = []

    def net(x_in, noise_cond, labels):
        calls.append(x_in.shape[0])
        return model.apply({"params": params}, x_in, noise_cond, labels, train=False)

    return net, calls


def test_guidance_combines_conditional_and_null_outputs_in_one_call():
    net, calls = conditional_net()
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    c, labels = jnp.full((4,), 300.0), jnp.array([0, 3, 5, 9])
    conditional = net(x, c, labels)
    unconditional = net(x, c, jnp.full((4,), NUM_CLASSES))
    calls.clear()
    guided = classifier_free_guidance(net, 1.5, null=NUM_CLASSES)(x, c, labels)
    assert calls == [8], "conditional and null halves go through the network as one batch"
    np.testing.assert_allclose(guided, unconditional + 1.5 * (conditional - unconditional),
                               rtol=1e-4, atol=1e-5)
    one = classifier_free_guidance(net, 1.0, null=NUM_CLASSES)(x, c, labels)
    np.testing.assert_allclose(one, conditional, rtol=1e-4, atol=1e-5)  # 2B vs B batch rounding
    zero = classifier_free_guidance(net, 0.0, null=NUM_CLASSES)(x, c, labels)
    np.testing.assert_allclose(zero, unconditional, rtol=1e-4, atol=1e-5)


def test_guidance_can_be_limited_to_the_first_channels_as_dit_does():
    def net(x_in, noise_cond, labels):
        # Output channel k of example i: label * 10 + k (the null label gives 100 + k).
        del noise_cond
        return labels[:, None, None, None] * 10.0 + jnp.arange(4.0) + 0 * x_in[..., :1]

    x, c, labels = jnp.zeros((2, 2, 2, 1)), jnp.zeros(2), jnp.array([1, 2])
    out = classifier_free_guidance(net, 1.5, null=10, guided_channels=3)(x, c, labels)
    conditional, null = net(x, c, labels), net(x, c, jnp.full(2, 10))
    np.testing.assert_allclose(out[..., :3], (null + 1.5 * (conditional - null))[..., :3])
    np.testing.assert_allclose(out[..., 3:], conditional[..., 3:])  # unguided: conditional


def test_guidance_scale_one_samples_like_the_conditional_model():
    net, _ = conditional_net()
    sde, labels = VPSDE(), jnp.arange(4) % NUM_CLASSES
    plain = make_score_fn(sde, net, labels=labels)
    guided = make_score_fn(sde, classifier_free_guidance(net, 1.0, null=NUM_CLASSES),
                           labels=labels)
    a = euler_maruyama(jax.random.key(2), plain, sde, (4, 8, 8, 1), num_steps=5)
    b = euler_maruyama(jax.random.key(2), guided, sde, (4, 8, 8, 1), num_steps=5)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-4, atol=1e-4)
    assert int(a.nfe) == int(b.nfe) == 6


def test_grid_labels_give_one_row_per_class():
    np.testing.assert_array_equal(grid_labels(20, 10), np.repeat(np.arange(10), 2))


def test_conditional_dit_trains_from_the_cli_with_a_per_class_grid(tmp_path):
    run_cli("--config=configs/digits.py:test,cond,dit", f"--workdir={tmp_path}",
            "--config.training.num_sample_images=20")
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_00000006.png"))
    cell = 32 + 1  # 8x8 digits enlarged 4x, 1 px padding
    assert grid.shape[0] == 10 * cell + 1 and grid.shape[1] == 2 * cell + 1, grid.shape
    assert os.path.isdir(tmp_path / "checkpoints" / "6")
