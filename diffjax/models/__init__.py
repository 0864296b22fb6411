"""Networks by name. Each is `net(x, noise_cond, labels, *, train) -> output like x`; `labels`
is the conditioning (class ids, or for "pixart" and "sd_unet" the text encoder outputs, a dict).

Networks know nothing about processes: what their output means is diffjax.diffusion's. With
`model.second_time_embedding` noise_cond is [B, 2] (MeanFlow's (t, t - r)); sCM's adaptive
weighting wraps the network with a log-variance head (`log_variance.py`); `build_classifier`
builds the noise-conditional classifier of classifier guidance (`classifier.py`, logits out).
"sd_unet" is Stable Diffusion's U-Net from a diffusers folder (`sd_denoiser.py`).
Imports: nothing else of diffjax but parallel's logical-axis names (by string), and storage for
the diffusers U-Net's folders (sd_unet_weights.py).
"""

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


def _label_dropout(config) -> float:
    """MeanFlow drops labels in its objective (its target depends on which were dropped), so
    its network must not drop them again (the official DiT gets class_dropout_prob=0)."""
    if config.training.get("objective", "diffusion") == "meanflow":
        return 0.0
    return float(config.model.label_dropout)


def _second_time(config) -> bool:
    return bool(config.model.get("second_time_embedding", False))


def build_ncsnpp(config) -> nn.Module:
    """score_sde's NCSN++ network (DDPM++ and NCSN++ are its configurations)."""
    from diffjax.models.ncsnpp import NCSNpp

    m, u = config.model, config.model.unet
    if u.scale_by_sigma and config.sde.name != "ve":
        raise ValueError(
            f"model.unet.scale_by_sigma divides the output by exp(noise_cond), which is sigma "
            f"only for the VE SDE (noise_cond = log sigma), not sde.name={config.sde.name!r}; "
            f"set --config.model.unet.scale_by_sigma=False.")
    return NCSNpp(
        nf=u.nf, ch_mult=tuple(u.ch_mult), num_res_blocks=u.num_res_blocks,
        attn_resolutions=tuple(u.attn_resolutions), dropout=m.dropout,
        resamp_with_conv=u.resamp_with_conv, fir=u.fir, fir_kernel=tuple(u.fir_kernel),
        skip_rescale=u.skip_rescale, resblock_type=u.resblock_type, progressive=u.progressive,
        progressive_input=u.progressive_input, progressive_combine=u.progressive_combine,
        embedding_type=m.noise_embedding, fourier_scale=m.fourier_scale,
        init_scale=u.init_scale, noise_conditional=u.noise_conditional,
        scale_by_sigma=u.scale_by_sigma, centered=config.data.centered,
        nonlinearity=u.nonlinearity, num_classes=_num_classes(config),
        label_dropout=_label_dropout(config), label_embedding=u.label_embedding,
        augment_dim=u.augment_dim, second_time_embedding=_second_time(config),
        dtype=compute_dtype(m), remat=m.remat,
    )


def _dit_shape(d) -> dict:
    """DiT/PixArt sizes: a named size (S/B/L/XL) or model.dit's own numbers."""
    from diffjax.models.dit import dit_kwargs

    if d.size:
        return dit_kwargs(d.size, d.patch_size)
    return dict(patch_size=d.patch_size, hidden_size=d.hidden_size, depth=d.depth,
                num_heads=d.num_heads)


def build_dit(config) -> nn.Module:
    from diffjax.models.dit import DiT

    m, d = config.model, config.model.dit
    shape = _dit_shape(d)
    return DiT(
        **shape, mlp_ratio=d.mlp_ratio, num_classes=_num_classes(config),
        label_dropout=_label_dropout(config), pos_embed=d.pos_embed,
        noise_embedding=m.noise_embedding, fourier_scale=m.fourier_scale,
        learn_sigma=d.learn_sigma, second_time_embedding=_second_time(config),
        dtype=compute_dtype(m), remat=m.remat,
    )


def build_pixart(config) -> nn.Module:
    """A text-conditional DiT (PixArt-alpha): model.dit's sizes, text from the data's encoder."""
    from diffjax.models.pixart import PixArt

    m, d = config.model, config.model.dit
    shape = _dit_shape(d)
    if m.conditional:
        raise ValueError("model.name='pixart' is conditioned on text, not class labels; set "
                         "--config.model.conditional=False and --config.data.text_encoder.")
    return PixArt(**shape, mlp_ratio=d.mlp_ratio, noise_embedding=m.noise_embedding,
                  fourier_scale=m.fourier_scale, learn_sigma=d.learn_sigma,
                  dtype=compute_dtype(m), remat=m.remat)


def build_sd_unet(config) -> nn.Module:
    """Stable Diffusion's U-Net on text, its architecture from a diffusers folder or config.json
    (model.pretrained / model.sd_unet_config; `sd_denoiser.py`)."""
    from diffjax.models.sd_denoiser import SDDenoiser, architecture

    m = config.model
    if m.conditional:
        raise ValueError("model.name='sd_unet' is conditioned on text, not class labels; set "
                         "--config.model.conditional=False and --config.data.text_encoder.")
    return SDDenoiser(architecture(m), compute_dtype(m), remat=m.remat)


# "unet" is the name configs used before the network became score_sde's NCSN++ exactly; it
# builds the same network.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "ncsnpp": build_ncsnpp, "unet": build_ncsnpp, "dit": build_dit, "pixart": build_pixart,
    "sd_unet": build_sd_unet}
# The networks conditioned on text (data.text_encoder's cached outputs) instead of class ids.
TEXT_MODELS = ("pixart", "sd_unet")


def uses_log_variance(config) -> bool:
    """sCM's adaptive weighting learns a log-variance per noise level beside the network."""
    t = config.training
    return t.get("objective", "diffusion") == "consistency" and \
        bool(t.consistency.adaptive_weighting)


def build_model(config) -> nn.Module:
    try:
        builder = MODELS[config.model.name]
    except KeyError:
        raise ValueError(
            f"Unknown model.name={config.model.name!r}; choose one of {sorted(MODELS)}."
        ) from None
    model = builder(config)
    if uses_log_variance(config):
        from diffjax.models.log_variance import WithLogVariance

        model = WithLogVariance(model)
    return model


def build_classifier(config) -> nn.Module:
    """The noise-conditional classifier of `config.classifier` (`diffjax/models/classifier.py`)."""
    from diffjax.models.classifier import CLASSIFIER_KINDS, DiTClassifier, EncoderUNetClassifier

    c, m = config.classifier, config.model
    if c.name == "unet":
        return EncoderUNetClassifier(
            num_classes=int(config.data.num_classes), nf=c.nf, ch_mult=tuple(c.ch_mult),
            num_res_blocks=c.num_res_blocks, attn_resolutions=tuple(c.attn_resolutions),
            dropout=c.dropout, embedding_type=m.noise_embedding, fourier_scale=m.fourier_scale,
            dtype=compute_dtype(m))
    if c.name == "dit":
        return DiTClassifier(
            num_classes=int(config.data.num_classes), patch_size=c.patch_size,
            hidden_size=c.hidden_size, depth=c.depth, num_heads=c.num_heads,
            embedding_type=m.noise_embedding, fourier_scale=m.fourier_scale,
            dtype=compute_dtype(m))
    if c.name == "adm":
        from diffjax.models.adm_classifier import ADMClassifier

        size = int(config.data.image_size)
        return ADMClassifier(
            num_classes=int(config.data.num_classes), model_channels=c.nf,
            num_res_blocks=c.num_res_blocks, channel_mult=tuple(c.ch_mult),
            attention_ds=tuple(size // int(r) for r in c.attn_resolutions),
            num_heads=c.num_heads, num_head_channels=c.num_head_channels,
            use_scale_shift_norm=c.use_scale_shift_norm, resblock_updown=c.resblock_updown,
            new_attention_order=c.new_attention_order, pool=c.pool, dropout=c.dropout,
            dtype=compute_dtype(m))
    raise ValueError(f"Unknown classifier.name={c.name!r}; choose one of {list(CLASSIFIER_KINDS)}.")
