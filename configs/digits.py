"""Embedded default: a small DDPM++ U-Net on scikit-learn's 8x8 digits (ships with diffjax).

Launch (CPU, about 5 minutes of training on 2 cores):
    python -m diffjax.main --config=configs/digits.py --workdir=workdirs/digits
Variants (`configs/digits.py:ARG`, comma-separated):
    test      tiny model, 6 steps: for tests and smoke runs (seconds)
    sde=ve    VE SDE (data in [0, 1], Fourier noise embedding on log sigma, sigma_max 8)
    sde=subvp sub-VP SDE
    cond      class-conditional with classifier-free guidance; the grid has one row per digit
    dit       a tiny DiT (patch 2) instead of the U-Net
Expected result: per-pixel loss about 0.1 after 2,000 steps; the EMA sample grid shows legible
digits 0-9, and `--mode=eval` reports the FID of 1,000 samples (README has the measured numbers).
"""

from diffjax.config_base import base_config


def get_config(arg: str | None = None):
    options = dict(part.split("=", 1) if "=" in part else (part, "1")
                   for part in (arg or "").split(",") if part)
    sde = options.pop("sde", "vp")
    conditional, dit, tiny = (bool(options.pop(k, None)) for k in ("cond", "dit", "test"))
    if options or sde not in ("vp", "subvp", "ve"):
        raise ValueError(f"Unknown option(s) {sorted(options) or sde!r} for configs/digits.py; "
                         f"valid: test, sde=vp|subvp|ve, cond, dit.")
    config = base_config()

    config.data.dataset = "digits"
    config.data.image_size = 8
    config.data.num_channels = 1
    config.data.num_classes = 10
    config.data.centered = sde != "ve"  # VE models data in [0, 1]

    config.model.name = "dit" if dit else "unet"
    config.model.conditional = conditional
    config.model.dropout = 0.1
    # Sized for 2 CPU cores: XLA:CPU convolutions with few channels are overhead-bound.
    config.model.unet.nf = 8 if tiny else 16
    config.model.unet.ch_mult = (1, 2)
    config.model.unet.num_res_blocks = 1 if tiny else 2
    config.model.unet.attn_resolutions = (4,)
    config.model.dit.patch_size = 2
    config.model.dit.hidden_size = 32 if tiny else 128
    config.model.dit.depth = 2 if tiny else 4
    config.model.dit.num_heads = 2 if tiny else 4
    if sde == "ve":
        config.model.noise_embedding = "fourier"
        config.model.scale_input = True

    config.sde.name = sde
    # Largest pairwise distance between digits in [0, 1] is about 7 (REFERENCE rule of thumb).
    config.sde.sigma_max = 8.0

    config.training.batch_size = 16 if tiny else 128
    config.training.num_train_steps = 6 if tiny else 2000
    config.training.log_every_steps = 2 if tiny else 100
    config.training.checkpoint_every_steps = 3 if tiny else 1000
    config.training.sample_every_steps = 6 if tiny else 1000
    config.training.num_sample_images = 10 if tiny else 100
    config.training.ema_decay = 0.999
    config.training.reduce_mean = True

    config.optim.lr = 2e-3
    config.optim.warmup_steps = 2 if tiny else 200

    config.sampling.method = "euler_maruyama"
    config.sampling.num_steps = 4 if tiny else 100
    config.sampling.eps = 1e-5 if sde == "ve" else 1e-3
    config.sampling.guidance_scale = 1.0 if conditional else 0.0
    config.sampling.num_samples = 8 if tiny else 100
    config.sampling.batch_size = 8 if tiny else 100

    # Inception costs ~0.15-0.3 s per image on 2 CPU cores: 500 samples against the first 500
    # training images keeps the quickstart's FID to a few minutes (use --config.eval.num_samples
    # and reference_split=train for a less biased estimate).
    config.eval.num_samples = 40 if tiny else 500
    config.eval.batch_size = 20 if tiny else 500
    config.eval.reference_split = "train[:500]"
    config.eval.inception_batch_size = 20 if tiny else 32
    return config
