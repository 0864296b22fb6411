"""score_sde's NCSN++ network (diffjax/models/ncsnpp.py): parameter counts at the paper's settings,
FIR resampling, initialisation, the switches' contracts, mixed precision, remat, sharding names.

Weight-for-weight parity with score_sde's own code is in tests/test_convert.py.
"""

import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from conftest import REPO
from diffjax.models import build_model, fir
from diffjax.models.ncsnpp import NCSNpp

SMALL = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0)
LOGICAL_NAMES = {"conv_in", "conv_out", "norm", "classes", "cond"}


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def count_params(model, image_size=32, channels=3) -> int:
    """Shapes only (jax.eval_shape): nothing is allocated."""
    shapes = jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0)}, jnp.zeros((1, image_size, image_size, channels)),
        jnp.zeros((1,)), None, train=False))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(shapes)))


# Measured with score_sde_pytorch's own models (sum of model.parameters(), Fourier frequencies
# included), for the configs in its configs/ folder; these equal Song et al.'s networks.
SCORE_SDE_COUNTS = [
    ("cifar10_ddpmpp_vp.py", None, {}, 61_804_419),  # vp/cifar10_ddpmpp_continuous
    ("cifar10_ddpmpp_vp.py", "deep", {}, 106_632_579),  # vp/cifar10_ddpmpp_deep_continuous
    ("cifar10_ddpmpp_subvp.py", None, {}, 61_804_419),  # subvp/cifar10_ddpmpp_continuous
    ("cifar10_ncsnpp_ve.py", None, {}, 62_758_915),  # ve/cifar10_ncsnpp_continuous
    ("cifar10_ncsnpp_ve.py", "deep", {}, 107_587_075),  # ve/cifar10_ncsnpp_deep_continuous
    # Ho et al.'s DDPM (score_sde's models/ddpm.py, vp/ddpm/cifar10.py) through the same switches.
    ("cifar10_ddpmpp_vp.py", None, dict(resblock_type="ddpm", skip_rescale=False,
                                        num_res_blocks=2), 35_218_947),
]


@pytest.mark.parametrize("file, arg, unet, expected", SCORE_SDE_COUNTS,
                         ids=["ddpmpp", "ddpmpp_deep", "ddpmpp_subvp", "ncsnpp", "ncsnpp_deep",
                              "ddpm"])
def test_parameter_counts_equal_score_sde(file, arg, unet, expected):
    config = load_config(file, arg)
    for key, value in unet.items():
        config.model.unet[key] = value
    count = count_params(build_model(config))
    print(f"{file}:{arg or ''} {unet or ''}: {count:,} parameters")
    assert count == expected


def _upfirdn_numpy(x, k, up, down, pad):
    """StyleGAN2's upfirdn2d by its definition, one pixel at a time (NHWC)."""
    b, h, w, c = x.shape
    upsampled = np.zeros((b, h * up, w * up, c), x.dtype)
    upsampled[:, ::up, ::up] = x
    p0, p1 = pad
    padded = np.pad(upsampled, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)),
                                (0, 0)))
    padded = padded[:, max(-p0, 0):padded.shape[1] - max(-p1, 0),
                    max(-p0, 0):padded.shape[2] - max(-p1, 0)]
    kh = k.shape[0]
    out_h = padded.shape[1] - kh + 1
    out = np.zeros((b, out_h, out_h, c), x.dtype)
    flipped = k[::-1, ::-1]
    for i in range(out_h):
        for j in range(out_h):
            out[:, i, j] = np.einsum("bhwc,hw->bc", padded[:, i:i + kh, j:j + kh], flipped)
    return out[:, ::down, ::down]


def test_fir_resampling_matches_upfirdn_definition_and_naive_limit():
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    kernel = (1, 3, 3, 1)
    k = fir.setup_kernel(kernel)
    np.testing.assert_allclose(fir.upsample_2d(jnp.asarray(x), kernel),
                               _upfirdn_numpy(x, k * 4, 2, 1, (2, 1)), atol=1e-5)
    np.testing.assert_allclose(fir.downsample_2d(jnp.asarray(x), kernel),
                               _upfirdn_numpy(x, k, 1, 2, (1, 1)), atol=1e-5)
    # The [1, 1] kernel is nearest-neighbour upsampling and 2x2 averaging (EDM's DDPM++).
    np.testing.assert_allclose(fir.upsample_2d(jnp.asarray(x), (1, 1)),
                               fir.naive_upsample_2d(jnp.asarray(x)), atol=1e-6)
    np.testing.assert_allclose(fir.downsample_2d(jnp.asarray(x), (1, 1)),
                               fir.naive_downsample_2d(jnp.asarray(x)), atol=1e-6)


def test_fir_upsampling_conv_is_a_transposed_conv_then_the_filter():
    """score_sde's (JAX) upsample_conv_2d, which score_sde_pytorch cannot run: scatter every input
    pixel through the flipped 3x3 weight at stride 2, then filter with 4 k."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    w = rng.standard_normal((3, 3, 2, 5)).astype(np.float32)
    scattered = np.zeros((1, 9, 9, 5), np.float32)  # (H - 1) * 2 + 3
    for i in range(4):
        for j in range(4):
            scattered[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += np.einsum(
                "c,hwco->hwo", x[0, i, j], w[::-1, ::-1])
    expected = _upfirdn_numpy(scattered, fir.setup_kernel((1, 3, 3, 1)) * 4, 1, 1, (1, 1))
    got = fir.upsample_conv_2d(jnp.asarray(x), jnp.asarray(w), (1, 3, 3, 1))
    assert got.shape == (1, 8, 8, 5)
    np.testing.assert_allclose(got, expected, atol=1e-4)


# Compiling for CPU at a low LLVM optimisation level halves these tests' compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_fast(fn, *args):
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def random_params(model, x, labels):
    """Shapes from eval_shape, values from numpy: every weight random, no init to compile."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros(2), labels))
    rng = np.random.default_rng(7)
    return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32),
                        nn.unbox(shapes)["params"])


@pytest.fixture(scope="module")
def small():
    """A small class-conditional network with random weights, shared by the file."""
    model = NCSNpp(**SMALL, embedding_type="fourier", num_classes=10, label_dropout=0.0)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([1, 2])
    return model, x, labels, random_params(model, x, labels)


def test_initialisation_is_score_sde_default_init():
    model = NCSNpp(nf=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
                   embedding_type="fourier")
    x = jnp.ones((2, 8, 8, 3))
    variables = run_fast(lambda key, x: model.init(key, x, jnp.zeros(2)),
                         jax.random.key(0, impl="rbg"), x)
    params = nn.unbox(variables)["params"]
    out = run_fast(lambda p, x: model.apply({"params": p}, x, jnp.array([0.1, 1.0])), params, x)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert float(jnp.abs(out).max()) < 1e-3, "init_scale=0 (1e-10) starts the output at ~0"

    def std(array):  # variance_scaling(scale, fan_avg, uniform) has variance scale / fan_avg
        return float(np.std(np.asarray(array)))

    nin = params["down_0_attn_0"]["NIN_0"]["kernel"]  # attention q: scale 0.1, fans 16, 16
    assert nin.shape == (16, 16) and abs(std(nin) / np.sqrt(0.1 / 16) - 1) < 0.2
    dense = params["temb_0"]["kernel"]  # noise-embedding MLP: scale 1, fans 32, 64
    assert dense.shape == (32, 64) and abs(std(dense) / np.sqrt(1 / 48) - 1) < 0.1
    assert std(params["conv_out"]["kernel"]) < 1e-4  # scale 1e-10
    assert std(params["down_0_block_0"]["Conv_1"]["kernel"]) < 1e-4
    frequencies = params["noise_features"]["frequencies"]  # nf frequencies, N(0, 16^2)
    assert frequencies.shape == (16,) and std(frequencies) > 8


def test_every_parameter_has_logical_axis_names():
    model = NCSNpp(**SMALL, fir=True, progressive_input="residual", embedding_type="fourier",
                   num_classes=10)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)),
                                              jnp.zeros(1), jnp.zeros(1, jnp.int32)))
    specs = nn.get_partition_spec(boxed)["params"]
    for path, spec in jax.tree.leaves_with_path(specs,
                                                is_leaf=lambda s: isinstance(s, PartitionSpec)):
        named = [name for name in spec if name is not None]
        assert named and set(named) <= LOGICAL_NAMES, jax.tree_util.keystr(path)
    assert specs["conv_in"]["kernel"] == PartitionSpec(None, None, "conv_in", "conv_out")
    assert specs["mid_attn"]["NIN_0"]["kernel"] == PartitionSpec("conv_in", "conv_out")
    assert specs["down_0_pyramid"]["Conv2d_0"]["kernel"] == PartitionSpec(
        None, None, "conv_in", "conv_out")
    assert specs["label_embedding"]["embedding"] == PartitionSpec("classes", "cond")


def test_noise_level_labels_null_class_and_score_sde_contracts(small):
    """Outputs depend on noise level and label; None is the null class; centered=False feeds
    2x - 1 and scale_by_sigma divides by exp(noise_cond) (= sigma for VE), as score_sde."""
    model, x, labels, params = small
    mapped = model.clone(centered=False, scale_by_sigma=True)

    def run(params, x, labels):
        def net(m, x, cond, y):
            return m.apply({"params": params}, x, cond, y)
        low, high = jnp.array([0.1, 0.1]), jnp.array([2.0, 2.0])
        return (net(model, x, low, labels), net(model, x, high, labels),
                net(model, x, low, labels[::-1]), net(model, x, low, None),
                net(model, x, low, jnp.array([10, 10])),
                net(model, 2 * x - 1, high, labels), net(mapped, x, high, labels))

    base, other_noise, other_labels, unconditional, null_rows, plain, scaled = run_fast(
        run, params, x, labels)
    assert not np.allclose(base, other_noise) and not np.allclose(base, other_labels)
    np.testing.assert_allclose(unconditional, null_rows, atol=1e-6)
    np.testing.assert_allclose(scaled * np.exp(2.0), plain, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params(small):
    model, x, labels, params = small
    bf16 = model.clone(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), x, jnp.zeros(2), labels))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
    out32, out16 = run_fast(lambda p, x, y: (model.apply({"params": p}, x, jnp.ones(2), y),
                                             bf16.apply({"params": p}, x, jnp.ones(2), y)),
                            params, x, labels)
    assert out16.dtype == jnp.float32
    error = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert error < 0.05


def test_remat_gives_the_same_parameters_and_gradients():
    model = NCSNpp(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.1)
    remat = model.clone(remat=True)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    params = random_params(model, x, None)
    shapes = jax.eval_shape(lambda: remat.init(jax.random.key(0), x, jnp.zeros(2)))
    assert jax.tree.structure(nn.unbox(shapes)["params"]) == jax.tree.structure(params)

    def grads(params, x, key):
        def loss(m, p):
            return jnp.sum(m.apply({"params": p}, x, jnp.ones(2), train=True,
                                   rngs={"dropout": key}) ** 2)
        return (jax.grad(lambda p: loss(model, p))(params),
                jax.grad(lambda p: loss(remat, p))(params))

    plain, rematted = run_fast(grads, params, x, jax.random.key(3))
    assert float(jnp.abs(plain["conv_out"]["kernel"]).max()) > 0
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(rematted)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_indivisible_image_and_unknown_switch_are_clear_errors():
    with pytest.raises(ValueError, match="divisible by 2\\^3"):
        NCSNpp(**{**SMALL, "ch_mult": (1, 2, 2, 2)}).init(
            jax.random.key(0), jnp.zeros((1, 12, 12, 1)), jnp.zeros(1))
    with pytest.raises(ValueError, match=r"model.unet.progressive='skip'"):
        NCSNpp(**SMALL, progressive="skip").init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                                                 jnp.zeros(1))
    config = load_config("cifar10_ddpmpp_vp.py")
    config.model.unet.scale_by_sigma = True
    with pytest.raises(ValueError, match="scale_by_sigma=False"):
        build_model(config)
