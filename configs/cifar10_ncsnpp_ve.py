"""NCSN++ cont. (VE) on CIFAR-10: score_sde's `cifar10_ncsnpp_continuous` settings.

Launch: python -m diffjax.main --config=configs/cifar10_ncsnpp_ve.py --workdir=DIR
(TPU pods: launch/tpu_vm.sh ... -- --config=configs/cifar10_ncsnpp_ve.py ..., see README).
Variants: `:deep` (8 residual blocks per level: "NCSN++ cont. deep VE").
Expected result (Song et al. 2021): FID-50k 2.20 for the deep model (IS 9.89) with the
PC sampler (reverse diffusion + Langevin, snr 0.16), 2000 NFE.
Differences from score_sde: diffjax's U-Net has no FIR resampling or progressive skips (see
diffjax/models/unet.py); it conditions on log sigma with a Fourier embedding as NCSN++ does.
"""


from diffjax.config_presets import check_variant, score_sde_cifar10


def get_config(arg: str | None = None):
    check_variant(arg, ("deep",), __file__.rsplit("/", 1)[-1])
    config = score_sde_cifar10(deep=arg == "deep")
    config.data.centered = False  # VE models data in [0, 1]

    config.model.noise_embedding = "fourier"
    config.model.fourier_scale = 16.0
    config.model.parameterization = "noise"  # score = -output / sigma: NCSN++'s scale_by_sigma

    config.sde.name = "ve"
    config.sde.sigma_min = 0.01
    config.sde.sigma_max = 50.0

    config.training.ema_decay = 0.999

    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.snr = 0.16
    config.sampling.eps = 1e-5
    return config
