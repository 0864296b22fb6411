"""Shared starting points for config files, like score_sde's `default_cifar10_configs.py`.

A preset fills the sections a family of configs agrees on; the config file then states what makes
it different (network switches, SDE, sampler), so each file reads as its delta from the paper's
setting.
"""

from __future__ import annotations

import ml_collections

from diffjax.config.schema import base_config


def score_sde_cifar10(*, deep: bool = False) -> ml_collections.ConfigDict:
    """Song et al. (2021), score_sde's `default_cifar10_configs.py` with the NCSNpp trunk its
    CIFAR-10 configs share: data, network, training, optimizer, evaluation."""
    config = base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_classes = 10
    config.data.random_flip = True
    config.data.dequantize = False  # score_sde trains on x / 255 (uniform_dequantization=False)

    config.model.name = "ncsnpp"
    config.model.conditional = False
    config.model.dropout = 0.1
    config.model.fourier_scale = 16.0
    u = config.model.unet
    u.nf = 128
    u.ch_mult = (1, 2, 2, 2)
    u.num_res_blocks = 8 if deep else 4
    u.attn_resolutions = (16,)
    u.resblock_type = "biggan"
    u.resamp_with_conv = True
    u.fir_kernel = (1, 3, 3, 1)
    u.skip_rescale = True
    u.progressive = "none"
    u.progressive_combine = "sum"
    u.init_scale = 0.0
    u.nonlinearity = "swish"
    u.noise_conditional = True

    config.training.batch_size = 128
    config.training.num_train_steps = 950_001 if deep else 1_300_001
    config.training.checkpoint_every_steps = 50_000
    config.training.sample_every_steps = 50_000
    config.training.eps = 1e-5
    config.training.likelihood_weighting = False

    config.optim.optimizer = "adam"
    config.optim.lr = 2e-4
    config.optim.beta1 = 0.9
    config.optim.beta2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.0
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0

    config.sampling.num_steps = 1000  # score_sde's sde.N = model.num_scales
    config.sampling.snr = 0.16
    config.sampling.corrector_steps = 1
    config.sampling.denoise = True  # score_sde's sampling.noise_removal

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    return config


def check_variant(arg: str | None, valid: tuple[str, ...], file: str) -> None:
    if arg not in (None, "", *valid):
        raise ValueError(f"Unknown variant {arg!r} for {file}; valid: {', '.join(valid)}.")


DIT_SIZES = ("S", "B", "L", "XL")


def dit_imagenet256_latents(size: str) -> ml_collections.ConfigDict:
    """DiT's ImageNet-256 recipe (facebookresearch/DiT `train.py`), shared by DiT and SiT: the
    SD-VAE (ft-EMA, scale 0.18215) latents of center-cropped 256 px images and their flips, a
    class-conditional DiT-<size>/2 in float32 with label dropout 0.1, batch 256, AdamW 1e-4
    without weight decay, warm-up or clipping, EMA 0.9999 from the first step, FID-50k with
    guidance 1.5 on the first 3 latent channels against ADM's reference batch."""
    config = base_config()
    config.data.dataset = "imagenet2012"
    config.data.image_size = 256
    config.data.num_channels = 3
    config.data.num_classes = 1000
    config.data.centered = True
    config.data.dequantize = False
    config.data.random_flip = True
    config.data.latent_dir = "latents"  # inside the workdir, written by --mode=encode_latents
    config.data.latent_views = 2  # the image and its horizontal flip (DiT's RandomHorizontalFlip)

    config.model.name = "dit"
    config.model.conditional = True
    config.model.label_dropout = 0.1
    config.model.noise_embedding = "positional"
    config.model.dtype = "float32"  # DiT and SiT train in float32 (TF32); bfloat16 is faster
    config.model.remat = size in ("L", "XL")
    config.model.dit.size = size
    config.model.dit.patch_size = 2
    config.model.dit.pos_embed = "sincos"

    # A diffusers folder of stabilityai/sd-vae-ft-ema (relative: inside the workdir).
    config.autoencoder.pretrained = "sd-vae-ft-ema"
    config.autoencoder.scale = 0.18215
    config.autoencoder.shift = 0.0

    config.training.batch_size = 256
    config.training.num_train_steps = 400_000
    config.training.checkpoint_every_steps = 50_000
    config.training.sample_every_steps = 10_000
    config.training.ema_decay = 0.9999
    config.training.ema_warmup = False
    config.training.reduce_mean = True  # mean_flat

    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-4
    config.optim.weight_decay = 0.0
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0

    config.sampling.num_steps = 250
    config.sampling.guidance_scale = 1.5
    config.sampling.guidance_channels = 3

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    config.eval.reference_stats = "VIRTUAL_imagenet256_labeled.npz"  # ADM's; in the cwd
    config.mesh.fsdp = -1
    config.mesh.data = 1
    return config
