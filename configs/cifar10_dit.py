"""DiT in pixel space on CIFAR-10 (32x32x3), VP SDE, class-conditional with guidance.

Launch (one 8-GPU host; FSDP over 2, data over 4):
    python -m diffjax.main --config=configs/cifar10_dit.py:S --workdir=DIR \\
        --config.mesh.data=4 --config.mesh.fsdp=2
Variants: `:S` (DiT-S/2, 33M parameters with a 4-channel output; the default) and `:B`
(DiT-B/2, 130M); append `,uncond` for an unconditional model.
Expected cost: DiT-S/2 at 32x32 with patch 2 sees 256 tokens, about 6 GFLOPs (multiply-adds) per
image forward, so ~3x that per training example; batch 128 is ~2.3 TFLOP per step.
Expected result: no published number for pixel-space CIFAR-10 DiT; use --mode=eval (FID-50k) to
compare with the DDPM++ configs at equal compute.
"""

from diffjax.config.schema import base_config


def get_config(arg: str | None = None):
    parts = [p for p in (arg or "S").split(",") if p]
    size = parts[0] if parts and parts[0] in ("S", "B") else "S"
    unknown = [p for p in parts if p not in ("S", "B", "uncond")]
    if unknown:
        raise ValueError(f"Unknown variant(s) {unknown} for cifar10_dit.py; valid: S, B, uncond.")
    config = base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_classes = 10
    config.data.centered = True
    config.data.random_flip = True

    config.model.name = "dit"
    config.model.conditional = "uncond" not in parts
    config.model.label_dropout = 0.1
    config.model.noise_embedding = "positional"
    config.model.dit.size = size
    config.model.dit.patch_size = 2

    config.sde.name = "vp"

    config.training.batch_size = 128
    config.training.num_train_steps = 400_000
    config.training.checkpoint_every_steps = 25_000
    config.training.sample_every_steps = 25_000
    config.training.ema_decay = 0.9999
    config.training.reduce_mean = True

    config.optim.optimizer = "adamw"
    config.optim.lr = 1e-4  # DiT's constant learning rate
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 1.0

    config.sampling.method = "dpm_solver"
    config.sampling.order = 3
    config.sampling.num_steps = 20
    config.sampling.guidance_scale = 1.5 if config.model.conditional else 1.0

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    return config
