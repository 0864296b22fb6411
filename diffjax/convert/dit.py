"""facebookresearch/DiT checkpoints (DiT-XL-2-256x256.pt, -512x512.pt: a bare state dict of the
EMA weights) -> diffjax DiT parameters.

The released models have learn_sigma=True (8 output channels for 4 latent channels) and 1000
classes plus the null class; their config needs `model.dit.learn_sigma=True`,
`model.conditional=True` and `data.num_classes=1000`. DiT's frozen sin-cos position table
('pos_embed') is not a diffjax parameter: it is checked against diffjax's table of the network's
input grid instead (the latent grid for the released models: 32x32 latents of 256 px images,
16x16 tokens).
"""

from __future__ import annotations

import re

import numpy as np

from diffjax.convert.mapping import (CheckpointMismatch, Rule, apply_rules, dense_kernel,
                                     one_to_one, same)
from diffjax.convert.target import Target
from diffjax.latents.latent_mode import model_input_shape
from diffjax.models.dit import sincos_2d_position_embedding

# diffjax path (regex) -> DiT name (with \1 for the block index).
NAMES = (
    (r"^noise_embed/frequencies/frequencies$", None),
    (r"^noise_embed/mlp_in/(kernel|bias)$", r"t_embedder.mlp.0.\1"),
    (r"^noise_embed/mlp_out/(kernel|bias)$", r"t_embedder.mlp.2.\1"),
    (r"^label_embed/embedding$", "y_embedder.embedding_table.weight"),
    (r"^patch_embed/(kernel|bias)$", r"x_embedder.proj.\1"),
    (r"^block_(\d+)/adaLN/linear/(kernel|bias)$", r"blocks.\1.adaLN_modulation.1.\2"),
    (r"^block_(\d+)/attn/qkv/(kernel|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^block_(\d+)/attn/out/(kernel|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"^block_(\d+)/mlp/(fc1|fc2)/(kernel|bias)$", r"blocks.\1.mlp.\2.\3"),
    (r"^final/adaLN/linear/(kernel|bias)$", r"final_layer.adaLN_modulation.1.\1"),
    (r"^final/linear/(kernel|bias)$", r"final_layer.linear.\1"),
    (r"^pos_embed$", "pos_embed"),
)


def read(checkpoint) -> dict:
    from diffjax.storage.torch_files import load_torch_checkpoint

    data = load_torch_checkpoint(checkpoint)
    if isinstance(data, dict) and "ema" in data and "model" in data:
        data = data["ema"]  # a DiT training checkpoint (train.py) rather than a release
    if not isinstance(data, dict) or "x_embedder.proj.weight" not in data:
        raise ValueError("not a DiT or SiT state dict (no 'x_embedder.proj.weight'); check "
                         "--source.")
    return data


def _layout(path: tuple[str, ...], shape: tuple[int, ...], config):
    """(torch shape, torch -> diffjax) of one DiT parameter."""
    name = "/".join(path)
    leaf = path[-1]
    if name.startswith("patch_embed/") and leaf == "kernel":
        features, hidden = shape
        p = config.model.dit.patch_size
        channels = features // (p * p)
        return (hidden, channels, p, p), lambda a: a.transpose(2, 3, 1, 0).reshape(shape)
    if leaf == "kernel" and len(shape) > 2 or leaf == "bias" and len(shape) > 1:
        if "/attn/out/" in name:  # [heads, kv, embed] <- Linear(d, d) weight
            heads, head_dim, out = shape
            return (out, heads * head_dim), lambda a: a.T.reshape(shape)
        size = int(np.prod(shape[1:] if leaf == "kernel" else shape))
        if leaf == "kernel":  # [in, *features] <- Linear weight (prod(features), in)
            return (size, shape[0]), lambda a: a.T.reshape(shape)
        return (size,), lambda a: a.reshape(shape)
    if leaf == "kernel":
        return dense_kernel(shape)
    return same(shape)


def rules(target: Target) -> list[Rule]:
    config = target.config
    result = []
    for path, shape in target.shapes.items():
        name = "/".join(path)
        for pattern, replacement in NAMES:
            if re.match(pattern, name):
                break
        else:
            raise AssertionError(f"no DiT name for {name}")
        if replacement is None:
            raise CheckpointMismatch("DiT embeds the noise level with sinusoids; set "
                                     "--config.model.noise_embedding=positional.")
        torch_name = re.sub(pattern, replacement, name).replace(".kernel", ".weight")
        if name == "pos_embed":  # learned table, [T, D] <- [1, T, D]
            result.append(one_to_one(torch_name, (1, *shape), path, lambda a: a[0]))
            continue
        source_shape, convert = _layout(path, shape, config)
        result.append(one_to_one(torch_name, source_shape, path, convert))
    return result


def convert(target: Target, data: dict) -> tuple[dict, dict, int]:
    config = target.config
    if config.model.dit.pos_embed == "sincos" and "pos_embed" in data:
        hidden = np.shape(data["pos_embed"])[-1]
        # The network's input grid: latents (image_size / the VAE's factor) in latent mode.
        height, width, _ = model_input_shape(config)
        p = config.model.dit.patch_size
        table = sincos_2d_position_embedding(hidden, height // p, width // p)
        if np.shape(data["pos_embed"])[1:] != table.shape or not np.allclose(
                data["pos_embed"][0], table, atol=1e-5):
            tokens = np.shape(data["pos_embed"])[1] if np.ndim(data["pos_embed"]) == 3 else 0
            side = int(round(np.sqrt(tokens)))
            theirs = f" ({side}x{side} tokens)" if side * side == tokens else ""
            raise CheckpointMismatch(
                f"the checkpoint's fixed position table 'pos_embed' "
                f"{list(np.shape(data['pos_embed']))}{theirs} is not the sin-cos table of the "
                f"config's {height // p}x{width // p} token grid (a {height}x{width} network "
                f"input, patch {p}); check data.image_size, model.dit.patch_size and, for "
                f"latents, the VAE of autoencoder.pretrained.")
    ignore = (lambda n: n == "pos_embed") if config.model.dit.pos_embed == "sincos" else \
        (lambda n: False)
    params = apply_rules(rules(target), data, source="DiT", ignore=ignore,
                         extra_hint="model.dit.depth or model.dit.size (the config builds "
                                    "fewer blocks than the checkpoint holds)")
    return params, params, 0


def convert_sit(target: Target, data: dict) -> tuple[dict, dict, int]:
    """willisma/SiT checkpoints (SiT-XL-2-256x256.pt): DiT's file format and network, trained by
    flow matching (Linear path, velocity prediction).

    SiT's models.py builds DiT's learn_sigma=True final layer and its forward() drops the second
    half of the output channels, so those rows are dropped here (config: learn_sigma=False).
    SiT's time s = 1 - t runs from noise to data and its network predicts ds-velocity x0 - eps;
    diffjax's flow process feeds the network s and reads the output as eps - x0, so the kept
    rows are negated. Both steps are exact.
    """
    config = target.config
    if config.sde.name != "flow" or config.model.parameterization != "velocity":
        raise CheckpointMismatch("a SiT checkpoint is a flow-matching velocity network; set "
                                 "--config.sde.name=flow --config.model.parameterization="
                                 "velocity.")
    if config.model.dit.learn_sigma:
        raise CheckpointMismatch("SiT's forward() drops its learned-sigma channels; set "
                                 "--config.model.dit.learn_sigma=False.")
    data = dict(data)
    weight = np.asarray(data.get("final_layer.linear.weight"))
    bias = np.asarray(data.get("final_layer.linear.bias"))
    p = config.model.dit.patch_size
    channels = target.shapes[("final", "linear", "kernel")][-1] // (p * p)
    if weight.ndim == 2 and weight.shape[0] == 2 * p * p * channels:
        # Rows are (p, p, 2C) with the channel fastest (DiT's unpatchify): keep the first C.
        keep = lambda a: a.reshape(p * p, 2 * channels, *a.shape[1:])[:, :channels].reshape(  # noqa: E731
            p * p * channels, *a.shape[1:])
        weight, bias = keep(weight), keep(bias)
    data["final_layer.linear.weight"] = -weight
    data["final_layer.linear.bias"] = -bias
    return convert(target, data)
