"""Networks by name. Each is `net(x, noise_cond, labels, *, train) -> output like x`."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(model_config):
    try:
        return COMPUTE_DTYPES[model_config.dtype]
    except KeyError:
        raise ValueError(
            f"model.dtype={model_config.dtype!r}; choose one of {sorted(COMPUTE_DTYPES)}."
        ) from None


def _num_classes(config) -> int:
    return int(config.data.num_classes) if config.model.conditional else 0


def build_unet(config) -> nn.Module:
    from diffjax.models.unet import UNet

    m, u = config.model, config.model.unet
    return UNet(
        nf=u.nf, ch_mult=tuple(u.ch_mult), num_res_blocks=u.num_res_blocks,
        attn_resolutions=tuple(u.attn_resolutions), dropout=m.dropout,
        resblock_type=u.resblock_type, skip_rescale=u.skip_rescale, init_scale=u.init_scale,
        noise_embedding=m.noise_embedding, fourier_scale=m.fourier_scale,
        num_classes=_num_classes(config), label_dropout=m.label_dropout,
        dtype=compute_dtype(m), remat=m.remat,
    )


def build_dit(config) -> nn.Module:
    from diffjax.models.dit import DiT, dit_kwargs

    m, d = config.model, config.model.dit
    if d.size:
        shape = dit_kwargs(d.size, d.patch_size)
    else:
        shape = dict(patch_size=d.patch_size, hidden_size=d.hidden_size, depth=d.depth,
                     num_heads=d.num_heads)
    return DiT(
        **shape, mlp_ratio=d.mlp_ratio, num_classes=_num_classes(config),
        label_dropout=m.label_dropout, pos_embed=d.pos_embed, noise_embedding=m.noise_embedding,
        fourier_scale=m.fourier_scale,
        dtype=compute_dtype(m), remat=m.remat,
    )


MODELS: dict[str, Callable[..., nn.Module]] = {"unet": build_unet, "dit": build_dit}


def build_model(config) -> nn.Module:
    try:
        builder = MODELS[config.model.name]
    except KeyError:
        raise ValueError(
            f"Unknown model.name={config.model.name!r}; choose one of {sorted(MODELS)}."
        ) from None
    return builder(config)
