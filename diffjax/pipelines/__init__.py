"""Pipelines: a diffusers folder as one call from prompts to images, no torch.

    pipe = diffjax.pipelines.load_pipeline("/data/sd15")           # or an SDXL folder
    images = pipe(["a photo of a cat"], num_inference_steps=50, guidance_scale=7.5)

Files: folder.py (model_index.json: which pipeline, which components), prompts.py (prompts to
the U-Net's conditioning, SD and SDXL), schedulers.py (diffusers' schedulers from
scheduler_config.json, on diffjax's samplers), stable_diffusion.py (the pipeline: text encoders,
the scheduler's loop with classifier-free guidance, the VAE decoder, one jitted program).
Imports: experiment and everything below it (models, text, latents, diffusion, sampling's
samplers, parallel, storage); never training, evaluation or the modes.
"""

from diffjax.pipelines.folder import PIPELINE_CLASSES, read_pipeline_folder
from diffjax.pipelines.stable_diffusion import StableDiffusionPipeline, load_pipeline

__all__ = ["PIPELINE_CLASSES", "StableDiffusionPipeline", "load_pipeline",
           "read_pipeline_folder"]
