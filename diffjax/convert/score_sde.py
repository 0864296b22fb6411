"""score_sde_pytorch checkpoints (`checkpoint_<n>.pth`) -> diffjax NCSNpp parameters.

The file is `utils.save_checkpoint`'s dict: 'model' (the state dict of the DataParallel-wrapped
network, names 'module.all_modules.<i>.<layer>.<weight>'), 'ema' ('shadow_params': the EMA of
every trainable parameter, in `model.parameters()` order, i.e. the state dict's order without
the buffer 'sigmas' and the fixed Fourier frequencies), 'optimizer' and 'step'. Both weight sets
are converted: the raw weights become `params`, the EMA `ema_params` (what sampling uses).

score_sde's network is a flat module list used in forward order; diffjax's NCSNpp calls its
top-level submodules in that same order, so module i of the list is the i-th top-level module
the diffjax network calls. The same holds for score_sde's DDPM model (`models/ddpm.py`, reached
with resblock_type='ddpm', skip_rescale=False; see docs/published_checkpoints.md).
"""

from __future__ import annotations

import collections

import numpy as np

from diffjax.convert.mapping import (CheckpointMismatch, Rule, apply_rules, conv_kernel,
                                     dense_kernel, one_to_one, same)
from diffjax.convert.target import Target

# Owner class of a diffjax parameter -> {diffjax leaf: (torch leaf, layout)}.
LEAVES = {
    "Conv": {"kernel": ("weight", conv_kernel), "bias": ("bias", same)},
    "FIRConv": {"kernel": ("weight", conv_kernel), "bias": ("bias", same)},
    "Dense": {"kernel": ("weight", dense_kernel), "bias": ("bias", same)},
    "GroupNorm": {"scale": ("weight", same), "bias": ("bias", same)},
    "NIN": {"kernel": ("W", same), "bias": ("b", same)},
    "GaussianFourierEmbedding": {"frequencies": ("W", same)},
}


def read(checkpoint) -> dict:
    from diffjax.storage.torch_files import load_torch_checkpoint

    data = load_torch_checkpoint(checkpoint)
    if not isinstance(data, dict) or "model" not in data or "ema" not in data:
        raise ValueError("not a score_sde checkpoint (a dict with 'model', 'ema', 'step'); "
                         "check --source.")
    return data


def rules(target: Target, prefix: str) -> list[Rule]:
    index = {name: i for i, (name, _) in enumerate(
        (n, c) for n, c in target.top_level() if n != "label_embedding")}
    result = []
    for path, shape in target.shapes.items():
        if path[0] == "label_embedding":
            raise CheckpointMismatch("score_sde networks have no class conditioning; set "
                                     "--config.model.conditional=False.")
        owner = target.owner_class(path)
        if owner not in LEAVES or path[-1] not in LEAVES[owner]:
            raise AssertionError(f"no score_sde name for {path} ({owner})")
        torch_leaf, layout = LEAVES[owner][path[-1]]
        source_shape, convert = layout(shape)
        name = ".".join((f"{prefix}all_modules", str(index[path[0]]), *path[1:-1], torch_leaf))
        result.append(one_to_one(name, source_shape, path, convert))
    return result


def _check_module_count(target: Target, table: list[Rule], model, prefix: str) -> None:
    """Layer counts first: a wrong num_res_blocks shifts every later index, and the first
    shape that differs would point at an innocent layer."""
    fourier = f"{prefix}all_modules.0.W"
    in_checkpoint = fourier in model and np.ndim(model[fourier]) == 1
    if in_checkpoint != any(r.targets[0][0] == "noise_features" for r in table):
        kind = "fourier" if in_checkpoint else "positional"
        raise CheckpointMismatch(
            f"the checkpoint embeds the noise level with {kind} features ({fourier!r} "
            f"{'present' if in_checkpoint else 'absent'}); set --config.model.noise_embedding="
            f"{kind}.")

    def last_index(names):
        return max(int(n[len(prefix):].split(".")[1]) for n in names
                   if n[len(prefix):].startswith("all_modules."))

    in_checkpoint = last_index(model) + 1
    in_config = last_index(r.sources[0] for r in table) + 1
    if in_checkpoint != in_config:
        raise CheckpointMismatch(
            f"the checkpoint's network has {in_checkpoint} modules in score_sde's list, the "
            f"config's {in_config}; check model.unet.num_res_blocks, ch_mult, attn_resolutions, "
            f"progressive and progressive_input.")


def convert(target: Target, data: dict) -> tuple[dict, dict, int]:
    """(params, ema_params, step) from a loaded score_sde checkpoint."""
    model = collections.OrderedDict(data["model"])
    prefix = "module." if any(k.startswith("module.") for k in model) else ""
    if prefix and "module.sigmas" not in model or not prefix and "sigmas" not in model:
        raise CheckpointMismatch("the checkpoint's 'model' has no 'sigmas' buffer: not a "
                                 "score_sde NCSNpp/DDPM state dict; check --source.")
    table = rules(target, prefix)
    _check_module_count(target, table, model, prefix)
    is_buffer = lambda name: name == f"{prefix}sigmas"  # noqa: E731
    params = apply_rules(table, model, source="score_sde", ignore=is_buffer)

    # shadow_params follow model.parameters() with requires_grad: the state dict's order
    # without buffers and without the Fourier frequencies (a frozen parameter).
    fourier = {r.sources[0] for r in table if r.targets[0][0] == "noise_features"}
    trainable = [n for n in model if not is_buffer(n) and n not in fourier]
    shadow = list(data["ema"].get("shadow_params", []))
    if len(shadow) != len(trainable) or any(np.shape(s) != np.shape(model[n])
                                            for s, n in zip(shadow, trainable)):
        raise CheckpointMismatch(
            f"the checkpoint's EMA holds {len(shadow)} tensors where its model has "
            f"{len(trainable)} trainable parameters of other shapes: not a score_sde checkpoint.")
    averaged = collections.OrderedDict(model)
    averaged.update(zip(trainable, shadow))
    ema_params = apply_rules(table, averaged, source="score_sde", ignore=is_buffer)
    return params, ema_params, int(np.asarray(data.get("step", 0)))
