"""NCSN++ cont. (VE) on CIFAR-10: score_sde's `cifar10_ncsnpp_continuous` settings.

Launch: python -m diffjax.main --config=configs/cifar10_ncsnpp_ve.py --workdir=DIR
(TPU pods: launch/tpu_vm.sh ... -- --config=configs/cifar10_ncsnpp_ve.py ..., see README).
Variants: `:deep` (8 residual blocks per level: "NCSN++ cont. deep VE").
Expected result (Song et al. 2021): FID-50k 2.20 for the deep model (IS 9.89) with the
PC sampler (reverse diffusion + Langevin, snr 0.16), 2000 NFE.
Differences from score_sde: diffjax's U-Net has no FIR resampling or progressive skips (see
diffjax/models/unet.py); it conditions on log sigma with a Fourier embedding as NCSN++ does.
"""

from diffjax.config_base import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_classes = 10
    config.data.centered = False  # VE models data in [0, 1]
    config.data.random_flip = True

    config.model.name = "unet"
    config.model.dropout = 0.1
    config.model.noise_embedding = "fourier"
    config.model.fourier_scale = 16.0
    config.model.parameterization = "noise"  # score = -output / sigma: NCSN++'s scale_by_sigma
    config.model.unet.nf = 128
    config.model.unet.ch_mult = (1, 2, 2, 2)
    config.model.unet.num_res_blocks = 8 if arg == "deep" else 4
    config.model.unet.attn_resolutions = (16,)

    config.sde.name = "ve"
    config.sde.sigma_min = 0.01
    config.sde.sigma_max = 50.0

    config.training.batch_size = 128
    config.training.num_train_steps = 1_300_001
    config.training.checkpoint_every_steps = 50_000
    config.training.sample_every_steps = 50_000
    config.training.ema_decay = 0.999
    config.training.reduce_mean = False

    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0

    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.num_steps = 1000
    config.sampling.snr = 0.16
    config.sampling.eps = 1e-5

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    if arg not in (None, "", "deep"):
        raise ValueError(f"Unknown variant {arg!r} for cifar10_ncsnpp_ve.py; valid: deep.")
    return config
