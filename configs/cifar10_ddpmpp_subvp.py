"""DDPM++ cont. (sub-VP) on CIFAR-10: score_sde's `cifar10_ddpmpp_continuous` with the sub-VP SDE.

Launch: python -m diffjax.main --config=configs/cifar10_ddpmpp_subvp.py --workdir=DIR
(TPU pods: launch/tpu_vm.sh ... -- --config=configs/cifar10_ddpmpp_subvp.py ..., see README).
Variants: `:deep`.
Expected result (Song et al. 2021): FID-50k 2.41 for the deep model; with the
probability-flow ODE (--config.sampling.method=ode_adaptive) the deep model reaches FID 2.92 at
2.99 bits/dim (--mode=likelihood).
"""

from diffjax.config_base import base_config


def get_config(arg: str | None = None):
    config = base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_classes = 10
    config.data.centered = True
    config.data.random_flip = True

    config.model.name = "unet"
    config.model.dropout = 0.1
    config.model.noise_embedding = "positional"
    config.model.unet.nf = 128
    config.model.unet.ch_mult = (1, 2, 2, 2)
    config.model.unet.num_res_blocks = 8 if arg == "deep" else 4
    config.model.unet.attn_resolutions = (16,)

    config.sde.name = "subvp"
    config.sde.beta_min = 0.1
    config.sde.beta_max = 20.0

    config.training.batch_size = 128
    config.training.num_train_steps = 1_300_001
    config.training.checkpoint_every_steps = 50_000
    config.training.sample_every_steps = 50_000
    config.training.ema_decay = 0.9999
    config.training.reduce_mean = False

    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0

    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.num_steps = 1000
    config.sampling.eps = 1e-3

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    if arg not in (None, "", "deep"):
        raise ValueError(f"Unknown variant {arg!r} for cifar10_ddpmpp_subvp.py; valid: deep.")
    return config
