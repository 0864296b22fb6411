"""Write the reference fixtures of diffjax's ControlNet (diffjax/models/controlnet*.py).

Outputs, under tests/fixtures/controlnet/:

* sd1/, sdxl/: diffusers ControlNetModel folders (config.json + diffusion_pytorch_model.
  safetensors, `save_pretrained`) made by `ControlNetModel.from_unet` from the tiny U-Nets of
  tests/fixtures/sd_unet/{sd1,sdxl} (sdxl: its layout without the time_embedding_dim override,
  which diffusers' ControlNetModel cannot have; no U-Net output then), with
  conditioning_embedding_out_channels (4, 8) (a conditioning image twice the latents' size) and
  3 conditioning channels; then EVERY parameter random, the zero convs (controlnet_down_blocks, controlnet_mid_block, the embedding's
  conv_out) included: weights N(0, 1/fan_in), biases N(0, 0.1^2), norms 1 + N(0, 0.1^2).
* reference_{sd1,sdxl}.npz: one example of the U-Net fixture's inputs (the sample cropped to
  1x8x12x4, t = 17.25, context, SDXL's text_embeds / time_ids) and `cond` (1x16x24x3, float16
  values); computed by
  diffusers 0.42.1 in float64: the residuals `down64_0..N`, `mid64` with conditioning_scale
  0.7, the same in guess mode (`guess_down64_*`, `guess_mid64`, scale 1.0), the U-Net's output
  with the residuals added (`unet64`, sd1), and in float32 `down32_*` / `mid32` / `unet32`.
* param_counts.json: ControlNetModel.from_unet(SD 1.5's U-Net config) counted by diffusers on
  the meta device (361,279,120, /work/shared/REFERENCE.md) and SDXL base's.

Regenerate from the repository root (torch + diffusers, never diffjax's .venv):

    /work/toolsenv/bin/python tools/make_controlnet_fixtures.py   # diffusers 0.42.1

Tests: tests/test_controlnet.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.utils import logging

logging.set_verbosity_error()

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from make_sd_unet_fixtures import PUBLISHED, randomise  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "controlnet"
UNETS = REPO / "tests" / "fixtures" / "sd_unet"
EXPECTED = {"sd15": 361_279_120}
SCALE = 0.7


def nchw(array: np.ndarray, dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).to(dtype)


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().permute(0, 2, 3, 1).numpy()


def write_variant(name: str, seed: int) -> None:
    unet = UNet2DConditionModel.from_pretrained(UNETS / name).double().eval()
    with_unet = unet.config.time_embedding_dim is None
    if not with_unet:
        # diffusers' ControlNetModel always has a 4 x c0 time embedding: a U-Net that overrides
        # time_embedding_dim (the sdxl fixture) cannot take its residuals' embedding, so the
        # ControlNet comes from the same layout without the override and only its residuals
        # are references.
        config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
        unet = UNet2DConditionModel(**{**config, "time_embedding_dim": None}).double().eval()
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8))
    controlnet = controlnet.double().eval()
    randomise(controlnet, torch.Generator().manual_seed(100 + seed))
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    controlnet.float().save_pretrained(folder, safe_serialization=True)
    path = folder / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True) + "\n")

    ref = np.load(UNETS / f"reference_{name}.npz")
    # One example, 8x12 latents (a crop of the U-Net fixture's): small float64 references.
    arrays = {k: ref[k][1:] for k in ("t_float", "context") + (
        ("text_embeds", "time_ids") if name == "sdxl" else ())}
    arrays["sample"] = ref["sample"][1:, :8, :12]
    rng = np.random.default_rng(seed)
    batch, height, width, _ = arrays["sample"].shape
    arrays["cond"] = rng.uniform(0, 1, (batch, 2 * height, 2 * width, 3)).astype(np.float16)

    def run(dtype, scale, guess):
        controlnet.to(dtype)
        unet.to(dtype)
        added = None
        if name == "sdxl":
            added = {k: torch.from_numpy(arrays[k].astype(np.float64)).to(dtype)
                     for k in ("text_embeds", "time_ids")}
        sample = nchw(arrays["sample"].astype(np.float64), dtype)
        t = torch.from_numpy(arrays["t_float"].astype(np.float64))
        context = torch.from_numpy(arrays["context"].astype(np.float64)).to(dtype)
        with torch.no_grad():
            down, mid = controlnet(sample, t, context, nchw(arrays["cond"], dtype),
                                   conditioning_scale=scale, guess_mode=guess,
                                   added_cond_kwargs=added, return_dict=False)
            out = unet(sample, t, context, added_cond_kwargs=added,
                       down_block_additional_residuals=down,
                       mid_block_additional_residual=mid).sample if with_unet else None
        return [nhwc(d) for d in down], nhwc(mid), None if out is None else nhwc(out)

    for dtype, bits in ((torch.float64, 64), (torch.float32, 32)):
        down, mid, out = run(dtype, SCALE, False)
        for k, d in enumerate(down):
            arrays[f"down{bits}_{k}"] = d
        arrays[f"mid{bits}"] = mid
        if out is not None:
            arrays[f"unet{bits}"] = out
    down, mid, _ = run(torch.float64, 1.0, True)
    for k, d in enumerate(down):
        arrays[f"guess_down64_{k}"] = d.astype(np.float32)
    arrays["guess_mid64"] = mid.astype(np.float32)
    np.savez_compressed(OUT / f"reference_{name}.npz", **arrays)
    size = sum(p.stat().st_size for p in folder.iterdir())
    count = sum(p.numel() for p in controlnet.parameters())
    print(f"{name}: {count} parameters, folder {size} bytes, {len(down)} down residuals")


def published_counts() -> dict[str, int]:
    counts = {}
    for name in ("sd15", "sdxl"):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**PUBLISHED[name])
            controlnet = ControlNetModel.from_unet(unet, load_weights_from_unet=False)
        counts[name] = sum(p.numel() for p in controlnet.parameters())
        print(f"{name} ControlNet: {counts[name]:,} parameters")
    for name, expected in EXPECTED.items():
        assert counts[name] == expected, (name, counts[name], expected)
    return counts


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("sd1", "sdxl")):
        write_variant(name, seed)
    (OUT / "param_counts.json").write_text(json.dumps(published_counts(), indent=2) + "\n")
    for path in sorted(OUT.glob("*.npz")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
