"""DDPM++ cont. (sub-VP) on CIFAR-10: score_sde's `subvp/cifar10_ddpmpp_continuous.py` (`:deep`:
`subvp/cifar10_ddpmpp_deep_continuous.py`), the same network and training and sampling settings.

Expected result (Song et al. 2021, Table 3): DDPM++ cont. deep (sub-VP) FID-50k 2.41 with
Euler-Maruyama, 1000 steps, no corrector (`:deep`); with the probability-flow ODE
(--config.sampling.method=ode_adaptive) FID 2.92 at 2.99 bits/dim (--mode=likelihood).
Network: 61,804,419 parameters (deep: 106,632,579), as score_sde's.

Launch: python -m diffjax.main --config=configs/cifar10_ddpmpp_subvp.py:deep --workdir=DIR
(TPU pods: launch/tpu_vm.sh ... -- --config=configs/cifar10_ddpmpp_subvp.py:deep ..., README).
From score_sde's released checkpoint (docs/published_checkpoints.md):
    python -m diffjax.convert --source=score_sde \\
        --checkpoint=subvp/cifar10_ddpmpp_deep_continuous/checkpoint_N.pth \\
        --config=configs/cifar10_ddpmpp_subvp.py:deep --workdir=DIR
Settings: as configs/cifar10_ddpmpp_vp.py, with the sub-VP SDE.
"""

from diffjax.config.presets import check_variant, score_sde_cifar10


def get_config(arg: str | None = None):
    check_variant(arg, ("deep",), __file__.rsplit("/", 1)[-1])
    config = score_sde_cifar10(deep=arg == "deep")
    config.data.centered = True

    config.model.noise_embedding = "positional"
    config.model.parameterization = "noise"
    config.model.unet.fir = False
    config.model.unet.progressive_input = "none"
    config.model.unet.scale_by_sigma = False

    config.sde.name = "subvp"
    config.sde.beta_min = 0.1
    config.sde.beta_max = 20.0

    config.training.ema_decay = 0.9999
    config.training.reduce_mean = True

    config.sampling.method = "euler_maruyama"  # score_sde: pc, predictor EM, corrector none
    config.sampling.eps = 1e-3
    return config
