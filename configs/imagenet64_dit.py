"""Class-conditional DiT on ImageNet 64x64 (pixel space), VP SDE, classifier-free guidance.

Launch (TPU v5p-64, see README "Training on a TPU pod"):
    launch/tpu_vm.sh --name=dit-in64 --zone=us-east5-a --accelerator=v5p-64 \\
        --project=MY_PROJECT --bucket=BUCKET -- \\
        --config=configs/imagenet64_dit.py:XL --workdir=/gcs/BUCKET/dit_in64 \\
        --config.data.data_dir=/gcs/BUCKET/tensorflow_datasets --config.mesh.fsdp=8
Variants: `:S`, `:B`, `:L`, `:XL` (patch 4 at 64x64 = 256 tokens, the token count of DiT's
256-px latent models with patch 2, so the paper's per-image cost applies: S 6.06, B 23.0,
L 80.7, XL 118.6 GFLOPs (multiply-adds) per forward).
Data: `tfds build imagenet_resized/64x64 --file_format=array_record` (Chrabaszcz et al.'s
downsampled ImageNet with its 1,000 labels; TFDS's `downsampled_imagenet/64x64` has no labels and
a class-conditional config refuses it).
Expected cost (XL): ~0.36 TFLOP per training example (3 x 2 x 118.6 GFLOP); at 40% MFU on a v5p
chip (459 TFLOP/s) about 510 examples/s per chip. Expected result: EDM reports FID 1.36 on
ImageNet-64 with a U-Net; DiT-XL in pixel space at 64 px has no published number.
"""

from diffjax.config.schema import base_config

SIZES = ("S", "B", "L", "XL")


def get_config(arg: str | None = None):
    size = arg or "B"
    if size not in SIZES:
        raise ValueError(f"Unknown variant {size!r} for imagenet64_dit.py; valid: {SIZES}.")
    config = base_config()
    config.data.dataset = "imagenet_resized/64x64"
    config.data.image_size = 64
    config.data.num_channels = 3
    config.data.num_classes = 1000
    config.data.centered = True
    config.data.random_flip = True

    config.model.name = "dit"
    config.model.conditional = True
    config.model.label_dropout = 0.1
    config.model.dit.size = size
    config.model.dit.patch_size = 4
    config.model.dtype = "bfloat16"
    config.model.remat = size in ("L", "XL")

    config.sde.name = "vp"

    config.training.batch_size = 256
    config.training.num_train_steps = 400_000
    config.training.checkpoint_every_steps = 10_000
    config.training.sample_every_steps = 20_000
    config.training.ema_decay = 0.9999
    config.training.reduce_mean = True

    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 1.0

    config.sampling.method = "dpm_solver"
    config.sampling.order = 3
    config.sampling.num_steps = 25
    config.sampling.guidance_scale = 1.5

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1024
    config.mesh.fsdp = -1
    config.mesh.data = 1
    return config
