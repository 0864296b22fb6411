"""DiT on ImageNet 256x256 latents (Peebles & Xie 2023): facebookresearch/DiT `train.py` and
`sample_ddp.py`; `:S`, `:B`, `:L`, `:XL` (default) are DiT-S/2, B/2, L/2, XL/2.

Expected result: DiT-XL/2 reaches FID-50k 2.27 with guidance 1.5 (9.62 without) after 7M steps;
the paper's model-size comparison (its Table 4, without guidance) stops at 400k steps. This
config trains 400k steps; for 7M set --config.training.num_train_steps=7000000. The paper's 2.27
is reproduced from DiT's released checkpoint (below); diffjax has not measured it (no GPU). FID is against ADM's
reference batch (VIRTUAL_imagenet256_labeled.npz), as DiT reports it.
Parameters (DiT's count, learn_sigma=True, its fixed sin-cos table included): S/2 32,963,360,
B/2 130,512,416, L/2 458,102,816, XL/2 675,129,632; equal to DiT's `models.py`.

Launch, in one workdir W (TPU pods: launch/tpu_vm.sh ... -- with the same arguments, README):
    huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir=$W/sd-vae-ft-ema
    wget https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/\\
VIRTUAL_imagenet256_labeled.npz   # ADM's reference statistics, into the current directory
    python -m diffjax.main --config=configs/imagenet256_dit.py:XL --workdir=$W \\
        --config.data.data_dir=/data/tfds --mode=encode_latents   # W/latents, 2 views per image
    python -m diffjax.main --config=configs/imagenet256_dit.py:XL --workdir=$W \\
        --config.data.data_dir=/data/tfds
    python -m diffjax.main --config=configs/imagenet256_dit.py:XL --workdir=$W --mode=eval
(--config.autoencoder.pretrained=DIR and --config.eval.reference_stats=FILE point elsewhere.)
From DiT's released checkpoint (docs/published_checkpoints.md), FID 2.27:
    python -m diffjax.convert --source=dit --checkpoint=DiT-XL-2-256x256.pt \\
        --config=configs/imagenet256_dit.py:XL --workdir=$W
    python -m diffjax.main --config=configs/imagenet256_dit.py:XL --workdir=$W --mode=eval
Data: ImageNet-1k (`tfds build imagenet2012`, manual download), needed by encode_latents only.

Settings (DiT): images ADM-center-cropped to 256, encoded by the SD-VAE (ft-EMA; scale 0.18215,
the VAE's config.json value, set here explicitly as DiT hard-codes it) to 32x32x4 latents, random
horizontal flips (stored as a second latent view); patch 2, adaLN-Zero, 1000 classes + the null
class, label dropout 0.1; learn_sigma=True (eps and the variance interpolation, iDDPM's hybrid
loss); discrete DDPM, linear betas 1e-4..0.02, 1000 steps, integer step as the noise input;
batch 256, AdamW lr 1e-4, weight decay 0, no warm-up, no clipping, EMA 0.9999 from step 0;
sampling: 250 respaced ancestral steps with the learned variance, no clipping, guidance 1.5 in
DiT's convention (eps_u + 1.5 (eps_c - eps_u)) on the first 3 latent channels.

Where diffjax differs on purpose: the training latents are the VAE posterior's mean and std,
stored once (as fast-DiT does), and a sample is drawn per step in-graph (DiT encodes each batch
on the fly: the same distribution); the EMA follows training.ema_warmup=False (DiT's EMA starts
as a copy of the weights and decays by 0.9999 from then, which is this).
"""

from diffjax.config.presets import DIT_SIZES, dit_imagenet256_latents


def get_config(arg: str | None = None):
    size = arg or "XL"
    if size not in DIT_SIZES:
        raise ValueError(f"Unknown variant {size!r} for imagenet256_dit.py; valid: {DIT_SIZES}.")
    config = dit_imagenet256_latents(size)

    config.model.parameterization = "eps"
    config.model.dit.learn_sigma = True  # 8 output channels: noise, then the variance

    # DiT's GaussianDiffusion: 1000 discrete steps, linear betas 1e-4..0.02.
    config.sde.name = "ddpm"
    config.sde.beta_schedule = "linear"
    config.sde.num_timesteps = 1000

    # sample_ddp.py: 250 respaced ancestral steps with the learned variance, no clipping.
    config.sampling.method = "ddpm"
    config.sampling.variance = "learned"
    config.sampling.clip_denoised = False
    return config
