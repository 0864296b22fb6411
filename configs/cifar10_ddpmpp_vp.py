"""DDPM++ cont. (VP) on CIFAR-10: score_sde's `vp/cifar10_ddpmpp_continuous.py` (`:deep`:
`vp/cifar10_ddpmpp_deep_continuous.py`), the same network and training and sampling settings.

Expected result (Song et al. 2021, Table 3): DDPM++ cont. deep (VP) FID-50k 2.41 with
Euler-Maruyama, 1000 steps, no corrector (the `:deep` variant); with the probability-flow ODE
(--config.sampling.method=ode_adaptive) FID 3.08 at 3.13 bits/dim (--mode=likelihood).
The network has 61,804,419 parameters (deep: 106,632,579), as score_sde's.

Launch (TPU v4-32 pod slice; see README "Training on a TPU pod"):
    launch/tpu_vm.sh --name=ddpmpp --zone=us-central2-b --accelerator=v4-32 \\
        --project=MY_PROJECT --bucket=BUCKET -- \\
        --config=configs/cifar10_ddpmpp_vp.py:deep --workdir=/gcs/BUCKET/ddpmpp_vp_deep \\
        --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets
Single host: python -m diffjax.main --config=configs/cifar10_ddpmpp_vp.py:deep --workdir=DIR
From score_sde's released checkpoint instead (docs/published_checkpoints.md; N: the smaller
number in the Drive folder, the checkpoint of the paper's Table 3):
    python -m diffjax.convert --source=score_sde \\
        --checkpoint=vp/cifar10_ddpmpp_deep_continuous/checkpoint_N.pth \\
        --config=configs/cifar10_ddpmpp_vp.py:deep --workdir=DIR
    python -m diffjax.main --config=configs/cifar10_ddpmpp_vp.py:deep --workdir=DIR --mode=eval
Data: `tfds build cifar10 --file_format=array_record` (README, "Datasets").

Settings (score_sde): data centred to [-1, 1], no dequantisation, random flips; positional
embedding of 999 t, BigGAN blocks, no FIR, no pyramids; batch 128, Adam 2e-4 with 5000 warm-up
steps, gradient clipping 1, EMA 0.9999, training.reduce_mean=True, 1.3M steps (deep: 950k).
"""

from diffjax.config.presets import check_variant, score_sde_cifar10


def get_config(arg: str | None = None):
    check_variant(arg, ("deep",), __file__.rsplit("/", 1)[-1])
    config = score_sde_cifar10(deep=arg == "deep")
    config.data.centered = True

    config.model.noise_embedding = "positional"
    config.model.parameterization = "noise"  # score = -output / sigma (score_sde's get_score_fn)
    config.model.unet.fir = False
    config.model.unet.progressive_input = "none"
    config.model.unet.scale_by_sigma = False

    config.sde.name = "vp"
    config.sde.beta_min = 0.1
    config.sde.beta_max = 20.0

    config.training.ema_decay = 0.9999
    config.training.reduce_mean = True

    config.sampling.method = "euler_maruyama"  # score_sde: pc, predictor EM, corrector none
    config.sampling.eps = 1e-3
    return config
