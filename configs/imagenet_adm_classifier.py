"""Classifier guidance with ADM's published noisy ImageNet classifiers (Dhariwal & Nichol, 2021).

A pixel-space class-conditional DiT-B on ImageNet at SIZE (patch SIZE / 16: 256 tokens) on ADM's
own DDPM process (1,000 steps; cosine at 64 px, linear above, as guided-diffusion's models), and
in the classifier section guided-diffusion's `EncoderUNetModel` at its published settings
(width 128, attention at 32, 16 and 8 px, 64 channels per head, attention pooling, scale-shift
norms, residual down-sampling; depth 4 at 64 px, 2 above), so that the published files convert:

    python -m diffjax.convert --source=adm_classifier --checkpoint=64x64_classifier.pt \\
        --config=configs/imagenet_adm_classifier.py:64 --workdir=workdirs/in64

into workdirs/in64/classifier/; then, with a diffusion run trained in that workdir (Launch:
`python -m diffjax.main --config=configs/imagenet_adm_classifier.py:64 --workdir=workdirs/in64`,
data as in configs/imagenet64_dit.py; 128-512 px read `imagenet2012` resized),
    python -m diffjax.main --config=configs/imagenet_adm_classifier.py:64 \\
        --workdir=workdirs/in64 --mode=sample --config.sampling.classifier_scale=1.0 \\
        --config.sampling.labels=207,360,387
guides every diffjax sampler by s * grad log p(y | x_t). `--mode=train_classifier` trains the
same network from scratch with ADM's learning rate 3e-4 and batch 256 (the other optimizer keys
are the diffusion model's; ADM's classifiers used weight decay 0.05).
Variants: `:64` (default), `:128`, `:256`, `:512`.

Expected: the classifier's parameter count equals guided-diffusion's create_classifier at each
size (64: 65,438,568; 128: 42,568,040; 256: 54,096,360; 512: 54,448,360) and a converted
classifier gives guided-diffusion's logits (tests/test_adm_classifier.py, on random-weight
fixtures made by guided-diffusion's code). Not measured here (no ImageNet, no published weights,
no accelerator): the published classifiers' accuracy and ADM-G's guided FIDs (made with ADM's
own diffusion U-Net, which diffjax does not port).
"""

from diffjax.config.schema import base_config
from diffjax.models.adm_classifier import ADM_CHANNEL_MULT

SIZES = ("64", "128", "256", "512")


def get_config(arg: str | None = None):
    size = arg or "64"
    if size not in SIZES:
        raise ValueError(f"Unknown variant {size!r} for imagenet_adm_classifier.py; valid: "
                         f"{SIZES}.")
    pixels = int(size)
    config = base_config()
    config.data.dataset = "imagenet_resized/64x64" if pixels == 64 else "imagenet2012"
    config.data.image_size = pixels
    config.data.num_channels = 3
    config.data.num_classes = 1000
    config.data.centered = True
    config.data.random_flip = True

    config.model.name = "dit"
    config.model.conditional = True
    config.model.label_dropout = 0.1
    config.model.dit.size = "B"
    config.model.dit.patch_size = pixels // 16
    config.model.dtype = "bfloat16"

    config.classifier.name = "adm"
    config.classifier.nf = 128
    config.classifier.ch_mult = ADM_CHANNEL_MULT[pixels]
    config.classifier.num_res_blocks = 4 if pixels == 64 else 2
    config.classifier.attn_resolutions = (32, 16, 8)
    config.classifier.num_head_channels = 64
    config.classifier.pool = "attention"
    config.classifier.resblock_updown = True
    config.classifier.use_scale_shift_norm = True
    config.classifier.train_steps = 300_000
    config.classifier.train_batch_size = 256
    config.classifier.lr = 3e-4

    config.sde.name = "ddpm"
    config.sde.num_timesteps = 1000
    config.sde.beta_schedule = "cosine" if pixels == 64 else "linear"

    config.training.batch_size = 256
    config.training.num_train_steps = 400_000
    config.training.checkpoint_every_steps = 10_000
    config.training.sample_every_steps = 20_000
    config.training.ema_decay = 0.9999

    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0

    config.sampling.method = "ddim"
    config.sampling.num_steps = 25

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1024
    config.mesh.fsdp = -1
    config.mesh.data = 1
    return config
