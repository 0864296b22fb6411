"""Pipelines: a diffusers folder as one call from prompts to images, no torch.

    pipe = diffjax.pipelines.load_pipeline("/data/sd15")           # or an SDXL folder
    images = pipe(["a photo of a cat"], num_inference_steps=50, guidance_scale=7.5)

Files: folder.py (model_index.json: which pipeline, which components), prompts.py (prompts to
the U-Net's conditioning, SD and SDXL), schedulers.py (a diffusers scheduler_config.json — DDIM,
PNDM, Euler, DPM-Solver++ — as a diffjax sampler on the discrete DDPM process, step for step
diffusers' latents), stable_diffusion.py (the pipeline: text encoders, the scheduler's loop with
classifier-free guidance, the VAE decoder, one jitted program), adapters.py (what LoRA files and
a ControlNet add: `pipe.load_lora` / `fuse_lora`, `load_pipeline(folder, controlnet=...)`).
Imports: this is a workflow-layer package: it may import experiment and everything below it
(sampling as a sibling workflow, diffusion, models, text, latents, storage, config, runtime),
never training, evaluation or the modes; nothing below the workflows imports it.
"""

from diffjax.pipelines.folder import PIPELINE_CLASSES, read_pipeline_folder
from diffjax.pipelines.stable_diffusion import StableDiffusionPipeline, load_pipeline

__all__ = ["PIPELINE_CLASSES", "StableDiffusionPipeline", "load_pipeline",
           "read_pipeline_folder"]
