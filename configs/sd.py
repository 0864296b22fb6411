"""Stable Diffusion 1.5, 2.1 and XL from a diffusers folder, with their published settings; and
fine-tuning SD 1.x / 2.x on captioned images (`finetune`).

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
    finetune[,sd21][,folder=DIR]
           fine-tune the folder's U-Net on captioned images, with diffusers' train_text_to_image
           recipe (README's SD 1.x example: 512 px, center crop + flips, batch 4, AdamW lr 1e-5
           weight decay 0.01, constant lr, grad-norm 1, EMA 0.9999 with diffusers' EMA warm-up,
           gradient checkpointing = model.remat, mixed precision = bfloat16 compute, 15,000
           steps), the text encoder and VAE frozen (their outputs cached by encode_latents);
           sd21: 768 px, v-prediction. `folder=DIR` sets model.pretrained, data.text_encoder_folder
           and autoencoder.pretrained at once:
        python -m diffjax.main --config=configs/sd.py:finetune,folder=/data/sd15 \
            --workdir=runs/pokemon --mode=encode_latents --config.data.image_folder=/data/pokemon
        python -m diffjax.main --config=configs/sd.py:finetune,folder=/data/sd15 \
            --workdir=runs/pokemon --config.data.image_folder=/data/pokemon
        python -m diffjax.main --config=configs/sd.py:finetune,folder=/data/sd15 \
            --workdir=runs/pokemon --mode=export
           (encode, train, export as a diffusers folder; data.image_folder: images +
           metadata.jsonl with file_name and text, as diffusers' ImageFolder datasets). Options: --config.training.min_snr_gamma=5 (Min-SNR weighting),
           --config.training.noise_offset=0.05 (offset noise). Expected result: the loss of
           diffusers' train_text_to_image step for step on the same latents, noise and steps
           (tests/test_sd_training.py pins the loss, min-SNR and v-prediction against diffusers;
           tools/check_sd_export.py shows diffusers loading the export with equal outputs). No
           fine-tune of a published SD checkpoint has been run with diffjax (no accelerator).
Expected result: for the same folder, prompts, negative prompts, steps, guidance and initial
latents, the images diffusers draws (tests/test_pipelines.py: relative L2 below 2e-3 on tiny
random SD 1.x, 2.x and XL folders). Without initial latents, diffjax draws its own noise from
`seed` (jax.random), so the images are not diffusers' torch-generator images. No FID of a
published SD model has been measured with diffjax (no accelerator was available).
"""

from diffjax.config.schema import base_config

# variant -> (height = width, steps, guidance)
SETTINGS = {"sd15": (512, 50, 7.5), "sd21": (768, 50, 7.5), "sdxl": (1024, 50, 5.0)}


def _finetune(config, variant: str, tiny: bool, folder: str) -> None:
    """diffusers' examples/text_to_image/train_text_to_image.py recipe on the folder's U-Net."""
    size = 16 if tiny else SETTINGS[variant][0]
    config.data.image_folder = ""  # images + metadata.jsonl (file_name, text)
    config.data.image_size = size
    config.data.num_channels = 3
    config.data.num_classes = 1
    config.data.random_flip = False  # the flips are encoded views (--random_flip)
    config.data.latent_dir = "latents"  # inside the workdir
    config.data.latent_views = 2  # each image and its mirror image
    config.data.text_encoder = "clip"
    config.data.text_encoder_folder = folder

    config.model.name = "sd_unet"
    config.model.pretrained = folder
    config.model.parameterization = "v" if variant == "sd21" else "eps"
    config.model.dtype = "float32" if tiny else "bfloat16"  # --mixed_precision
    config.model.remat = not tiny  # --gradient_checkpointing

    config.autoencoder.pretrained = folder
    config.autoencoder.batch_size = 8

    config.sde.name = "ddpm"
    config.sde.num_timesteps = 1000
    config.sde.beta_schedule = "scaled_linear"
    config.sde.precision = "float32"  # diffusers' table, bit for bit

    config.training.batch_size = 2 if tiny else 4  # 1 x 4 gradient-accumulation steps
    config.training.num_train_steps = 4 if tiny else 15_000
    config.training.log_every_steps = 1 if tiny else 50
    config.training.checkpoint_every_steps = 2 if tiny else 1000
    config.training.sample_every_steps = 1_000_000 if tiny else 1000
    config.training.eval_every_steps = 0
    config.training.num_sample_images = 2 if tiny else 4
    config.training.async_checkpointing = not tiny
    config.training.ema_decay = 0.9999  # EMAModel(decay=0.9999), (1 + n) / (10 + n) warm-up
    config.training.ema_warmup = True
    config.training.reduce_mean = True  # F.mse_loss(..., reduction="mean")
    config.training.caption_dropout = 0.0  # --proportion_empty_prompts defaults to 0
    config.training.min_snr_gamma = 0.0  # --snr_gamma (5.0 recommended)
    config.training.noise_offset = 0.0  # --noise_offset

    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-5
    config.optim.weight_decay = 1e-2
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 1.0

    config.sampling.method = "ddim"
    config.sampling.num_steps = 2 if tiny else 50
    config.sampling.guidance_scale = 7.5
    config.sampling.num_samples = 2 if tiny else 4
    config.sampling.batch_size = 2 if tiny else 4


def get_config(arg: str | None = None):
    parts = [p for p in (arg or "sd15").split(",") if p]
    folder = next((p.split("=", 1)[1] for p in parts if p.startswith("folder=")), "")
    parts = [p for p in parts if not p.startswith("folder=")]
    finetune = "finetune" in parts
    if any(p not in (*SETTINGS, "test", "finetune") for p in parts) or \
            sum(p in SETTINGS for p in parts) > 1 or (finetune and "sdxl" in parts) or \
            (folder and not finetune):
        raise ValueError(f"Unknown or conflicting variant {arg!r} for configs/sd.py; valid: one "
                         f"of {', '.join(SETTINGS)}, optionally with test; or finetune[,sd21]"
                         f"[,test][,folder=DIR] (SDXL is not fine-tuned).")
    tiny = "test" in parts
    variant = next((p for p in parts if p in SETTINGS), "sd15")
    size, steps, guidance = SETTINGS[variant]
    config = base_config()
    if finetune:
        _finetune(config, variant, tiny, folder)
        return config

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

