"""diffjax's AutoencoderKL against diffusers', its folder loading, sharding and objective.

The reference is tests/fixtures/vae_* (tools/make_vae_fixture.py): two tiny random-weight
diffusers AutoencoderKLs (SD layout with quant convs; SD3/Flux layout with 16 channels and a
shift), and their outputs computed by diffusers.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from folder_edits import broken_copy, one_line_error
from safetensors.numpy import load_file, save_file

from diffjax.config.schema import base_config
from diffjax.latents import (AutoencoderKL, autoencoder_loss, build_autoencoder, diffusers_weights,
                             kl_to_standard_normal, load_vae, reconstruct, save_diffusers_folder)
from diffjax.latents.vae import params_fingerprint

FIXTURES = os.path.join(REPO, "tests", "fixtures")
REF = dict(np.load(os.path.join(FIXTURES, "vae_reference.npz")))
VARIANTS = ("sd", "16ch")


def folder(name):
    return os.path.join(FIXTURES, f"vae_{name}")


def random_params(module, seed=0):
    """Random parameters from numpy (compiling flax's init costs tens of seconds on a CPU):
    kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.01), biases N(0, 0.01)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.standard_normal(leaf.shape)
        if path[-1].key == "kernel":
            noise = noise / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            noise = 0.1 * noise + (1.0 if path[-1].key == "scale" else 0.0)
        return noise.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, diffusers_weights.abstract_params(module))


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture(scope="module")
def vaes():
    return {name: load_vae(folder(name)) for name in VARIANTS}


@pytest.mark.parametrize("name", VARIANTS)
def test_encode_matches_diffusers(vaes, name):
    vae = vaes[name]
    images = REF[f"{name}_images"]
    encode = jax.jit(lambda p, x: vae.module.apply({"params": p}, x, method=vae.module.encode))
    mean, logvar = encode(vae.params, images)
    assert rel_l2(mean, REF[f"{name}_mean"]) < 1e-4
    assert rel_l2(logvar, REF[f"{name}_logvar"]) < 1e-4
    mean, std = vae.encode(images)
    assert mean.shape == REF[f"{name}_mean"].shape
    assert rel_l2(mean, REF[f"{name}_mean"]) < 1e-4
    assert rel_l2(std, np.exp(0.5 * REF[f"{name}_logvar"])) < 1e-4
    if name == "sd":  # the fixture drives two log-variance channels into the clamp
        assert np.all(np.asarray(logvar)[..., 2] == -30.0)
        assert np.all(np.asarray(logvar)[..., 3] == 20.0)


@pytest.mark.parametrize("name", VARIANTS)
def test_decode_matches_diffusers(vaes, name):
    vae = vaes[name]
    # decode takes model-space latents: (z - shift) * scale of diffusers' VAE-space z.
    decoded = vae.decode(vae.to_model_space(REF[f"{name}_latents"]))
    assert rel_l2(decoded, REF[f"{name}_decoded"]) < 1e-4
    reconstruction = jax.jit(lambda p, x: reconstruct(p, vae.module, x))(vae.params,
                                                                         REF[f"{name}_images"])
    assert rel_l2(reconstruction, REF[f"{name}_reconstruction"]) < 1e-4


def test_latent_space_and_shapes(vaes):
    sd, wide = vaes["sd"], vaes["16ch"]
    assert (sd.scale, sd.shift, sd.downsampling_factor) == (0.18215, 0.0, 2)
    assert (wide.scale, wide.shift, wide.downsampling_factor) == (1.5305, 0.0609, 4)
    assert wide.latent_shape(16) == (4, 4, 16)
    assert not wide.module.use_quant_conv and "quant_conv" not in wide.params
    z = np.random.default_rng(0).normal(size=(2, 4, 4, 16)).astype(np.float32)
    np.testing.assert_allclose(wide.to_model_space(z), (z - 0.0609) * 1.5305, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        wide.latent_shape(10)
    override = load_vae(folder("sd"), scale=0.5, shift=0.25)
    assert (override.scale, override.shift) == (0.5, 0.25)


def test_any_batch_size_in_chunks(vaes):
    vae = vaes["sd"]
    images = np.concatenate([REF["sd_images"]] * 3)[:5]
    mean, std = vae.encode(images, batch_size=2)  # chunks 2, 2, 1 (padded)
    assert mean.shape[0] == std.shape[0] == 5
    np.testing.assert_allclose(mean[2:4], REF["sd_mean"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mean[4:5], REF["sd_mean"][:1], rtol=1e-4, atol=1e-5)
    decoded = vae.decode(jnp.asarray(vae.to_model_space(REF["sd_latents"][:1])))
    assert rel_l2(decoded, REF["sd_decoded"][:1]) < 1e-4


def test_bfloat16_compute_stays_close(vaes):
    vae = load_vae(folder("sd"), dtype="bfloat16")
    assert jax.tree.leaves(vae.params)[0].dtype == jnp.float32
    mean, _ = vae.encode(REF["sd_images"])
    assert mean.dtype == jnp.float32
    assert rel_l2(mean, REF["sd_mean"]) < 3e-2
    with pytest.raises(ValueError, match="autoencoder.dtype"):
        load_vae(folder("sd"), dtype="float8")


def _legacy_copy(destination):
    """The sd fixture as an older diffusers file: query/key/value/proj_attn, 1x1-conv shapes."""
    os.makedirs(destination)
    shutil.copy(os.path.join(folder("sd"), "config.json"), destination)
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    tensors = {}
    weights = load_file(os.path.join(folder("sd"), diffusers_weights.WEIGHTS_FILE))
    for name, array in weights.items():
        for new, old in renames.items():
            if f".attentions.0.{new}." in name:
                name = name.replace(f".{new}.", f".{old}.")
                array = array[:, :, None, None] if array.ndim == 2 else array
        tensors[name] = array
    save_file(tensors, os.path.join(destination, diffusers_weights.WEIGHTS_FILE))


def test_pipeline_root_and_legacy_attention_names(tmp_path, vaes):
    _legacy_copy(str(tmp_path / "pipeline" / "vae"))
    vae = load_vae(str(tmp_path / "pipeline"))
    assert vae.fingerprint == vaes["sd"].fingerprint
    mean, _ = vae.encode(REF["sd_images"])
    assert rel_l2(mean, REF["sd_mean"]) < 1e-4


def _broken_copy(tmp_path, edit_tensors=None, edit_config=None):
    return broken_copy(folder("sd"), tmp_path / "broken", diffusers_weights.WEIGHTS_FILE, edit_tensors, edit_config)


def test_missing_and_mismatched_files(tmp_path):
    message = one_line_error(FileNotFoundError, lambda: load_vae(str(tmp_path / "nope")),
                              "does not exist")
    assert "huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir" in message
    assert "--config.autoencoder.pretrained=DIR" in message
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(os.path.join(folder("sd"), "config.json"), only_config)
    one_line_error(FileNotFoundError, lambda: load_vae(str(only_config)),
                    "diffusion_pytorch_model.safetensors is missing.*huggingface-cli")

    def drop(tensors):
        del tensors["decoder.mid_block.attentions.0.to_k.bias"]

    one_line_error(ValueError, lambda: load_vae(_broken_copy(tmp_path, drop)),
                    r"'decoder.mid_block.attentions.0.to_k.bias' \(16,\) is missing")
    shutil.rmtree(tmp_path / "broken")

    def reshape(tensors):
        tensors["encoder.conv_in.weight"] = np.zeros((8, 3, 5, 5), np.float32)

    one_line_error(ValueError, lambda: load_vae(_broken_copy(tmp_path, reshape)),
                    r"'encoder.conv_in.weight' has shape \(8, 3, 5, 5\) but config.json "
                    r"implies \(8, 3, 3, 3\)")
    shutil.rmtree(tmp_path / "broken")

    def widen(config):
        config["block_out_channels"] = [8, 32]

    one_line_error(ValueError, lambda: load_vae(_broken_copy(tmp_path, edit_config=widen)),
                    "has shape .* but config.json implies")
    shutil.rmtree(tmp_path / "broken")

    def attention_blocks(config):
        config["down_block_types"] = ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]

    one_line_error(ValueError,
                    lambda: load_vae(_broken_copy(tmp_path, edit_config=attention_blocks)),
                    "down_block_types=.* is not supported")
    shutil.rmtree(tmp_path / "broken")

    garbage = _broken_copy(tmp_path)
    with open(os.path.join(garbage, diffusers_weights.WEIGHTS_FILE), "wb") as handle:
        handle.write(b"not a safetensors file")
    one_line_error(ValueError, lambda: load_vae(garbage), "not a readable safetensors file")


def test_export_round_trip(tmp_path, vaes):
    vae = vaes["16ch"]
    save_diffusers_folder(str(tmp_path / "out"), vae.module, vae.params, scale=vae.scale,
                          shift=vae.shift)
    again = load_vae(str(tmp_path / "out"))
    assert (again.scale, again.shift) == (vae.scale, vae.shift)
    assert again.fingerprint == vae.fingerprint == params_fingerprint(vae.params)
    original = load_file(os.path.join(folder("16ch"), diffusers_weights.WEIGHTS_FILE))
    exported = load_file(str(tmp_path / "out" / diffusers_weights.WEIGHTS_FILE))
    assert sorted(original) == sorted(exported)
    for name in original:
        np.testing.assert_array_equal(original[name], exported[name])


def test_sd_vae_parameter_count():
    """The default AutoencoderKL is the SD-VAE; diffusers counts 83,653,863 parameters."""
    module = AutoencoderKL()
    count = sum(int(np.prod(leaf.shape))
                for leaf in jax.tree.leaves(diffusers_weights.abstract_params(module)))
    assert count == int(REF["sd_vae_param_count"]) == 83_653_863
    config = base_config()
    config.data.num_channels = 3
    assert build_autoencoder(config) == module  # base config = the SD-VAE architecture


SHARDED_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh
    from diffjax.runtime import xla
    from diffjax.latents import load_vae

    xla.enable_compilation_cache()
    folder, reference = sys.argv[1], np.load(sys.argv[2])
    devices = np.asarray(jax.devices())
    one = load_vae(folder, Mesh(devices[:1].reshape(1, 1, 1), ("data", "fsdp", "tensor")))
    eight = load_vae(folder, Mesh(devices.reshape(4, 2, 1), ("data", "fsdp", "tensor")))
    images = np.concatenate([reference["sd_images"]] * 2)[:3]  # padded to 8 on 8 devices
    m1, s1 = one.encode(images)
    m8, s8 = eight.encode(images)
    z = one.to_model_space(reference["sd_latents"])
    d1, d8 = one.decode(z), eight.decode(z)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in ((m1, m8), (s1, s8), (d1, d8)))
    axes = sorted({str(a) for leaf in jax.tree.leaves(eight.params) for a in leaf.sharding.spec
                   if a})
    ref_err = float(np.linalg.norm(np.asarray(m8)[:2] - reference["sd_mean"])
                    / np.linalg.norm(reference["sd_mean"]))
    print("RESULT", json.dumps({"max_abs_diff": diff, "axes": axes, "ref_err": ref_err,
                                "shape": list(m8.shape), "devices": len(m8.sharding.device_set),
                                "default_mesh": int(load_vae(folder).mesh.size)}))
""")


def test_eight_devices_equal_one():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, folder("sd"),
         os.path.join(FIXTURES, "vae_reference.npz")],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
    report = json.loads(line.split(" ", 1)[1])
    assert report["max_abs_diff"] < 1e-5, report
    assert report["ref_err"] < 1e-4, report
    assert report["shape"] == [3, 8, 12, 4] and report["devices"] == 8, report
    assert "fsdp" in report["axes"], report
    assert report["default_mesh"] == 8, report


# --- first-stage objective -------------------------------------------------------------------

def tiny_config(**overrides):
    config = base_config()
    config.data.num_channels = 1
    a = config.autoencoder
    a.block_out_channels, a.layers_per_block, a.latent_channels = (8, 16), 1, 4
    a.norm_num_groups = 4
    for key, value in overrides.items():
        setattr(a, key, value)
    return config


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    module = build_autoencoder(config)
    images = np.random.default_rng(1).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    return module, random_params(module), images


def loss_fn(module, config):
    return jax.jit(lambda p, x, rng: autoencoder_loss(p, module, x, rng, config))


def test_kl_closed_form():
    mean = np.array([[0.0, 1.0, -2.0]])
    logvar = np.array([[0.0, np.log(4.0), np.log(0.25)]])
    sigma = np.exp(0.5 * logvar)
    # KL(N(m, s^2) || N(0, 1)) = -log s + (s^2 + m^2 - 1) / 2 per dimension
    expected = np.sum(-np.log(sigma) + (sigma**2 + mean**2 - 1) / 2, axis=-1)
    np.testing.assert_allclose(kl_to_standard_normal(mean, logvar), expected, rtol=1e-6)
    assert float(kl_to_standard_normal(np.zeros((1, 4)), np.zeros((1, 4)))[0]) == 0.0


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_autoencoder_loss_is_reconstruction_plus_weighted_kl(tiny, kind):
    module, params, images = tiny
    config = tiny_config(reconstruction_loss=kind, sample_posterior=False, kl_weight=0.5)
    loss, metrics = loss_fn(module, config)(params, images, jax.random.key(2))
    reconstruction, mean, logvar = jax.jit(module.apply)({"params": params}, images)
    reconstruction = np.asarray(reconstruction, np.float64)
    mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
    error = reconstruction - np.asarray(images, np.float64)
    rec = np.sum((np.abs(error) if kind == "l1" else error**2).reshape(3, -1), -1)
    kl = 0.5 * np.sum((mean**2 + np.exp(logvar) - 1 - logvar).reshape(3, -1), -1)
    assert loss.shape == (3,)
    np.testing.assert_allclose(metrics["reconstruction"], rec, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
    np.testing.assert_allclose(loss, rec + 0.5 * kl, rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], np.mean(error.reshape(3, -1) ** 2, -1), rtol=1e-5)


def test_autoencoder_loss_samples_the_posterior(tiny):
    module, params, images = tiny
    config = tiny_config(sample_posterior=True)
    sampled = loss_fn(module, config)
    a, _ = sampled(params, images, jax.random.key(0))
    b, _ = sampled(params, images, jax.random.key(0))
    c, _ = sampled(params, images, jax.random.key(1))
    mean_only, _ = loss_fn(module, tiny_config(sample_posterior=False))(params, images,
                                                                        jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, mean_only)
    with pytest.raises(ValueError, match="autoencoder.reconstruction_loss='l3'"):
        loss_fn(module, tiny_config(reconstruction_loss="l3"))(params, images, jax.random.key(0))


def test_first_stage_trains_with_diffjax_state(tiny):
    """The module fits diffjax.state.train_state unchanged (`init(rng, x, train=False)`, logical axes);
    a few Adam steps of `autoencoder_loss` on digits halve it and move every parameter.
    (The state's own jitted init is not compiled here: it costs tens of seconds on a CPU.)"""
    import optax
    from sklearn.datasets import load_digits

    from diffjax.parallel.mesh import create_mesh
    from diffjax.state.train_state import state_spec

    module, _, _ = tiny
    config = tiny_config()
    images = jnp.asarray(load_digits().images[:64, :, :, None] / 8.0 - 1.0, jnp.float32)
    optimizer = optax.adam(3e-3)
    mesh = create_mesh(config.mesh)
    spec = state_spec(module, optimizer, (images[:1],), mesh, config.mesh.rules)
    initial = jax.device_put(random_params(module), spec.shardings.params)
    assert jax.tree.structure(initial) == jax.tree.structure(spec.abstract.params)

    @jax.jit
    def step(params, opt_state, rng):
        def mean_loss(p):
            return autoencoder_loss(p, module, images, rng, config)[0].mean()

        loss, grad = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = optimizer.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params, opt_state = initial, optimizer.init(initial)
    losses = []
    for i in range(30):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
    unchanged = [jax.tree_util.keystr(path) for path, before, after in zip(
        *zip(*jax.tree_util.tree_flatten_with_path(initial)[0]), jax.tree.leaves(params))
        if np.array_equal(before, after)]
    assert not unchanged, f"parameters without gradient: {unchanged}"
