"""NCSN++ cont. (VE) on CIFAR-10: score_sde's `ve/cifar10_ncsnpp_continuous.py` (`:deep`:
`ve/cifar10_ncsnpp_deep_continuous.py`), the same network and training and sampling settings.

Expected result (Song et al. 2021, Table 3): NCSN++ cont. deep (VE) FID-50k 2.20, IS 9.89, with the
PC sampler (reverse diffusion + one Langevin step, snr 0.16, 1000 steps: 2000 NFE) (`:deep`).
Network: 62,758,915 parameters (deep: 107,587,075), as score_sde's.

Launch: python -m diffjax.main --config=configs/cifar10_ncsnpp_ve.py:deep --workdir=DIR
(TPU pods: launch/tpu_vm.sh ... -- --config=configs/cifar10_ncsnpp_ve.py:deep ..., README).
From score_sde's released checkpoint (docs/published_checkpoints.md):
    python -m diffjax.convert --source=score_sde \\
        --checkpoint=ve/cifar10_ncsnpp_deep_continuous/checkpoint_N.pth \\
        --config=configs/cifar10_ncsnpp_ve.py:deep --workdir=DIR

Settings (score_sde): data in [0, 1] (the network maps them to 2x - 1 itself), no
dequantisation, random flips; Gaussian Fourier features (nf frequencies, scale 16) of log sigma,
FIR [1, 3, 3, 1] resampling, the 'residual' input pyramid, and the output divided by sigma
(scale_by_sigma), so the network's output is the score (model.parameterization="score");
sigma 0.01..50; batch 128, Adam 2e-4, 5000 warm-up steps, clipping 1, EMA 0.999,
training.reduce_mean=False (0.5 x the pixel sum in score_sde), 1.3M steps (deep: 950k).
"""

from diffjax.config.presets import check_variant, score_sde_cifar10


def get_config(arg: str | None = None):
    check_variant(arg, ("deep",), __file__.rsplit("/", 1)[-1])
    config = score_sde_cifar10(deep=arg == "deep")
    config.data.centered = False  # VE models data in [0, 1]

    config.model.noise_embedding = "fourier"
    config.model.fourier_scale = 16.0
    config.model.parameterization = "score"  # the network divides by sigma (scale_by_sigma)
    config.model.unet.fir = True
    config.model.unet.progressive_input = "residual"
    config.model.unet.scale_by_sigma = True

    config.sde.name = "ve"
    config.sde.sigma_min = 0.01
    config.sde.sigma_max = 50.0

    config.training.ema_decay = 0.999
    config.training.reduce_mean = False

    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector_steps = 1
    config.sampling.snr = 0.16
    config.sampling.eps = 1e-5
    return config
