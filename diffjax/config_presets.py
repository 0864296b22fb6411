"""Shared starting points for config files, like score_sde's `default_cifar10_configs.py`.

A preset fills the sections a family of configs agrees on; the config file then states what makes
it different (model, SDE, sampler), so each file reads as its delta from the paper's setting.
"""

from __future__ import annotations

import ml_collections

from diffjax.config_base import base_config


def score_sde_cifar10(*, deep: bool = False) -> ml_collections.ConfigDict:
    """Song et al. (2021) CIFAR-10 settings: data, DDPM++/NCSN++ trunk, training, optimizer."""
    config = base_config()
    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.num_channels = 3
    config.data.num_classes = 10
    config.data.centered = True
    config.data.random_flip = True

    config.model.name = "unet"
    config.model.dropout = 0.1
    config.model.unet.nf = 128
    config.model.unet.ch_mult = (1, 2, 2, 2)
    config.model.unet.num_res_blocks = 8 if deep else 4
    config.model.unet.attn_resolutions = (16,)
    config.model.unet.resblock_type = "biggan"
    config.model.unet.skip_rescale = True
    config.model.unet.init_scale = 0.0

    config.training.batch_size = 128
    config.training.num_train_steps = 1_300_001
    config.training.checkpoint_every_steps = 50_000
    config.training.sample_every_steps = 50_000
    config.training.ema_decay = 0.9999
    config.training.eps = 1e-5
    config.training.reduce_mean = False

    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0

    config.sampling.num_steps = 1000

    config.eval.num_samples = 50_000
    config.eval.batch_size = 1000
    return config


def check_variant(arg: str | None, valid: tuple[str, ...], file: str) -> None:
    if arg not in (None, "", *valid):
        raise ValueError(f"Unknown variant {arg!r} for {file}; valid: {', '.join(valid)}.")
