"""EDM on CIFAR-10 (Karras et al. 2022): NVlabs/edm `train.py --arch=ddpmpp --precond=edm`, the
unconditional model by default, `:cond` for `--cond=1` (the VP-architecture config F of Table 2).

Expected result (EDM, Table 2, config F): FID 1.97 unconditional / 1.79 conditional with the
deterministic Heun sampler, 18 steps (35 NFE), best of three 50k-sample FIDs. The number that
diffjax reproduces is the converted checkpoint's (below): diffjax does not implement EDM's
non-leaking augmentation pipeline (`--augment=0.12`: flips, 90-degree rotations, integer
translation, isotropic and anisotropic scaling, rotation, fractional translation, each fed to the
network as 9 augmentation labels), the step from Table 2's config E to F. Training this config
from scratch is EDM without augmentation (config E, plus the small differences listed below);
no diffjax run has measured its FID.
Network: EDM's SongUNet DDPM++ with its augmentation-label layer (`model.unet.augment_dim=9`,
fed zeros), 55,733,891 parameters (`:cond` 55,735,299), EDM's counts exactly.

Launch (one 8-GPU host; EDM used 8 V100s for ~2 days):
    python -m diffjax.main --config=configs/cifar10_edm.py:cond --workdir=runs/edm_cond \\
        --config.data.data_dir=/data/tfds
    python -m diffjax.main --config=configs/cifar10_edm.py:cond --workdir=runs/edm_cond \\
        --config.data.data_dir=/data/tfds --mode=eval
From EDM's released pickle (docs/published_checkpoints.md):
    python -m diffjax.convert --source=edm --checkpoint=edm-cifar10-32x32-cond-vp.pkl \\
        --config=configs/cifar10_edm.py:cond --workdir=runs/edm_cond_converted
    python -m diffjax.main --config=configs/cifar10_edm.py:cond \\
        --workdir=runs/edm_cond_converted --config.data.data_dir=/data/tfds --mode=eval
(uncond: edm-cifar10-32x32-uncond-vp.pkl and configs/cifar10_edm.py.)
Data: `tfds build cifar10 --file_format=array_record` (README, "Datasets").

Settings (EDM): SongUNet DDPM++: model_channels 128, channel_mult (2, 2, 2), 4 blocks per
resolution, attention at 16x16, dropout 0.13, positional embedding of c_noise = ln(sigma) / 4
(EDM's endpoint=True embedding with its sin/cos flip is score_sde's, which diffjax computes),
[1, 1] resampling; `:cond` adds the 10 class labels to the noise features (EDM's map_label,
no label dropout: EDM trains no unconditional mode). EDM preconditioning (sigma_data 0.5),
ln sigma ~ N(-1.2, 1.2^2), loss weight (sigma^2 + 0.25) / (0.5 sigma)^2; data in [-1, 1], no
dataset flips (EDM's --xflip=False); batch 512, Adam lr 10e-4 (betas 0.9, 0.999, eps 1e-8)
ramped up linearly over 10 Mimg = 19,531 steps, no gradient clipping, EMA half-life 0.5 Mimg,
i.e. training.ema_decay = 0.5 ** (512 / 500,000) = 0.999290 per step, 200 Mimg = 390,625 steps.
Sampler: Heun on the rho = 7 grid, sigma 80 -> 0.002, 18 steps, S_churn 0.

Where diffjax differs on purpose, all affecting training from scratch only (the converted network
computes EDM's function): no augmentation pipeline (above); EMA ramp-up is diffjax's
min(decay, (1 + step) / (10 + step)) instead of EDM's half-life min(0.5 Mimg, 0.05 x images
seen) (they meet after ~20k steps); EDM sums the loss over pixels, diffjax takes 0.5 x the sum
(training.reduce_mean=False), a constant factor that Adam ignores up to its eps; initialisation is
score_sde's (EDM scales its output layers by 1e-5 and attention weights by sqrt(0.2)); GroupNorm
eps 1e-6 (score_sde) instead of EDM's 1e-5; EDM replaces non-finite gradients with zero.
"""

from diffjax.config.presets import check_variant
from diffjax.config.schema import base_config

BATCH = 512


def get_config(arg: str | None = None):
    check_variant(arg, ("cond",), __file__.rsplit("/", 1)[-1])
    conditional = arg == "cond"
    config = base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_classes = 10
    config.data.centered = True
    config.data.dequantize = False
    config.data.random_flip = False  # EDM: --xflip=False (flips only inside its augmentations)

    config.model.name = "ncsnpp"
    config.model.parameterization = "edm"
    config.model.sigma_data = 0.5
    config.model.conditional = conditional
    config.model.label_dropout = 0.0
    config.model.dropout = 0.13
    config.model.noise_embedding = "positional"
    u = config.model.unet
    u.nf = 128
    u.ch_mult = (2, 2, 2)
    u.num_res_blocks = 4
    u.attn_resolutions = (16,)
    u.resblock_type = "biggan"
    u.resamp_with_conv = True
    u.fir = False  # EDM's resample_filter [1, 1]
    u.skip_rescale = True
    u.progressive = "none"
    u.progressive_input = "none"  # EDM's encoder_type 'standard'
    u.nonlinearity = "swish"
    u.label_embedding = "noise_features"  # EDM's map_label, added before the embedding MLP
    u.augment_dim = 9  # EDM's map_augment (train.py sets 9 whenever --augment > 0)

    config.sde.name = "edm"
    config.sde.sigma_min = 0.002
    config.sde.sigma_max = 80.0

    config.training.batch_size = BATCH
    config.training.num_train_steps = 200_000_000 // BATCH  # 200 Mimg: 390,625 steps
    config.training.checkpoint_every_steps = 5_000  # EDM: a snapshot every 2.5 Mimg
    config.training.sample_every_steps = 25_000
    config.training.ema_decay = 0.5 ** (BATCH / 500_000)  # half-life 0.5 Mimg: 0.999290
    config.training.ema_warmup = True
    config.training.time_sampling = "log_normal"
    config.training.P_mean = -1.2
    config.training.P_std = 1.2
    config.training.reduce_mean = False

    config.optim.optimizer = "adam"
    config.optim.lr = 10e-4
    config.optim.beta1 = 0.9
    config.optim.beta2 = 0.999
    config.optim.eps = 1e-8
    config.optim.warmup_steps = round(10_000_000 / BATCH)  # 10 Mimg ramp-up: 19,531 steps
    config.optim.grad_clip = 0.0

    config.sampling.method = "edm_heun"
    config.sampling.num_steps = 18  # 35 NFE
    config.sampling.rho = 7.0
    config.sampling.S_churn = 0.0

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    return config
