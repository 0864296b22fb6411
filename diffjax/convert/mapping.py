"""Rules that move a published checkpoint's tensors into diffjax's parameter tree, and the one
error message a mismatch produces.

Every source (score_sde, DiT, EDM) turns the *config's* network into an ordered list of `Rule`s:
which checkpoint tensors (names, expected shapes) make which diffjax parameters (paths), and how
(transposes, reshapes, splitting a fused qkv). `apply_rules` checks all names and shapes first
and converts only then, so a checkpoint that does not fit its config is refused before anything
is written, with the first parameter that differs and the config key that decides it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """`convert([checkpoint tensors named `sources`]) -> [arrays for `targets`]`."""

    sources: tuple[str, ...]
    source_shapes: tuple[tuple[int, ...], ...]
    targets: tuple[Path, ...]
    convert: Callable[[list[np.ndarray]], list[np.ndarray]]


def one_to_one(source: str, source_shape, target: Path, convert=lambda a: a) -> Rule:
    return Rule((source,), (tuple(source_shape),), (target,), lambda arrays: [convert(arrays[0])])


# Array layouts: torch on the left, diffjax on the right.
def conv_kernel(target_shape) -> tuple[tuple[int, ...], Callable]:
    """torch OIHW <-> flax HWIO."""
    h, w, i, o = target_shape
    return (o, i, h, w), lambda a: np.transpose(a, (2, 3, 1, 0))


def dense_kernel(target_shape) -> tuple[tuple[int, ...], Callable]:
    """torch Linear (out, in) <-> flax (in, out)."""
    i, o = target_shape
    return (o, i), lambda a: np.transpose(a)


def same(target_shape) -> tuple[tuple[int, ...], Callable]:
    return tuple(target_shape), lambda a: a


class CheckpointMismatch(ValueError):
    """The checkpoint does not hold the network the config builds."""


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def path_name(path: Path) -> str:
    return "/".join(path)


# (regex on the diffjax parameter path, config keys that decide it); the first match wins.
HINTS: tuple[tuple[str, str], ...] = (
    (r"^(input_blocks|middle_block|out|time_embed)_\d", "classifier.nf, ch_mult, num_res_blocks, "
     "attn_resolutions, num_head_channels, pool, resblock_updown or use_scale_shift_norm, or "
     "data.image_size (configs/imagenet_adm_classifier.py:<size> has the published ones)"),
    (r"^conv_in/|^conv_out/", "data.num_channels or model.unet.nf"),
    (r"^noise_features/", "model.noise_embedding ('fourier' has these) or model.unet.nf"),
    (r"^temb_0/", "model.noise_embedding ('positional': nf features, 'fourier': 2 nf) or "
                  "model.unet.nf"),
    (r"^temb_", "model.unet.nf or model.unet.noise_conditional"),
    (r"^label_embedding/|^label_embed/",
     "model.conditional, data.num_classes or model.unet.label_embedding"),
    (r"^augment_embedding/", "model.unet.augment_dim (EDM: 9)"),
    (r"_attn", "model.unet.attn_resolutions"),
    (r"_pyramid", "model.unet.progressive, progressive_input or progressive_combine"),
    (r"_resample/Conv2d_0|_pyramid/Conv2d_0", "model.unet.fir"),
    (r"_resample", "model.unet.resblock_type, resamp_with_conv or fir"),
    (r"/NIN_0/|/Conv_2/", "model.unet.resblock_type or model.unet.ch_mult"),
    (r"^(down|up|mid)_", "model.unet.nf, ch_mult or num_res_blocks"),
    (r"^norm_out/", "model.unet.nf or model.unet.progressive"),
    (r"^patch_embed/", "model.dit.patch_size, model.dit.size/hidden_size or data.num_channels"),
    (r"^pos_embed", "model.dit.pos_embed or data.image_size"),
    (r"^final/linear", "model.dit.learn_sigma, model.dit.patch_size or data.num_channels"),
    (r"^block_\d+/attn", "model.dit.size, hidden_size or num_heads"),
    (r"^block_|^final/|^noise_embed/", "model.dit.size, hidden_size or depth"),
)


def config_hint(path: Path) -> str:
    name = path_name(path)
    for pattern, keys in HINTS:
        if re.search(pattern, name):
            return keys
    return "the model section of the config"


def apply_rules(rules: Sequence[Rule], tensors: Mapping[str, np.ndarray], *, source: str,
                ignore: Callable[[str], bool] = lambda name: False,
                extra_hint: str = "model.unet.num_res_blocks, ch_mult or attn_resolutions "
                                  "(the config builds fewer layers than the checkpoint holds)"
                ) -> dict[Path, np.ndarray]:
    """Checks every name and shape, then converts. Raises CheckpointMismatch (one line)."""
    used: set[str] = set()
    for rule in rules:
        for name, shape in zip(rule.sources, rule.source_shapes):
            target = path_name(rule.targets[0])
            if name not in tensors:
                unused = [n for n in tensors if n not in used and not ignore(n)
                          and not any(n in r.sources for r in rules)]
                first = (f"; the checkpoint's first parameter that the config has no place for "
                         f"is {unused[0]!r} {_shape(np.shape(tensors[unused[0]]))}"
                         if unused else "")
                raise CheckpointMismatch(
                    f"checkpoint and config differ at {source} parameter {name!r}: the config's "
                    f"network needs it with shape {_shape(shape)} (for {target}), the checkpoint "
                    f"has no such parameter{first}; check {config_hint(rule.targets[0])}.")
            actual = tuple(np.shape(tensors[name]))
            if actual != tuple(shape):
                raise CheckpointMismatch(
                    f"checkpoint and config differ at {source} parameter {name!r}: the "
                    f"checkpoint has shape {_shape(actual)}, the config's network needs "
                    f"{_shape(shape)} (for {target}); check {config_hint(rule.targets[0])}.")
            used.add(name)
    for name, value in tensors.items():
        if name not in used and not ignore(name):
            raise CheckpointMismatch(
                f"checkpoint parameter {name!r} {_shape(np.shape(value))} has no counterpart in "
                f"the config's network; check {extra_hint}.")
    converted: dict[Path, np.ndarray] = {}
    for rule in rules:
        arrays = rule.convert([np.asarray(tensors[name], np.float32) for name in rule.sources])
        for path, array in zip(rule.targets, arrays):
            converted[path] = np.ascontiguousarray(array, dtype=np.float32)
    return converted
