"""Write the reference fixtures of diffjax's Stable Diffusion U-Net (diffjax/models/sd_unet*.py).

Outputs, under tests/fixtures/sd_unet/ (each folder well under 400 KB):

* sd1/, sd2/, sdxl/ : diffusers folders (config.json + diffusion_pytorch_model.safetensors,
  written by `UNet2DConditionModel.save_pretrained`) of three tiny random-weight U-Nets:
  - sd1: the SD 1.x layout scaled down: CrossAttnDownBlock2D + DownBlock2D / UpBlock2D +
    CrossAttnUpBlock2D, two layers per block, 1x1-conv proj_in/out, one attention_head_dim for
    every block (diffusers' naming quirk: it is the number of heads), cross_attention_dim 32;
  - sd2: the SD 2.x layout: linear proj_in/out, a per-block attention_head_dim list,
    upcast_attention, and the rarer knobs: only_cross_attention on the first block,
    center_input_sample, flip_sin_to_cos=False with freq_shift=1, conv_in_kernel 5 /
    conv_out_kernel 1, norm_eps 1e-6, mid_block_scale_factor 1.5, time_embedding_act_fn and
    timestep_post_act "silu";
  - sdxl: the SDXL layout: a DownBlock2D without attention first, transformer_layers_per_block
    (1, 1, 2) (the mid block takes the last), addition_embed_type "text_time" (pooled text
    embeds + sinusoids of the 6 time ids through add_embedding), a time_embedding_dim override.
  EVERY parameter is random, zero-initialised ones included (diffusers starts conv_out and
  others at zero in places): weights N(0, 1/fan_in), biases N(0, 0.1^2), GroupNorm/LayerNorm
  weights 1 + N(0, 0.1^2).
* reference_{sd1,sd2,sdxl}.npz: for each variant, NHWC arrays:
  `sample` (batch 2, non-square 16x24 latents), `context` (encoder_hidden_states, 7 tokens),
  `t_float` (float timesteps) and `t_int` (int timesteps), for sdxl `text_embeds` and `time_ids`;
  outputs of diffusers in float64 (`out64_float`, `out64_int`) and float32
  (`out32_float`, `out32_int`); random ControlNet residuals `res_0..res_N` (the shapes of the
  skip connections) and `res_mid`, with outputs `out64_res` / `out32_res` (float timesteps);
  `sample_odd` (13x22 latents, a size the down-sampling does not divide: diffusers then
  up-samples to the skip sizes) with `out64_odd`; and `t_emb`, diffusers' float32 sinusoidal
  time features of t_float. Inputs are float16 values (exact in every dtype), stored as float16;
  float64 outputs are stored as float64 except out64_odd (float32).
* param_counts.json: diffusers' parameter counts at the published U-Net configs (SD 1.5, SD 2.1,
  SDXL base, and SDXL base with nested transformer_layers_per_block), counted on the meta
  device (nothing downloaded, nothing allocated).

Regenerate from the repository root with torch + diffusers (never in diffjax's .venv):

    toolsenv/bin/python tools/make_sd_unet_fixtures.py   # torch 2.14.1, diffusers 0.42.1

Tests: tests/test_sd_unet.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import logging

logging.set_verbosity_error()  # model.to(dtype) warns on every call about modules kept in fp32

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sd_unet"

SD_BLOCKS = dict(
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)

# The published unet/config.json files (their keys that differ from diffusers' defaults).
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
# Not published: SDXL base with per-layer transformer depths (diffusers' "asymmetrical UNet"),
# a structural check of the nested form of transformer_layers_per_block.
PUBLISHED_EXTRA = {
    "sdxl_nested": dict(
        PUBLISHED["sdxl"], transformer_layers_per_block=[[1, 1], [2, 3], [10, 4]],
        reverse_transformer_layers_per_block=[[4, 10, 10], [2, 3, 2], [1, 1, 1]]),
}
EXPECTED_COUNTS = {"sd15": 859_520_964, "sdxl": 2_567_463_684}  # /work/shared/REFERENCE.md

# Sized to fit the tiny text encoders of tests/fixtures/text/sd_tiny (32 wide; the second one
# projects to 24), so the pipeline fixtures (tools/make_sd_pipeline_fixtures.py) reuse these.
TINY = dict(norm_num_groups=4, cross_attention_dim=32, sample_size=16)
VARIANTS = {
    "sd1": dict(
        TINY, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], block_out_channels=[8, 16],
        layers_per_block=2, attention_head_dim=2),
    "sd2": dict(
        TINY, down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], block_out_channels=[8, 16],
        layers_per_block=1, attention_head_dim=[2, 4], use_linear_projection=True,
        upcast_attention=True, only_cross_attention=[True, False], center_input_sample=True,
        flip_sin_to_cos=False, freq_shift=1, conv_in_kernel=5, conv_out_kernel=1, norm_eps=1e-6,
        mid_block_scale_factor=1.5, time_embedding_act_fn="silu", timestep_post_act="silu"),
    "sdxl": dict(
        TINY, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        block_out_channels=[8, 12, 12], layers_per_block=1, attention_head_dim=[1, 2, 3],
        transformer_layers_per_block=[1, 1, 2], use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=4, cross_attention_dim=64,
        projection_class_embeddings_input_dim=24 + 6 * 4, time_embedding_dim=24),
}
TEXT_EMBED_DIM = 24  # sdxl: pooled text embeds; the 6 time ids make up the rest of the 48


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random, zero-initialised ones and norm affine parameters included."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if param.ndim >= 2:
                param.copy_(noise / np.sqrt(int(np.prod(param.shape[1:]))))
            elif "norm" in name.split(".")[-2] and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().permute(0, 2, 3, 1).numpy()


def nchw(array: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).to(dtype)


def skip_shapes(model, sample, t, context, added) -> list[tuple[int, ...]]:
    """Shapes (NCHW) of the down path's skip connections, as diffusers collects them."""
    shapes = []
    hooks = [model.conv_in.register_forward_hook(lambda m, i, o: shapes.append(o.shape))]
    for block in model.down_blocks:
        hooks.append(block.register_forward_hook(
            lambda m, i, o: shapes.extend(r.shape for r in o[1])))
    with torch.no_grad():
        model(sample, t, context, added_cond_kwargs=added)
    for hook in hooks:
        hook.remove()
    return [tuple(s) for s in shapes]


def write_variant(name: str, config: dict, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    model = UNet2DConditionModel(**config).double().eval()
    randomise(model, generator)
    folder = FIXTURES / name
    shutil.rmtree(folder, ignore_errors=True)
    # float32 on disk, as published U-Nets; the references use the stored values.
    model.float().save_pretrained(folder, safe_serialization=True)
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(json.loads(config_path.read_text()), indent=2,
                                      sort_keys=True) + "\n")

    rng = np.random.default_rng(seed)

    def normal(*shape):  # float16 values: stored small, and exact in every dtype that reads them
        return rng.standard_normal(shape).astype(np.float16).astype(np.float64)

    batch, height, width = 2, 16, 24
    arrays = {
        "sample": normal(batch, height, width, 4),
        "context": normal(batch, 7, config["cross_attention_dim"]),
        "t_float": np.array([999.5, 17.25]),
        "t_int": np.array([981, 3], np.int64),
        "sample_odd": normal(batch, 13, 22, 4),
    }
    sdxl = config.get("addition_embed_type") == "text_time"
    if sdxl:
        arrays["text_embeds"] = normal(batch, TEXT_EMBED_DIM)
        arrays["time_ids"] = np.array([[1024, 768, 0, 16, 1024, 1024],
                                       [512, 640, 32, 0, 576, 704]], np.float64)

    def run(dtype, sample, t, residuals=None):
        model.to(dtype)
        added = ({"text_embeds": torch.from_numpy(arrays["text_embeds"]).to(dtype),
                  "time_ids": torch.from_numpy(arrays["time_ids"]).to(dtype)} if sdxl else None)
        kwargs = {}
        if residuals is not None:
            kwargs = dict(down_block_additional_residuals=tuple(nchw(r, dtype)
                                                                for r in residuals[:-1]),
                          mid_block_additional_residual=nchw(residuals[-1], dtype))
        with torch.no_grad():
            out = model(nchw(sample, dtype), torch.from_numpy(t),
                        torch.from_numpy(arrays["context"]).to(dtype), added_cond_kwargs=added,
                        **kwargs).sample
        return nhwc(out)

    for dtype, bits in ((torch.float64, 64), (torch.float32, 32)):
        arrays[f"out{bits}_float"] = run(dtype, arrays["sample"], arrays["t_float"])
        arrays[f"out{bits}_int"] = run(dtype, arrays["sample"], arrays["t_int"])
    model.double()
    added = ({"text_embeds": torch.from_numpy(arrays["text_embeds"]),
              "time_ids": torch.from_numpy(arrays["time_ids"])} if sdxl else None)
    shapes = skip_shapes(model, nchw(arrays["sample"], torch.float64),
                         torch.from_numpy(arrays["t_float"]),
                         torch.from_numpy(arrays["context"]), added)
    mid_shape = (batch, config["block_out_channels"][-1],
                 *shapes[-1][2:])  # the mid block keeps the last skip's size
    residuals = [normal(s[0], s[2], s[3], s[1]) for s in shapes + [mid_shape]]
    for k, r in enumerate(residuals[:-1]):
        arrays[f"res_{k}"] = r
    arrays["res_mid"] = residuals[-1]
    for dtype, bits in ((torch.float64, 64), (torch.float32, 32)):
        arrays[f"out{bits}_res"] = run(dtype, arrays["sample"], arrays["t_float"], residuals)
    arrays["out64_odd"] = run(torch.float64, arrays["sample_odd"], arrays["t_float"])
    model.double()
    arrays["t_emb"] = model.time_proj(torch.from_numpy(arrays["t_float"])).numpy()

    count = sum(p.numel() for p in model.parameters())
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"{name}: {count} parameters, folder {size} bytes, {len(shapes)} skips")
    np.savez_compressed(FIXTURES / f"reference_{name}.npz",
                        **{key: stored_dtype(key, np.asarray(value))
                           for key, value in arrays.items()})


def stored_dtype(key: str, value: np.ndarray) -> np.ndarray:
    """float64 only where it carries information: the float64 outputs on the main inputs (the
    odd-size one, checked at float32 precision, and the float16-valued inputs are stored
    smaller)."""
    if value.dtype != np.float64 or key in ("out64_float", "out64_int", "out64_res", "t_float",
                                                 "time_ids"):
        return value
    if key.startswith(("out", "t_emb")):
        return value.astype(np.float32)
    return value.astype(np.float16)


def published_counts() -> dict[str, int]:
    counts = {}
    for name, config in {**PUBLISHED, **PUBLISHED_EXTRA}.items():
        with torch.device("meta"):
            model = UNet2DConditionModel(**config)
        counts[name] = sum(p.numel() for p in model.parameters())
        print(f"{name}: {counts[name]:,} parameters")
    for name, expected in EXPECTED_COUNTS.items():
        assert counts[name] == expected, (name, counts[name], expected)
    return counts


def main() -> None:
    torch.manual_seed(0)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for seed, (name, config) in enumerate(VARIANTS.items()):
        write_variant(name, config, seed)
    counts = published_counts()
    (FIXTURES / "param_counts.json").write_text(json.dumps(counts, indent=2) + "\n")
    for path in sorted(FIXTURES.glob("reference_*.npz")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
