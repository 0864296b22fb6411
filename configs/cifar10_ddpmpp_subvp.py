"""DDPM++ cont. (sub-VP) on CIFAR-10: score_sde's `cifar10_ddpmpp_continuous` with the sub-VP SDE.

Launch: python -m diffjax.main --config=configs/cifar10_ddpmpp_subvp.py --workdir=DIR
(TPU pods: launch/tpu_vm.sh ... -- --config=configs/cifar10_ddpmpp_subvp.py ..., see README).
Variants: `:deep`.
Expected result (Song et al. 2021): FID-50k 2.41 for the deep model; with the
probability-flow ODE (--config.sampling.method=ode_adaptive) the deep model reaches FID 2.92 at
2.99 bits/dim (--mode=likelihood).
"""


from diffjax.config_presets import check_variant, score_sde_cifar10


def get_config(arg: str | None = None):
    check_variant(arg, ("deep",), __file__.rsplit("/", 1)[-1])
    config = score_sde_cifar10(deep=arg == "deep")
    config.model.noise_embedding = "positional"

    config.sde.name = "subvp"
    config.sde.beta_min = 0.1
    config.sde.beta_max = 20.0

    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.eps = 1e-3
    return config
