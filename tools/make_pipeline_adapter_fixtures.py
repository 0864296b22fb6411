"""Write the end-to-end references of LoRA files and ControlNets in diffjax's pipelines: the
images diffusers' pipelines draw on the tiny random folders with them.

Inputs, all existing fixtures (nothing new is stored but the images):
* the tiny SD 1.x and SDXL folders of tests/sd_pipeline_folders.py (DDIM / Euler);
* the ControlNets tests/fixtures/controlnet/{sd1,sdxl} (`ControlNetModel.from_unet` of those
  folders' U-Nets, every parameter random; tools/make_controlnet_fixtures.py);
* the LoRA files tests/fixtures/lora/{sd1_peft,sd1_kohya,sdxl_kohya}.safetensors (U-Net and
  text encoders, PEFT and kohya-ss layouts, conv LoRA, sgm names; tools/make_lora_fixtures.py).

Output: tests/fixtures/sd_pipelines/adapters.npz with the prompts, the initial latents (NHWC),
the conditioning image (NHWC in [0, 1]) and, in float32 (`output_type="np"`), per case:
  {sd1,sdxl}_base            the folder alone
  {sd1,sdxl}_controlnet      StableDiffusion(XL)ControlNetPipeline.from_pipe(pipe, controlnet),
                             controlnet_conditioning_scale 0.8
  sd1_controlnet_guess       the same in guess mode, scale 1.0
  sd1_peft                   load_lora_weights(sd1_peft) + set_adapters(adapter_weights=[0.8])
  sd1_kohya                  load_lora_weights(sd1_kohya), weight 1
  sd1_both                   both, set_adapters(["peft", "kohya"], [0.8, 0.5])
  sd1_fused                  sd1_peft at weight 1, fuse_lora(lora_scale=0.7), unloaded
  sdxl_kohya                 load_lora_weights(sdxl_kohya), weight 1
Every case: 2 prompts (one negative prompt), 16x16 images, 3 steps, guidance 5.

transformers 5.25 refuses peft < 0.22 for text-encoder adapters (0.21.2 is the newest): the
version check is skipped as in tools/make_lora_fixtures.py.

Regenerate from the repository root (diffusers 0.42.1, peft 0.21.2, torch CPU):

    /work/toolsenv/bin/python tools/make_pipeline_adapter_fixtures.py

Tests: tests/test_pipeline_adapters.py.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import (ControlNetModel, DiffusionPipeline, StableDiffusionControlNetPipeline,
                       StableDiffusionXLControlNetPipeline)
from diffusers.utils import logging
from transformers.integrations import peft as transformers_peft

logging.set_verbosity_error()
transformers_peft.check_peft_version = lambda min_version=None: None

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "sd_pipelines" / "adapters.npz"
LORA = FIXTURES / "lora"
sys.path.insert(0, str(ROOT / "tests"))
from sd_pipeline_folders import assemble  # noqa: E402

PROMPTS = ["a photo of a cat", "the digit seven"]
NEGATIVE = ["blurry", ""]
STEPS, GUIDANCE, CONTROL_SCALE = 3, 5.0, 0.8
SIZE = 16  # pixels; half the folders' default, to keep the stored images small


def inputs(pipe) -> tuple[np.ndarray, np.ndarray]:
    size, pixels = SIZE // pipe.vae_scale_factor, SIZE
    rng = np.random.default_rng(2100)
    latents = rng.standard_normal((len(PROMPTS), size, size, 4)).astype(np.float32)
    # A smooth pattern plus noise, one image for both prompts (diffusers repeats it).
    y, x = np.mgrid[0:pixels, 0:pixels] / pixels
    image = np.stack([np.sin(6 * x), np.cos(5 * y), x * y], -1) * 0.5 + 0.5
    image = np.clip(image + 0.1 * rng.standard_normal(image.shape), 0, 1)
    return latents, image[None].astype(np.float32)


def draw(pipe, latents: np.ndarray, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = pipe(prompt=PROMPTS, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                   guidance_scale=GUIDANCE, output_type="np", height=SIZE, width=SIZE,
                   latents=torch.from_numpy(latents.transpose(0, 3, 1, 2).copy()), **kwargs)
    return np.asarray(out.images, np.float32)


def load(folder: Path):
    return DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)


def main() -> None:
    out: dict[str, np.ndarray] = {"prompts": np.array(PROMPTS), "negative": np.array(NEGATIVE),
                                  "steps": np.int64(STEPS), "guidance": np.float64(GUIDANCE),
                                  "control_scale": np.float64(CONTROL_SCALE)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cls in (("sd1", StableDiffusionControlNetPipeline),
                          ("sdxl", StableDiffusionXLControlNetPipeline)):
            folder = assemble(name, Path(tmp) / name)
            pipe = load(folder)
            latents, image = inputs(pipe)
            out[f"{name}_latents"], out[f"{name}_image"] = latents, image
            out[f"{name}_base"] = draw(pipe, latents)
            controlnet = ControlNetModel.from_pretrained(FIXTURES / "controlnet" / name,
                                                         torch_dtype=torch.float32)
            controlled = cls.from_pipe(pipe, controlnet=controlnet)
            control = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
            out[f"{name}_controlnet"] = draw(controlled, latents, image=control,
                                             controlnet_conditioning_scale=CONTROL_SCALE)
            if name == "sd1":
                out["sd1_controlnet_guess"] = draw(controlled, latents, image=control,
                                                   guess_mode=True)
                for kind, weight in (("peft", 0.8), ("kohya", 1.0)):
                    pipe = load(folder)
                    pipe.load_lora_weights(str(LORA), weight_name=f"sd1_{kind}.safetensors",
                                           adapter_name=kind)
                    pipe.set_adapters([kind], adapter_weights=[weight])
                    out[f"sd1_{kind}"] = draw(pipe, latents)
                pipe = load(folder)
                for kind in ("peft", "kohya"):
                    pipe.load_lora_weights(str(LORA), weight_name=f"sd1_{kind}.safetensors",
                                           adapter_name=kind)
                pipe.set_adapters(["peft", "kohya"], adapter_weights=[0.8, 0.5])
                out["sd1_both"] = draw(pipe, latents)
                pipe = load(folder)
                pipe.load_lora_weights(str(LORA), weight_name="sd1_peft.safetensors",
                                       adapter_name="peft")
                pipe.fuse_lora(lora_scale=0.7, components=["unet", "text_encoder"])
                pipe.unload_lora_weights()  # the fused weights stay
                out["sd1_fused"] = draw(pipe, latents)
            else:
                pipe = load(folder)
                pipe.load_lora_weights(str(LORA), weight_name="sdxl_kohya.safetensors",
                                       adapter_name="kohya")
                out["sdxl_kohya"] = draw(pipe, latents)
    np.savez_compressed(OUT, **out)
    for key, value in out.items():
        if value.dtype == np.float32 and value.ndim == 4 and key.split("_", 1)[1] not in (
                "latents", "image", "base"):
            base = out[key.split("_")[0] + "_base"]
            print(f"{key}: differs from the base by "
                  f"{np.linalg.norm(value - base) / np.linalg.norm(base):.3f} (relative L2)")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
