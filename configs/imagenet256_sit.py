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

from diffjax.config_base import base_config

SIZES = ("S", "B", "L", "XL")


def get_config(arg: str | None = None):
    size = arg or "XL"
    if size not in SIZES:
        raise ValueError(f"Unknown variant {size!r} for imagenet256_sit.py; valid: {SIZES}.")
    config = base_config()
    config.data.dataset = "imagenet2012"
    config.data.image_size = 256
    config.data.num_channels = 3
    config.data.num_classes = 1000
    config.data.centered = True
    config.data.dequantize = False
    config.data.random_flip = True
    config.data.latent_dir = "latents"  # inside the workdir, written by --mode=encode_latents
    config.data.latent_views = 2

    config.model.name = "dit"
    config.model.parameterization = "velocity"
    config.model.conditional = True
    config.model.label_dropout = 0.1
    config.model.noise_embedding = "positional"
    config.model.dtype = "float32"  # SiT trains in float32 (TF32); bfloat16 is faster
    config.model.remat = size in ("L", "XL")
    config.model.dit.size = size
    config.model.dit.patch_size = 2
    config.model.dit.pos_embed = "sincos"
    config.model.dit.learn_sigma = False

    config.autoencoder.pretrained = "sd-vae-ft-ema"  # diffusers folder; relative: in the workdir
    config.autoencoder.scale = 0.18215
    config.autoencoder.shift = 0.0

    config.sde.name = "flow"

    config.training.batch_size = 256
    config.training.num_train_steps = 400_000
    config.training.checkpoint_every_steps = 50_000
    config.training.sample_every_steps = 10_000
    config.training.ema_decay = 0.9999
    config.training.ema_warmup = False
    config.training.eps = 0.0  # SiT's train_eps for the linear velocity model: t ~ U(0, 1)
    config.training.time_sampling = "uniform"
    config.training.reduce_mean = True  # SiT's mean_flat

    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-4
    config.optim.weight_decay = 0.0
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0

    config.sampling.method = "sit_sde"
    config.sampling.num_steps = 250
    config.sampling.diffusion_form = "sigma"
    config.sampling.diffusion_norm = 1.0
    config.sampling.last_step = "mean"
    config.sampling.last_step_size = 0.04
    config.sampling.eps = 0.0  # ode_adaptive: integrate to the data, as SiT's ODE
    config.sampling.denoise = False
    config.sampling.solver = "dopri5"
    config.sampling.guidance_scale = 1.5
    config.sampling.guidance_channels = 3

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    config.eval.reference_stats = "VIRTUAL_imagenet256_labeled.npz"  # ADM's; in the cwd
    config.mesh.fsdp = -1
    config.mesh.data = 1
    return config
