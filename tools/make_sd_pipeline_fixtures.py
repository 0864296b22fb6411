"""Write the end-to-end fixtures of diffjax/pipelines: three tiny random Stable Diffusion folders
and the images diffusers draws from them.

Each pipeline is assembled from component fixtures that other tests already pin, so nothing is
stored twice (tests/sd_pipeline_folders.py assembles the same folders for the tests):

    sd1   StableDiffusionPipeline    text_encoder  text/sd_tiny/text_encoder (CLIP, quick_gelu)
                                     tokenizer     text/sd_tiny/tokenizer (pads with <|endoftext|>)
                                     unet          sd_unet/sd1 (conv proj_in/out)
                                     vae           vae_sd
                                     scheduler     DDIMScheduler, SD 1.5's scheduler_config.json
    sd2   StableDiffusionPipeline    text_encoder  text/sd_tiny/text_encoder_2 (CLIP, gelu)
                                     tokenizer     text/sd_tiny/tokenizer_2 (pads with "!")
                                     unet          sd_unet/sd2 (linear proj_in/out)
                                     vae           vae_sd
                                     scheduler     EulerDiscreteScheduler, v_prediction (SD 2.1's
                                                   settings as diffusers' Euler reads them)
    sdxl  StableDiffusionXLPipeline  text_encoder(_2), tokenizer(_2): both of text/sd_tiny
                                     unet          sd_unet/sdxl (text_time, context 32 + 32)
                                     vae           vae_sd
                                     scheduler     EulerDiscreteScheduler, SDXL base's settings

tests/fixtures/sd_pipelines/<name>/ holds model_index.json (written by diffusers'
`save_pretrained`), scheduler/scheduler_config.json and components.json (component -> fixture
folder). reference.npz holds, per pipeline and case, the prompts, negative prompts, steps,
guidance, the initial latents (NHWC float32), the final latents and the images
(`output_type="np"`) in float32, as users run (each component's float64 agreement is pinned by
its own fixture), and for case 1 diffusers' prompt embeddings.

Regenerate from the repository root with the reference environment (README, "Reference
environments"): `toolsenv/bin/python tools/make_sd_pipeline_fixtures.py`. Tests:
tests/test_pipelines.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import (DDIMScheduler, DiffusionPipeline, EulerDiscreteScheduler,
                       StableDiffusionPipeline, StableDiffusionXLPipeline)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OUT = FIXTURES / "sd_pipelines"
sys.path.insert(0, str(ROOT / "tests"))
from sd_pipeline_folders import assemble  # noqa: E402  (the tests' own assembly)

SD15_SCHEDULER = dict(  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    timestep_spacing="leading", trained_betas=None)
SD21_EULER = dict(  # stabilityai/stable-diffusion-2-1's settings, as EulerDiscreteScheduler
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, prediction_type="v_prediction", timestep_spacing="leading",
    interpolation_type="linear", use_karras_sigmas=False)
SDXL_EULER = dict(  # stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
    interpolation_type="linear", use_karras_sigmas=False, sample_max_value=1.0,
    clip_sample=False, set_alpha_to_one=False, skip_prk_steps=True)

PIPELINES = {
    "sd1": dict(cls=StableDiffusionPipeline, scheduler=(DDIMScheduler, SD15_SCHEDULER),
                components={"text_encoder": "text/sd_tiny/text_encoder",
                            "tokenizer": "text/sd_tiny/tokenizer", "unet": "sd_unet/sd1",
                            "vae": "vae_sd"}),
    "sd2": dict(cls=StableDiffusionPipeline, scheduler=(EulerDiscreteScheduler, SD21_EULER),
                components={"text_encoder": "text/sd_tiny/text_encoder_2",
                            "tokenizer": "text/sd_tiny/tokenizer_2", "unet": "sd_unet/sd2",
                            "vae": "vae_sd"}),
    "sdxl": dict(cls=StableDiffusionXLPipeline, scheduler=(EulerDiscreteScheduler, SDXL_EULER),
                 components={"text_encoder": "text/sd_tiny/text_encoder",
                             "text_encoder_2": "text/sd_tiny/text_encoder_2",
                             "tokenizer": "text/sd_tiny/tokenizer",
                             "tokenizer_2": "text/sd_tiny/tokenizer_2", "unet": "sd_unet/sdxl",
                             "vae": "vae_sd"}),
}

# (prompts, negative prompts, steps, guidance, height, width); latents drawn per case.
CASES = [
    (["a photo of a cat", "an astronaut riding a horse on the moon"], None, 4, 7.5, None, None),
    (["a red cube &amp; a blue sphere", "the digit seven"], ["blurry", ""], 3, 5.0, 16, 24),
    (["one step, no guidance"], None, 1, 1.0, None, None),
]


def write_folders() -> None:
    """model_index.json and scheduler_config.json as diffusers writes them, + components.json."""
    for name, spec in PIPELINES.items():
        folder = OUT / name
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "scheduler").mkdir(parents=True)
        (folder / "components.json").write_text(json.dumps(spec["components"], indent=2) + "\n")
        with tempfile.TemporaryDirectory() as tmp:
            assembled = assemble(name, Path(tmp) / name, OUT, FIXTURES, with_index=False)
            scheduler_cls, scheduler_config = spec["scheduler"]
            # from_config, as diffusers reads a published scheduler_config.json (unknown keys
            # such as SDXL's sample_max_value for Euler are ignored).
            scheduler = scheduler_cls.from_config(scheduler_config)
            components = {k: _load_component(k, assembled) for k in spec["components"]}
            extra = dict(safety_checker=None, feature_extractor=None,
                         requires_safety_checker=False) if name != "sdxl" else {}
            pipe = spec["cls"](**components, scheduler=scheduler, **extra)
            pipe.save_pretrained(Path(tmp) / "saved")
            shutil.copy(Path(tmp) / "saved" / "model_index.json", folder / "model_index.json")
            shutil.copy(Path(tmp) / "saved" / "scheduler" / "scheduler_config.json",
                        folder / "scheduler" / "scheduler_config.json")


def _load_component(kind: str, folder: Path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    path = folder / kind
    if kind.startswith("tokenizer"):
        return CLIPTokenizer.from_pretrained(path)
    if kind == "text_encoder_2":
        return CLIPTextModelWithProjection.from_pretrained(path, dtype=torch.float32)
    if kind == "text_encoder":
        return CLIPTextModel.from_pretrained(path, dtype=torch.float32)
    if kind == "unet":
        return UNet2DConditionModel.from_pretrained(path)
    return AutoencoderKL.from_pretrained(path)


def run_cases(name: str, folder: Path, dtype: torch.dtype, out: dict) -> None:
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe = pipe.to(dtype)
    suffix = "f64" if dtype == torch.float64 else "f32"
    for index, (prompts, negative, steps, guidance, height, width) in enumerate(CASES):
        h = height or pipe.unet.config.sample_size * pipe.vae_scale_factor
        w = width or pipe.unet.config.sample_size * pipe.vae_scale_factor
        shape = (len(prompts), pipe.unet.config.in_channels, h // pipe.vae_scale_factor,
                 w // pipe.vae_scale_factor)
        latents = np.random.default_rng(1000 + index).standard_normal(shape).astype(np.float32)
        kwargs = dict(prompt=prompts, negative_prompt=negative, num_inference_steps=steps,
                      guidance_scale=guidance, height=h, width=w)
        key = f"{name}_{index}"
        with torch.no_grad():
            # SD: (context, negative context); SDXL adds (pooled, negative pooled).
            embeds = pipe.encode_prompt(prompt=prompts, device="cpu", num_images_per_prompt=1,
                                        do_classifier_free_guidance=guidance > 1,
                                        negative_prompt=negative)
            final = pipe(**kwargs, latents=torch.from_numpy(latents).to(dtype),
                         output_type="latent").images
            images = pipe(**kwargs, latents=torch.from_numpy(latents).to(dtype),
                          output_type="np").images
        out[f"{key}_latents"] = latents.transpose(0, 2, 3, 1)
        out[f"{key}_final_latents_{suffix}"] = final.float().numpy().transpose(0, 2, 3, 1)
        out[f"{key}_images_{suffix}"] = np.asarray(images, np.float32)
        if index == 1 and dtype == torch.float32:  # one case localises a conditioning error
            for i, embed in enumerate(embeds):
                if embed is not None:
                    out[f"{key}_embeds{i}_{suffix}"] = embed.float().numpy()
        out[f"{key}_prompts"] = np.array(prompts)
        out[f"{key}_negative"] = np.array(negative if negative is not None else [], dtype=str)
        out[f"{key}_steps"] = np.int64(steps)
        out[f"{key}_guidance"] = np.float64(guidance)
        out[f"{key}_size"] = np.array([h, w])


def main() -> None:
    write_folders()
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PIPELINES:
            folder = assemble(name, Path(tmp) / name, OUT, FIXTURES)
            # float32, as users run: the components' float64 agreement is pinned by their own
            # fixtures (text, sd_unet, vae, schedulers).
            run_cases(name, folder, torch.float32, out)
    np.savez_compressed(OUT / "reference.npz", **out)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({size:,} bytes)")


if __name__ == "__main__":
    main()
