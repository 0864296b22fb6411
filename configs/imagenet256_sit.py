"""SiT on ImageNet 256x256 latents (Ma et al. 2024): willisma/SiT `train.py` with its default
transport (--path-type=Linear --prediction=velocity, no loss weight); `:S`, `:B`, `:L`, `:XL`
(default) are SiT-S/2, B/2, L/2, XL/2: DiT's backbone trained by flow matching.

Expected result: SiT-XL/2 reaches FID-50k 2.06 with guidance 1.5 and SiT's SDE sampler (250
Euler-Maruyama steps, w(t) = sigma(t), last step "Mean"; the default here), 2.15 with its
adaptive ODE sampler (dopri5, rtol 1e-3, atol 1e-6:
--config.sampling.method=ode_adaptive --config.sampling.rtol=1e-3 --config.sampling.atol=1e-6),
after 7M steps; this config trains 400k steps (--config.training.num_train_steps=7000000 for
the paper's). The number is reproduced from SiT's released checkpoint (below), against ADM's
reference batch (VIRTUAL_imagenet256_labeled.npz), as SiT reports it.
Parameters: S/2 32,957,200, B/2 130,500,112, L/2 458,086,416, XL/2 675,111,184 (DiT's count
with learn_sigma=False, fixed sin-cos table included). SiT's own models.py keeps DiT's
learn_sigma=True layer and discards its second half in forward(), so it counts 18,448 more for
XL/2 (675,129,632; S 6,160, B 12,304, L 16,400): weights that never reach the output and get no
gradient; diffjax does not build them.

Launch, in one workdir W (the same latents as configs/imagenet256_dit.py: share them with
--config.data.latent_dir=DIR):
    huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir=$W/sd-vae-ft-ema
    python -m diffjax.main --config=configs/imagenet256_sit.py:XL --workdir=$W \\
        --config.data.data_dir=/data/tfds --mode=encode_latents
    python -m diffjax.main --config=configs/imagenet256_sit.py:XL --workdir=$W \\
        --config.data.data_dir=/data/tfds
    python -m diffjax.main --config=configs/imagenet256_sit.py:XL --workdir=$W --mode=eval
From SiT's released checkpoint (SiT-XL-2-256x256.pt, SiT's download.py), FID 2.06:
    python -m diffjax.convert --source=sit --checkpoint=SiT-XL-2-256x256.pt \\
        --config=configs/imagenet256_sit.py:XL --workdir=$W
    python -m diffjax.main --config=configs/imagenet256_sit.py:XL --workdir=$W --mode=eval
(`--source=sit` reads DiT's file format, keeps the half of the final layer that SiT's forward
uses and negates it: SiT runs time as s = 1 - t and predicts x0 - eps, diffjax's velocity is
eps - x0, and diffjax feeds the network SiT's s; exact.)

Settings (SiT): data, VAE, network, batch 256, AdamW lr 1e-4 (weight decay 0), no warm-up,
no clipping and EMA 0.9999 as DiT (configs/imagenet256_dit.py) but learn_sigma=False; the
linear interpolant x_t = (1 - t) x0 + t eps, t ~ U(0, 1), mean squared velocity error; guidance
1.5 on the first 3 latent channels (SiT's forward_with_cfg, as DiT's).
Where diffjax differs on purpose: as configs/imagenet256_dit.py (latents stored once, a posterior
sample drawn per step in-graph).
"""

from diffjax.config.presets import DIT_SIZES, dit_imagenet256_latents


def get_config(arg: str | None = None):
    size = arg or "XL"
    if size not in DIT_SIZES:
        raise ValueError(f"Unknown variant {size!r} for imagenet256_sit.py; valid: {DIT_SIZES}.")
    config = dit_imagenet256_latents(size)

    config.model.parameterization = "velocity"
    config.model.dit.learn_sigma = False

    config.sde.name = "flow"

    config.training.eps = 0.0  # SiT's train_eps for the linear velocity model: t ~ U(0, 1)
    config.training.time_sampling = "uniform"
    # SiT's mean_flat of the squared velocity error, as DiT's (the preset's reduce_mean).

    # sample_ddp.py's SDE defaults (Euler-Maruyama, w(t) = sigma, last step "Mean" of 0.04).
    config.sampling.method = "sit_sde"
    config.sampling.diffusion_form = "sigma"
    config.sampling.diffusion_norm = 1.0
    config.sampling.last_step = "mean"
    config.sampling.last_step_size = 0.04
    config.sampling.eps = 0.0  # ode_adaptive: integrate to the data, as SiT's ODE
    config.sampling.denoise = False
    config.sampling.solver = "dopri5"
    return config
