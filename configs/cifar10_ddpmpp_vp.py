"""DDPM++ cont. (VP) on CIFAR-10: score_sde's `cifar10_ddpmpp_continuous` settings.

Launch (TPU v4-32 pod slice; see README "Training on a TPU pod"):
    launch/tpu_vm.sh --name=ddpmpp --accelerator=v4-32 -- \\
        --config=configs/cifar10_ddpmpp_vp.py --workdir=gs://BUCKET/ddpmpp_vp \\
        --config.data.data_dir=gs://BUCKET/tensorflow_datasets
Single host: python -m diffjax.main --config=configs/cifar10_ddpmpp_vp.py --workdir=DIR
Variants: `:deep` (8 residual blocks per level: "DDPM++ cont. deep").
Data: `tfds build cifar10 --file_format=array_record` (README, "Datasets").
Expected result (Song et al. 2021): FID-50k 2.41 for the deep model (DDPM++ cont. deep VP) after
~1.3M steps at batch 128; with the PF-ODE, 3.08 at 3.13 bits/dim.
"""


from diffjax.config_presets import check_variant, score_sde_cifar10


def get_config(arg: str | None = None):
    check_variant(arg, ("deep",), __file__.rsplit("/", 1)[-1])
    config = score_sde_cifar10(deep=arg == "deep")
    config.model.noise_embedding = "positional"

    config.sde.name = "vp"
    config.sde.beta_min = 0.1
    config.sde.beta_max = 20.0

    config.sampling.method = "pc"
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.snr = 0.16
    config.sampling.eps = 1e-3
    return config
