"""Stable Diffusion 1.5, 2.1 and XL from a diffusers folder, with their published settings.

Launch (a diffusers folder, downloaded once on a machine with internet; no torch needed here):
    huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir=/data/sd15 \
        --exclude '*.bin' '*.ckpt' '*non_ema*' 'safety_checker/*'
    python -m diffjax.main --config=configs/sd.py --workdir=runs/sd15 --mode=sample \
        --config.pipeline.folder=/data/sd15 \
        --config.sampling.prompts="a photo of an astronaut riding a horse on mars|a red bicycle"
writes samples/ (a grid, one PNG per image, an .npz with the images and their prompts).
`--mode=eval --config.eval.prompts=FILE --config.data.dataset=coco_captions` reports FID of the
pipeline's images against the dataset (FID needs the dataset prepared for TFDS).

Variants (`configs/sd.py:ARG`), the settings diffusers' pipelines and the model cards use:
    sd15   (default) 512 x 512, the folder's scheduler (SD 1.5 ships PNDM), 50 steps,
           guidance 7.5 (StableDiffusionPipeline's defaults)
    sd21   768 x 768, v-prediction (stabilityai/stable-diffusion-2-1), 50 steps, guidance 7.5
    sdxl   1024 x 1024, Euler (stabilityai/stable-diffusion-xl-base-1.0), 50 steps, guidance 5.0
           (StableDiffusionXLPipeline's default)
    test   tiny sizes for the tests: 2 steps, 4 images
Expected result: for the same folder, prompts, negative prompts, steps, guidance and initial
latents, the images diffusers draws (tests/test_pipelines.py: relative L2 below 2e-3 on tiny
random SD 1.x, 2.x and XL folders). Without initial latents, diffjax draws its own noise from
`seed` (jax.random), so the images are not diffusers' torch-generator images. No FID of a
published SD model has been measured with diffjax (no accelerator was available).
"""

from diffjax.config.schema import base_config

# variant -> (height = width, steps, guidance)
SETTINGS = {"sd15": (512, 50, 7.5), "sd21": (768, 50, 7.5), "sdxl": (1024, 50, 5.0)}


def get_config(arg: str | None = None):
    parts = [p for p in (arg or "sd15").split(",") if p]
    if any(p not in (*SETTINGS, "test") for p in parts) or sum(p in SETTINGS for p in parts) > 1:
        raise ValueError(f"Unknown or conflicting variant {arg!r} for configs/sd.py; valid: one "
                         f"of {', '.join(SETTINGS)}, optionally with test.")
    tiny = "test" in parts
    variant = next((p for p in parts if p in SETTINGS), "sd15")
    size, steps, guidance = SETTINGS[variant]
    config = base_config()

    config.pipeline.height = 0 if tiny else size
    config.pipeline.width = 0 if tiny else size

    config.sampling.num_steps = 2 if tiny else steps
    config.sampling.guidance_scale = guidance
    config.sampling.num_samples = 4
    config.sampling.batch_size = 4
    config.sampling.write_pngs = True

    config.eval.num_samples = 8 if tiny else 30_000  # COCO-30k, as SD's papers report FID
    config.eval.batch_size = 4 if tiny else 16
    return config
