"""openai/guided-diffusion's noise-conditional classifiers -> a diffjax classifier run.

    python -m diffjax.convert --source=adm_classifier --checkpoint=64x64_classifier.pt \
        --config=configs/imagenet_adm_classifier.py:64 --workdir=DIR

writes DIR/classifier/checkpoints/0/, what `sampling.classifier_scale` restores (the classifier
of a run is WORKDIR/classifier, or classifier.pretrained). The file is the state dict that
guided-diffusion's classifier_train.py saves (`torch.save(model.state_dict())`); the network is
`diffjax.models.adm_classifier.ADMClassifier` (`classifier.name=adm`), whose parameter paths
are the state dict's keys with indices joined by "_", so one rule per parameter does it:
conv OIHW -> HWIO, conv1d / Linear (out, in[, 1]) -> (in, out), GroupNorm weight -> scale, the
pooling's position table (C, L) -> (L, C). The published classifiers hold no EMA: the same
weights are the run's parameters and EMA parameters, at step 0.
"""

from __future__ import annotations

import re

import numpy as np

from diffjax.convert.mapping import Rule, apply_rules, one_to_one
from diffjax.convert.target import Target

ADM_HINT = ("classifier.nf, ch_mult, num_res_blocks, attn_resolutions, num_head_channels, "
            "pool, resblock_updown or use_scale_shift_norm, and data.image_size "
            "(configs/imagenet_adm_classifier.py:<size> has the published classifiers')")


def read(checkpoint) -> dict:
    from diffjax.storage.torch_files import load_torch_checkpoint

    data = load_torch_checkpoint(checkpoint)
    if not isinstance(data, dict) or "time_embed.0.weight" not in data:
        raise ValueError("not a guided-diffusion classifier state dict (no 'time_embed.0.weight')"
                         "; check --source.")
    if "out.2.positional_embedding" not in data and "out.3.weight" not in data:
        raise ValueError("a guided-diffusion network, but not a classifier (no 'out.2' or "
                         "'out.3' head; the diffusion U-Net is not convertible); check "
                         "--checkpoint.")
    return data


def torch_name(path: tuple[str, ...]) -> str:
    """('input_blocks_1_0', 'in_layers_2', 'kernel') -> 'input_blocks.1.0.in_layers.2.weight'."""
    modules = [re.sub(r"_(\d+)", r".\1", part) for part in path[:-1]]
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    return ".".join(modules + [leaf])


def _rule(path: tuple[str, ...], shape: tuple[int, ...]) -> Rule:
    name = torch_name(path)
    if path[-1] == "kernel" and len(shape) == 4:  # conv: torch OIHW
        h, w, i, o = shape
        return one_to_one(name, (o, i, h, w), path, lambda a: np.transpose(a, (2, 3, 1, 0)))
    if path[-1] == "kernel":  # Linear (out, in) or a 1x1 conv1d (out, in, 1)
        i, o = shape
        conv1d = path[-2] in ("qkv", "proj_out", "qkv_proj", "c_proj")
        return one_to_one(name, (o, i, 1) if conv1d else (o, i), path,
                          lambda a: np.transpose(np.reshape(a, (o, i))))
    if path[-1] == "positional_embedding":
        length, channels = shape
        return one_to_one(name, (channels, length), path, np.transpose)
    return one_to_one(name, shape, path)


def convert(target: Target, data: dict) -> tuple[dict, dict, int]:
    rules = [_rule(path, shape) for path, shape in target.shapes.items()]
    params = apply_rules(rules, data, source="guided-diffusion classifier", extra_hint=ADM_HINT)
    return params, params, 0
