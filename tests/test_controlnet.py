"""diffjax's ControlNetModel against diffusers': residuals, the U-Net steered by them, folders,
sizes and the errors a user can cause.

The reference is tests/fixtures/controlnet/ (tools/make_controlnet_fixtures.py): tiny random
ControlNets made by diffusers' `ControlNetModel.from_unet` from the sd1 / sdxl U-Net fixtures,
EVERY parameter random (zero convs included), and their float64 / float32 outputs.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from diffjax.models import controlnet_weights, sd_unet_weights
from diffjax.models.controlnet import (ControlNetConfig, ControlNetModel, check_fits, from_unet,
                                       parameter_count)
from diffjax.models.sd_unet_config import UNetConfig

FIXTURES = os.path.join(REPO, "tests", "fixtures")
FOLDER = os.path.join(FIXTURES, "controlnet")
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
SCALE = 0.7
SD15_UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json (non-default keys)
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, attention_head_dim=8,
    cross_attention_dim=768, sample_size=64)


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@functools.lru_cache(maxsize=None)
def reference(name):
    return dict(np.load(os.path.join(FOLDER, f"reference_{name}.npz")))


@functools.lru_cache(maxsize=None)
def controlnet(name):
    return controlnet_weights.read_folder(os.path.join(FOLDER, name))


def inputs(ref, dtype):
    extra = {k: jnp.asarray(ref[k], dtype) for k in ("text_embeds", "time_ids") if k in ref}
    return (jnp.asarray(ref["sample"], dtype), jnp.asarray(ref["t_float"], dtype),
            jnp.asarray(ref["context"], dtype), jnp.asarray(ref["cond"], dtype)), extra


def run(module, params, ref, dtype, **options):
    (sample, t, context, cond), extra = inputs(ref, dtype)

    def apply(p):
        return module.apply({"params": p}, sample, t, context, cond, **options, **extra)

    return jax.jit(apply).lower(params).compile(compiler_options=FAST_COMPILE)(params)


def residual_errors(down, mid, ref, prefix, bits):
    errors = [rel_l2(d, ref[f"{prefix}down{bits}_{k}"]) for k, d in enumerate(down)]
    return max(errors + [rel_l2(mid, ref[f"{prefix}mid{bits}"])])


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_float32_residuals_and_unet_match_diffusers(name):
    ref = reference(name)
    module, params, _ = controlnet(name)
    down, mid = run(module, params, ref, jnp.float32, conditioning_scale=SCALE)
    assert len(down) == module.config.num_skips
    errors = {"vs64": residual_errors(down, mid, ref, "", 64),
              "vs32": residual_errors(down, mid, ref, "", 32)}
    guess_down, guess_mid = run(module, params, ref, jnp.float32, guess_mode=True)
    errors["guess"] = residual_errors(guess_down, guess_mid, ref, "guess_", 64)
    if name == "sd1":  # the U-Net with the residuals added on its skips and mid output
        unet, unet_params, _ = sd_unet_weights.read_folder(os.path.join(FIXTURES, "sd_unet",
                                                                        name))
        (sample, t, context, _), _ = inputs(ref, jnp.float32)
        out = jax.jit(lambda p, d, m: unet.apply(
            {"params": p}, sample, t, context, down_block_additional_residuals=d,
            mid_block_additional_residual=m))(unet_params, down, mid)
        errors["unet"] = rel_l2(out, ref["unet64"])
    print(f"{name} ControlNet float32 rel L2 vs diffusers:", errors)
    assert max(errors.values()) < 1e-4, errors


def test_float64_residuals_match_diffusers_tightly():
    ref = reference("sd1")
    module, params, _ = controlnet("sd1")
    module = module.clone(dtype=jnp.float64, attention_implementation="einsum")
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
        down, mid = run(module, params64, ref, jnp.float64, conditioning_scale=SCALE)
        assert mid.dtype == jnp.float64
        error = residual_errors(down, mid, ref, "", 64)
    print("sd1 ControlNet float64 rel L2 vs diffusers float64:", error)
    assert error < 1e-6


def test_parameter_counts():
    """SD 1.5's ControlNet (lllyasviel/sd-controlnet-*): 361,279,120, as diffusers counts."""
    counts = json.load(open(os.path.join(FOLDER, "param_counts.json")))
    assert counts["sd15"] == 361_279_120
    sd15 = ControlNetConfig.from_unet(UNetConfig.from_diffusers(SD15_UNET))
    assert parameter_count(ControlNetModel.from_config(sd15)) == counts["sd15"]
    sdxl = json.load(open(os.path.join(FIXTURES, "sd_unet", "sdxl", "config.json")))
    assert ControlNetConfig.from_unet(UNetConfig.from_diffusers(sdxl)).unet.time_embedding_dim \
        == 4 * sdxl["block_out_channels"][0]


def test_from_unet_copies_the_encoder_and_starts_at_zero():
    unet, unet_params, _ = sd_unet_weights.read_folder(os.path.join(FIXTURES, "sd_unet", "sd1"))
    module = ControlNetModel.from_config(ControlNetConfig.from_unet(
        unet.config, conditioning_embedding_out_channels=(4, 8)))
    params = from_unet(unet_params, module)
    for name in ("conv_in", "time_embedding", "down_blocks_0", "down_blocks_1", "mid_block"):
        assert jax.tree.all(jax.tree.map(np.array_equal, params[name], unet_params[name]))
    zero = [params["controlnet_mid_block"], params["controlnet_cond_embedding"]["conv_out"]] + [
        params[k] for k in params if k.startswith("controlnet_down_blocks_")]
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(zero))
    assert np.any(params["controlnet_cond_embedding"]["conv_in"]["kernel"])
    # Built from this U-Net's config it fits it; its conv_in is 3x3 whatever the U-Net's is.
    check_fits(module.controlnet_config, unet.config)


def test_save_load_round_trip(tmp_path):
    module, params, raw = controlnet("sdxl")
    out = str(tmp_path / "cn")
    controlnet_weights.save_controlnet(out, module, params)
    again, params_again, raw_again = controlnet_weights.read_folder(out)
    assert again == module
    assert jax.tree.all(jax.tree.map(np.array_equal, params, params_again))
    from safetensors.numpy import load_file

    original = load_file(os.path.join(FOLDER, "sdxl", controlnet_weights.WEIGHTS_FILE))
    exported = load_file(os.path.join(out, controlnet_weights.WEIGHTS_FILE))
    assert sorted(original) == sorted(exported)
    for key in ("conditioning_embedding_out_channels", "block_out_channels",
                "addition_embed_type", "cross_attention_dim", "transformer_layers_per_block"):
        assert raw_again[key] == raw[key], key


def _one_line(fn, match, error=ValueError):
    with pytest.raises(error, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_user_errors_are_one_line(tmp_path):
    ref = reference("sd1")
    module, params, _ = controlnet("sd1")
    (sample, t, context, cond), _ = inputs(ref, jnp.float32)

    def call(c):
        return jax.eval_shape(lambda p: module.apply({"params": p}, sample, t, context, c),
                              params)

    _one_line(lambda: call(cond[:, :8, :12]), r"need \(1, 16, 24, 3\).*resize the conditioning")
    _one_line(lambda: call(cond[..., :1]), "takes NHWC images with 3 channels")
    sd1 = module.controlnet_config
    unet_config = UNetConfig.from_diffusers(json.load(open(os.path.join(
        FIXTURES, "sd_unet", "sd1", "config.json"))))
    other = unet_config.__class__(**{**unet_config.__dict__, "cross_attention_dim": 768})
    _one_line(lambda: check_fits(sd1, other), "cross_attention_dim=32 but the U-Net's is 768")
    wider = unet_config.__class__(**{**unet_config.__dict__, "block_out_channels": (8, 32)})
    _one_line(lambda: check_fits(sd1, wider), r"block_out_channels=\(8, 16\) but the U-Net")
    folder = tmp_path / "cn"
    shutil.copytree(os.path.join(FOLDER, "sd1"), folder)
    config = json.load(open(folder / "config.json"))
    (folder / "config.json").write_text(json.dumps({**config, "mid_block_type": "UNetMidBlock2D"}))
    _one_line(lambda: controlnet_weights.read_folder(str(folder)), "mid_block_type")
    _one_line(lambda: controlnet_weights.read_folder(str(tmp_path / "none")), "does not exist",
              FileNotFoundError)
