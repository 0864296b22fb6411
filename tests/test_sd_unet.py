"""diffjax's Stable Diffusion U-Net against diffusers' UNet2DConditionModel, its folders and sizes.

The reference is tests/fixtures/sd_unet/ (tools/make_sd_unet_fixtures.py): three tiny
random-weight diffusers U-Nets (SD 1.x, SD 2.x and SDXL layouts) and their outputs computed by
diffusers 0.42.1 in float64 and float32, on float and int timesteps, with and without ControlNet
residuals, and on latents whose size the down path does not divide. Each variant compiles once
per dtype: the three cases ride in one batch (zero residuals leave a skip unchanged exactly).
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
from folder_edits import broken_copy, one_line_error
from safetensors.numpy import load_file, save_file

from diffjax.models import sd_unet_weights
from diffjax.models.sd_unet import UNet2DConditionModel, logical_axes, parameter_count
from diffjax.models.sd_unet_blocks import timestep_features
from diffjax.models.sd_unet_config import UNetConfig
from diffjax.models.sd_unet_layers import nearest_indices

FIXTURES = os.path.join(REPO, "tests", "fixtures", "sd_unet")
VARIANTS = ("sd1", "sd2", "sdxl")
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

SD_BLOCKS = dict(down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
# The published unet/config.json files (the keys that differ from diffusers' defaults).
PUBLISHED = {
    "sd15": dict(  # runwayml/stable-diffusion-v1-5
        **SD_BLOCKS, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
        attention_head_dim=8, cross_attention_dim=768, sample_size=64),
    "sd21": dict(  # stabilityai/stable-diffusion-2-1
        **SD_BLOCKS, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
        attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, sample_size=96,
        use_linear_projection=True, upcast_attention=True),
    "sdxl": dict(  # stabilityai/stable-diffusion-xl-base-1.0
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        block_out_channels=[320, 640, 1280], layers_per_block=2, attention_head_dim=[5, 10, 20],
        cross_attention_dim=2048, transformer_layers_per_block=[1, 2, 10],
        use_linear_projection=True, upcast_attention=None, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
        sample_size=128),
}
# diffusers' counts on the meta device (tools/make_sd_unet_fixtures.py; SD 1.5 and SDXL are also
# in /work/shared/REFERENCE.md).
PUBLISHED_COUNTS = {"sd15": 859_520_964, "sd21": 865_910_724, "sdxl": 2_567_463_684}


def reference(name):
    return dict(np.load(os.path.join(FIXTURES, f"reference_{name}.npz")))


def folder(name):
    return os.path.join(FIXTURES, name)


@functools.lru_cache(maxsize=None)
def unet(name):
    """(module, float32 params, config.json) of a fixture folder, read once."""
    return sd_unet_weights.read_folder(folder(name))


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def batched_inputs(ref, dtype):
    """One batch of three cases: float timesteps, int timesteps, float timesteps + residuals."""
    three = lambda a: jnp.asarray(np.concatenate([a] * 3), dtype)  # noqa: E731
    timesteps = np.concatenate([ref["t_float"], ref["t_int"], ref["t_float"]])
    names = sorted((k for k in ref if k.startswith("res_") and k != "res_mid"),
                   key=lambda k: int(k[4:]))
    residual = lambda a: jnp.asarray(np.concatenate([0 * a, 0 * a, a]), dtype)  # noqa: E731
    extra = {}
    if "text_embeds" in ref:
        extra = dict(text_embeds=three(ref["text_embeds"]), time_ids=three(ref["time_ids"]))
    return (three(ref["sample"]), jnp.asarray(timesteps, dtype), three(ref["context"]),
            dict(extra, down_block_additional_residuals=tuple(residual(ref[k]) for k in names),
                 mid_block_additional_residual=residual(ref["res_mid"])))


def forward(module, params, sample, timesteps, context, kwargs):
    def run(p, x, t, c, kw):
        return module.apply({"params": p}, x, t, c, **kw)

    args = (params, sample, timesteps, context, kwargs)
    return jax.jit(run).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def split_cases(out, ref):
    batch = ref["sample"].shape[0]
    return {case: np.asarray(out[k * batch:(k + 1) * batch])
            for k, case in enumerate(("float", "int", "res"))}


@pytest.mark.parametrize("name", VARIANTS)
def test_float32_matches_diffusers(name):
    ref = reference(name)
    module, params, _ = unet(name)
    *inputs, kwargs = batched_inputs(ref, jnp.float32)
    cases = split_cases(forward(module, params, *inputs, kwargs), ref)
    errors = {case: (rel_l2(out, ref[f"out64_{case}"]), rel_l2(out, ref[f"out32_{case}"]))
              for case, out in cases.items()}
    print(f"{name} float32 rel L2 vs diffusers (float64, float32):", errors)
    for case, (vs64, vs32) in errors.items():
        assert vs64 < 1e-4 and vs32 < 1e-4, (case, vs64, vs32)
    assert rel_l2(cases["res"], cases["float"]) > 1e-2  # the residuals did something


@pytest.mark.parametrize("name", VARIANTS)
def test_float64_matches_diffusers_tightly(name):
    """float64 with the written-out attention (jax.nn.dot_product_attention rounds its softmax to
    float32). What remains is diffusers' float32 sinusoids: torch's float32 sin/cos/exp differ
    from XLA's by an ulp, at timesteps near 1000 (and SDXL's time ids)."""
    ref = reference(name)
    module, params, _ = unet(name)
    module = module.clone(dtype=jnp.float64, attention_implementation="einsum")
    params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
    with jax.enable_x64(True):
        *inputs, kwargs = batched_inputs(ref, jnp.float64)
        out = forward(module, params, *inputs, kwargs)
        assert out.dtype == jnp.float64
    errors = {case: rel_l2(o, ref[f"out64_{case}"]) for case, o in split_cases(out, ref).items()}
    print(f"{name} float64 rel L2 vs diffusers float64:", errors)
    assert max(errors.values()) < 1e-7, errors
    if name != "sdxl":  # without time ids, integer timesteps leave no float32 rounding at all
        assert errors["int"] < 1e-12, errors


def test_latents_the_down_path_does_not_divide():
    """13x22 latents: diffusers up-samples to each skip's size (7x11 -> 13x22 and 4x6 -> 7x11)."""
    ref = reference("sdxl")
    module, params, _ = unet("sdxl")
    kwargs = dict(text_embeds=ref["text_embeds"].astype(np.float32),
                  time_ids=ref["time_ids"].astype(np.float32))
    out = forward(module, params, ref["sample_odd"].astype(np.float32),
                  ref["t_float"].astype(np.float32), ref["context"].astype(np.float32), kwargs)
    assert out.shape == ref["out64_odd"].shape == (2, 13, 22, 4)
    error = rel_l2(out, ref["out64_odd"])
    print("sdxl odd-size float32 rel L2:", error)
    assert error < 1e-4


def test_bfloat16_remat_forward():
    """bf16 compute (float32 params) with rematerialised blocks runs and stays close."""
    ref = reference("sd1")
    module, params, _ = unet("sd1")
    module = module.clone(dtype=jnp.bfloat16, remat=True, attention_implementation="xla")
    assert {np.asarray(p).dtype for p in jax.tree.leaves(params)} == {np.dtype(np.float32)}
    sample = ref["sample"].astype(np.float32)
    out = forward(module, params, sample, ref["t_int"], ref["context"].astype(np.float32), {})
    assert out.dtype == jnp.float32  # the sample's dtype
    error = rel_l2(out, ref["out64_int"])
    print("sd1 bfloat16 rel L2:", error)
    assert np.all(np.isfinite(np.asarray(out))) and error < 5e-2


def test_timestep_features_are_diffusers():
    """diffusers' float32 sinusoids; integer timesteps take the same path as their floats."""
    for name in VARIANTS:
        ref = reference(name)
        config = UNetConfig.from_diffusers(sd_unet_weights.read_config(folder(name)))
        features = timestep_features(ref["t_float"], config.block_out_channels[0],
                                     config.flip_sin_to_cos, config.freq_shift)
        # an ulp here and there: torch's float32 sin/cos are not XLA's
        np.testing.assert_allclose(features, ref["t_emb"], atol=2e-7, rtol=0)
        ints = timestep_features(ref["t_int"], 8, True, 0)
        np.testing.assert_array_equal(ints, timestep_features(ref["t_int"].astype(float), 8,
                                                              True, 0))
    # torch's nearest resize to a size: floor(i * in / out) in float32.
    np.testing.assert_array_equal(nearest_indices(4, 7), [0, 0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(nearest_indices(3, 6), [0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_at_published_configs(name):
    module = UNet2DConditionModel(UNetConfig.from_diffusers(PUBLISHED[name]))
    assert parameter_count(module) == PUBLISHED_COUNTS[name]


def test_config_only_sd15_folder_is_the_published_model():
    """benchmarks/tpu_compile.py plans SD 1.5 from config.json files alone (no weights): its
    folder must hold the published U-Net, and the text states' shape must come without a
    vocabulary."""
    from diffjax.text import output_shapes

    folder = os.path.join(REPO, "benchmarks", "published_configs", "sd15")
    with open(os.path.join(folder, "unet", "config.json")) as f:
        parsed = UNetConfig.from_diffusers(json.load(f))
    assert parsed == UNetConfig.from_diffusers(PUBLISHED["sd15"])
    assert parameter_count(UNet2DConditionModel(parsed)) == PUBLISHED_COUNTS["sd15"]
    assert output_shapes("clip", folder) == (77, 768, 768)


def test_nested_transformer_depths_count_like_diffusers():
    """SDXL with per-layer transformer depths (diffusers' asymmetric U-Net), diffusers' count."""
    counts = json.load(open(os.path.join(FIXTURES, "param_counts.json")))
    assert {k: counts[k] for k in PUBLISHED_COUNTS} == PUBLISHED_COUNTS
    config = dict(PUBLISHED["sdxl"], transformer_layers_per_block=[[1, 1], [2, 3], [10, 4]],
                  reverse_transformer_layers_per_block=[[4, 10, 10], [2, 3, 2], [1, 1, 1]])
    parsed = UNetConfig.from_diffusers(config)
    assert parsed.down_depths == ((1, 1), (2, 3), (10, 4)) and parsed.mid_depth == 10
    assert parameter_count(UNet2DConditionModel(parsed)) == counts["sdxl_nested"]
    assert UNetConfig.from_diffusers(parsed.to_diffusers()) == parsed


def test_config_quirks_follow_diffusers():
    sd21 = UNetConfig.from_diffusers(PUBLISHED["sd21"])
    assert sd21.heads == (5, 10, 20, 20) and sd21.up_heads == (20, 20, 10, 5)  # head counts
    sdxl = UNetConfig.from_diffusers(PUBLISHED["sdxl"])
    assert sdxl.down_depths == ((1, 1), (2, 2), (10, 10)) and sdxl.mid_depth == 10
    assert sdxl.up_depths == ((10, 10, 10), (2, 2, 2), (1, 1, 1))
    assert not sdxl.upcast_attention and sdxl.time_embedding_dim == 1280
    for config in (sd21, sdxl):
        assert UNetConfig.from_diffusers(config.to_diffusers()) == config


def test_parameters_carry_logical_axes():
    module, params, _ = unet("sdxl")
    specs = jax.tree.leaves(logical_axes(module),
                            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert len(specs) == len(jax.tree.leaves(params))
    names = {axis for spec in specs for axis in spec if axis}
    assert {"conv_in", "conv_out", "embed", "heads", "mlp", "norm", "cond"} <= names


# --- folders -----------------------------------------------------------------------------------

def _broken_copy(tmp_path, edit_tensors=None, edit_config=None, name="sd1"):
    return broken_copy(folder(name), tmp_path / "broken", sd_unet_weights.WEIGHTS_FILE, edit_tensors, edit_config)


def test_missing_and_mismatched_weights(tmp_path):
    one_line_error(FileNotFoundError, lambda: sd_unet_weights.read_folder(str(tmp_path / "no")),
                    "does not exist.*huggingface-cli download")
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(os.path.join(folder("sd1"), "config.json"), only_config)
    one_line_error(FileNotFoundError, lambda: sd_unet_weights.read_folder(str(only_config)),
                    "diffusion_pytorch_model.safetensors is missing")

    def drop(tensors):
        del tensors["down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"]

    one_line_error(ValueError, lambda: sd_unet_weights.read_folder(_broken_copy(tmp_path, drop)),
                    r"'down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight' "
                    r"\(8, 32\) is missing")

    def reshape(tensors):
        tensors["conv_in.weight"] = np.zeros((8, 4, 5, 5), np.float32)

    one_line_error(ValueError,
                    lambda: sd_unet_weights.read_folder(_broken_copy(tmp_path, reshape)),
                    r"'conv_in.weight' has shape \(8, 4, 5, 5\) but config.json implies "
                    r"\(8, 4, 3, 3\)")

    def extra(tensors):
        tensors["class_embedding.weight"] = np.zeros((10, 32), np.float32)

    one_line_error(ValueError, lambda: sd_unet_weights.read_folder(_broken_copy(tmp_path, extra)),
                    "'class_embedding.weight' .* has no place in the network")

    def linear(config):  # SD 2 folder read as SD 1: proj_in is then a 1x1 conv
        config["use_linear_projection"] = True

    one_line_error(ValueError,
                    lambda: sd_unet_weights.read_folder(_broken_copy(tmp_path, edit_config=linear)),
                    r"proj_in.weight' has shape \(8, 8, 1, 1\) but config.json implies \(8, 8\)")


@pytest.mark.parametrize("key, value, match", [
    ("class_embed_type", "timestep", "class_embed_type='timestep' is not supported"),
    ("encoder_hid_dim", 32, "encoder_hid_dim=32 is not supported"),
    ("dual_cross_attention", True, "dual_cross_attention=True is not supported"),
    ("num_attention_heads", 8, "num_attention_heads=8 is not supported"),
    ("addition_embed_type", "text", "addition_embed_type='text' is not supported"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "mid_block_type=.* is not supported"),
    ("down_block_types", ["AttnDownBlock2D", "DownBlock2D"], "contains 'AttnDownBlock2D'"),
    ("time_cond_proj_dim", 256, "time_cond_proj_dim=256 is not supported"),
])
def test_unsupported_config_keys_are_named(key, value, match):
    config = sd_unet_weights.read_config(folder("sd1"))
    config[key] = value
    one_line_error(ValueError, lambda: UNetConfig.from_diffusers(config, "unet/config.json"),
                    f"unet/config.json: .*{match}")


def test_call_errors():
    ref = reference("sdxl")
    module, params, _ = unet("sdxl")
    args = (ref["sample"].astype(np.float32), ref["t_float"], ref["context"].astype(np.float32))
    apply = lambda **kw: jax.eval_shape(  # noqa: E731
        lambda p: module.apply({"params": p}, *args, **kw), params)
    one_line_error(ValueError, apply, "pass text_embeds .* and time_ids")
    text = dict(text_embeds=ref["text_embeds"].astype(np.float32), time_ids=ref["time_ids"])
    one_line_error(ValueError, lambda: apply(text_embeds=np.zeros((2, 5), np.float32),
                                              time_ids=ref["time_ids"]),
                    "give 29 features but projection_class_embeddings_input_dim=48")
    one_line_error(ValueError, lambda: apply(**text, mid_block_additional_residual=np.zeros(
        (2, 4, 6, 12), np.float32)), "residuals come together")
    residuals = tuple(ref[f"res_{k}"].astype(np.float32) for k in range(5))
    one_line_error(ValueError, lambda: apply(
        **text, down_block_additional_residuals=residuals,
        mid_block_additional_residual=ref["res_mid"].astype(np.float32)),
        "has 5 tensors but the U-Net has 6 skip connections")
    assert module.config.num_skips == 6


def test_save_load_round_trip_pipeline_root_fp16_and_shards(tmp_path):
    module, params, raw = unet("sd2")
    out = str(tmp_path / "pipeline" / "unet")
    sd_unet_weights.save_diffusers_unet(out, module, params)
    again, params_again, raw_again = sd_unet_weights.read_folder(str(tmp_path / "pipeline"))
    assert again == module
    assert jax.tree.all(jax.tree.map(np.array_equal, params, params_again))
    original = load_file(os.path.join(folder("sd2"), sd_unet_weights.WEIGHTS_FILE))
    exported = load_file(os.path.join(out, sd_unet_weights.WEIGHTS_FILE))
    assert sorted(original) == sorted(exported)
    for name in original:
        np.testing.assert_array_equal(original[name], exported[name])
    for key, value in raw_again.items():  # every key written is diffusers' own value
        assert raw.get(key, value) == value or key == "sample_size", key

    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(os.path.join(out, "config.json"), half)
    save_file({k: v.astype(np.float16) for k, v in exported.items()},
              str(half / "diffusion_pytorch_model.fp16.safetensors"))
    _, params_half, _ = sd_unet_weights.read_folder(str(half))
    assert jax.tree.all(jax.tree.map(
        lambda a, b: np.array_equal(a, b.astype(np.float16).astype(np.float32)), params_half,
        params))

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shutil.copy(os.path.join(out, "config.json"), sharded)
    names = sorted(exported)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": names[::2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: exported[k] for k in keys}, str(sharded / shard))
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    _, params_sharded, _ = sd_unet_weights.read_folder(str(sharded))
    assert jax.tree.all(jax.tree.map(np.array_equal, params, params_sharded))


def test_torch_names():
    name = sd_unet_weights.torch_name
    assert name(("time_embedding", "linear_1", "kernel")) == "time_embedding.linear_1.weight"
    assert name(("down_blocks_1", "attentions_0", "transformer_blocks_2", "attn1", "to_out_0",
                 "bias")) == "down_blocks.1.attentions.0.transformer_blocks.2.attn1.to_out.0.bias"
    assert name(("up_blocks_0", "attentions_1", "transformer_blocks_0", "ff", "net_0", "proj",
                 "kernel")) == "up_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight"
    assert name(("mid_block", "resnets_1", "norm1", "scale")) == "mid_block.resnets.1.norm1.weight"
