"""LoRA files (safetensors) read into and written from per-layer adapters, with numpy.

`read_lora(path, components)` reads a diffusers/PEFT or kohya-ss file (the layouts are in
`diffjax.lora.layouts`) and returns, per component present in the file, {layer name:
`LayerLora`}: the down / up matrices in PyTorch's layout and the scale alpha / r the reference
applies (PEFT's `rank_pattern` / `alpha_pattern` / `use_rslora` from the file's metadata,
kohya's `.alpha`). Every key must name a layer of the given components with the shapes that
layer takes; the first one that does not is a one-line ValueError naming the key and what was
expected. DoRA (`lora_magnitude_vector`, `dora_scale`) and LoRA biases are refused the same way.

`write_peft` / `write_kohya` are the inverses: a file diffusers' `load_lora_weights` loads (the
PEFT one carries the LoraConfig in `lora_adapter_metadata`, as `save_lora_weights` writes it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from typing import Mapping

import numpy as np

from diffjax.lora.layouts import KOHYA_PREFIXES, Component
from diffjax.storage import safetensors_files

METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PEFT_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
_FIX = "use a LoRA made for this model (diffusers/PEFT or kohya-ss layout)"
_PEFT_DOWN = (".lora_A.weight", ".lora.down.weight", ".lora_down.weight")
_PEFT_UP = (".lora_B.weight", ".lora.up.weight", ".lora_up.weight")
_UNSUPPORTED = (("lora_magnitude_vector", "DoRA"), ("dora_scale", "DoRA"),
                (".lora_B.bias", "LoRA biases (lora_bias)"), ("lokr_", "LoKr"),
                ("hada_", "LoHa"))
# diffusers' pre-PEFT attention-processor names, per component kind.
_OLD_UNET = ((re.compile(r"\.processor\.(to_q|to_k|to_v)_lora\."), r".\1.lora."),
             (re.compile(r"\.processor\.to_out_lora\."), ".to_out.0.lora."))
_OLD_TEXT = ((re.compile(r"\.(q|k|v)_proj\.lora_linear_layer\."), r".\1_proj.lora."),
             (re.compile(r"\.to_(q|k|v)_lora\."), r".\1_proj.lora."),
             (re.compile(r"\.to_out_lora\."), ".out_proj.lora."),
             (re.compile(r"\.lora_linear_layer\."), ".lora."))


@dataclasses.dataclass
class LayerLora:
    """One layer's adapter: delta W = scale * up @ down (PyTorch layouts, float32)."""

    down: np.ndarray  # (r, in) or (r, in, kh, kw)
    up: np.ndarray  # (out, r) or (out, r, 1, 1)
    scale: float  # alpha / r (PEFT: alpha / sqrt(r) with use_rslora)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def _closest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.0)
    return close[0] if close else (candidates[0] if candidates else "")


def _strip(name: str, suffixes: tuple[str, ...]) -> str | None:
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return None


def _pattern_value(patterns: Mapping[str, float], module: str, default):
    """PEFT's get_pattern_key: the first pattern p with re.match(rf"(.*\\.)?({p})$", module)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _metadata(path: str) -> dict:
    raw = safetensors_files.read_metadata(path).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: {METADATA_KEY} is not JSON ({e}); {_FIX}.") from None


def _check_layer(path: str, key: str, component: Component, module: str, down, up):
    layer = component.layer(module)
    if layer is None:
        raise ValueError(
            f"{path}: key {key!r} names no LoRA-able layer {module!r} of the {component.name}; "
            f"expected a module such as {_closest(module, list(component.layers))!r} ({_FIX}).")
    rank = down.shape[0]
    for what, got, want in (("down", down.shape, layer.down_shape(rank)),
                            ("up", up.shape, layer.up_shape(rank))):
        if tuple(got) != want:
            raise ValueError(f"{path}: key {key!r} ({what}) has shape {tuple(got)} but the "
                             f"{component.name}'s {layer.name} is {layer.describe()}: expected "
                             f"{want} ({_FIX}).")
    return layer


def read_lora(path: str, components: Mapping[str, Component]
              ) -> dict[str, dict[str, LayerLora]]:
    """{component name: {layer name: LayerLora}} of the file, checked against `components`."""
    tensors = safetensors_files.read_safetensors(path, _FIX)
    if not tensors:
        raise ValueError(f"{path} holds no tensors; {_FIX}.")
    for key in tensors:
        for marker, what in _UNSUPPORTED:
            if marker in key:
                raise ValueError(f"{path}: key {key!r} belongs to {what}, which diffjax does not "
                                 f"apply; use a plain LoRA.")
    kohya = all(k.startswith(sum(KOHYA_PREFIXES.values(), ())) for k in tensors)
    if kohya:
        return _read_kohya(path, tensors, components)
    return _read_peft(path, tensors, components, _metadata(path))


def _component_of(path: str, key: str, components: Mapping[str, Component]) -> tuple[str, str]:
    for name in sorted(components, key=len, reverse=True):
        if key.startswith(name + "."):
            return name, key[len(name) + 1:]
    prefixes = sorted(f"{c}." for c in components)
    raise ValueError(f"{path}: key {key!r} does not start with a component this LoRA can apply "
                     f"to ({', '.join(prefixes)} given); pass the missing component's "
                     f"parameters or {_FIX}.")


def _read_peft(path, tensors, components, metadata) -> dict[str, dict[str, LayerLora]]:
    grouped: dict[tuple[str, str], dict[str, tuple[str, np.ndarray]]] = {}
    for key, value in tensors.items():
        component, rest = _component_of(path, key, components)
        for pattern, replacement in (_OLD_UNET if component == "unet" else _OLD_TEXT):
            rest = pattern.sub(replacement, rest)
        for role, suffixes in (("down", _PEFT_DOWN), ("up", _PEFT_UP), ("alpha", (".alpha",))):
            module = _strip(rest, suffixes)
            if module is not None:
                grouped.setdefault((component, module), {})[role] = (key, value)
                break
        else:
            raise ValueError(f"{path}: key {key!r} is not a LoRA weight (expected "
                             f"<module>.lora_A.weight / .lora_B.weight, or .alpha); {_FIX}.")
    out: dict[str, dict[str, LayerLora]] = {}
    for (component, module), parts in grouped.items():
        config = {k[len(component) + 1:]: v for k, v in metadata.items()
                  if k.startswith(component + ".")}
        lora = _layer_lora(path, components[component], module, parts, config)
        out.setdefault(component, {})[components[component].layer(module).name] = lora
    return out


def _layer_lora(path, component, module, parts, config) -> LayerLora:
    if "down" not in parts or "up" not in parts:
        have, missing = next(iter(parts.values()))[0], "up" if "down" in parts else "down"
        raise ValueError(f"{path}: {have!r} has no matching {missing} weight; {_FIX}.")
    (down_key, down), (_, up) = parts["down"], parts["up"]
    _check_layer(path, down_key, component, module, down, up)
    rank = int(down.shape[0])
    if "alpha" in parts:
        alpha = float(np.asarray(parts["alpha"][1]).reshape(()))
    elif config:
        alpha = float(_pattern_value(config.get("alpha_pattern"), module,
                                     config.get("lora_alpha", rank)))
        if config.get("use_dora"):
            raise ValueError(f"{path}: the LoraConfig says use_dora; DoRA is not applied by "
                             f"diffjax; use a plain LoRA.")
    else:
        alpha = float(rank)  # diffusers: no alphas means scale 1
    rslora = bool(config.get("use_rslora")) if config else False
    scale = alpha / (np.sqrt(rank) if rslora else rank)
    return LayerLora(np.asarray(down, np.float32), np.asarray(up, np.float32), float(scale))


def _read_kohya(path, tensors, components) -> dict[str, dict[str, LayerLora]]:
    names: dict[str, tuple[str, str]] = {}
    for name, component in components.items():
        for key, layer in component.kohya_names().items():
            names[key] = (name, layer)
    grouped: dict[str, dict[str, tuple[str, np.ndarray]]] = {}
    for key, value in tensors.items():
        module, _, role = key.partition(".")
        role = {"lora_down.weight": "down", "lora_up.weight": "up", "alpha": "alpha"}.get(role)
        if role is None:
            raise ValueError(f"{path}: key {key!r} is not a kohya LoRA weight (expected "
                             f"<name>.lora_down.weight, .lora_up.weight or .alpha); {_FIX}.")
        grouped.setdefault(module, {})[role] = (key, value)
    out: dict[str, dict[str, LayerLora]] = {}
    for module, parts in sorted(grouped.items()):  # the same first error whatever the file order
        if module not in names:
            key = next(iter(parts.values()))[0]
            prefix = next((p for c, ps in KOHYA_PREFIXES.items() for p in ps
                           if module.startswith(p)), "lora_unet_")
            component = next((c for c, ps in KOHYA_PREFIXES.items() if prefix in ps), "unet")
            if component not in components:
                raise ValueError(f"{path}: key {key!r} is for the {component}, whose parameters "
                                 f"were not given; pass them or {_FIX}.")
            example = _closest(module, [n for n in names if n.startswith(prefix)])
            raise ValueError(f"{path}: key {key!r} names no LoRA-able layer of the "
                             f"{component}; expected a name such as {example!r} ({_FIX}).")
        component, layer = names[module]
        lora = _layer_lora(path, components[component], layer, parts, {})
        out.setdefault(component, {})[layer] = lora
    return out


# --- writing --------------------------------------------------------------------------------

def write_peft(path: str, adapters: Mapping[str, Mapping[str, LayerLora]]) -> str:
    """A diffusers/PEFT file; each component's LoraConfig goes into the metadata (its most
    common rank and alpha, and rank_pattern / alpha_pattern for the other layers)."""
    tensors, metadata = {}, {}
    for component, layers in adapters.items():
        for name, lora in layers.items():
            tensors[f"{component}.{name}.lora_A.weight"] = lora.down
            tensors[f"{component}.{name}.lora_B.weight"] = lora.up
        config = _lora_config(layers)
        metadata.update({f"{component}.{k}": v for k, v in config.items()})
    header = {"format": "pt", METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)}
    return safetensors_files.write_safetensors(path, tensors, header)


def _anchored(name: str) -> str:
    # PEFT matches patterns as suffixes; "^" anchors at the start (peft PR 2419), which keeps
    # `conv1` from also meaning every `*.conv1`.
    return "^" + re.escape(name)


def _lora_config(layers: Mapping[str, LayerLora]) -> dict:
    ranks = {name: lora.rank for name, lora in layers.items()}
    alphas = {name: lora.scale * lora.rank for name, lora in layers.items()}
    rank = max(set(ranks.values()), key=list(ranks.values()).count)
    alpha = max(set(alphas.values()), key=list(alphas.values()).count)
    return {
        "r": rank, "lora_alpha": alpha, "target_modules": sorted(layers),
        "rank_pattern": {_anchored(n): r for n, r in ranks.items() if r != rank},
        "alpha_pattern": {_anchored(n): a for n, a in alphas.items() if a != alpha},
        "use_rslora": False, "use_dora": False, "lora_dropout": 0.0, "bias": "none",
        "init_lora_weights": True, "peft_type": "LORA",
    }


def write_kohya(path: str, adapters: Mapping[str, Mapping[str, LayerLora]],
                components: Mapping[str, Component], sgm: bool = False) -> str:
    """A kohya-ss file (`lora_unet_...`, `lora_te_` / `lora_te1_`, `lora_te2_`); with `sgm` the
    U-Net's block names are Stability's (SDXL files)."""
    tensors = {}
    sdxl = "text_encoder_2" in adapters
    for component, layers in adapters.items():
        aliases = {v: k for k, v in components[component].aliases.items()}
        prefix = {"unet": "lora_unet_", "text_encoder": "lora_te1_" if sdxl else "lora_te_",
                  "text_encoder_2": "lora_te2_"}[component]
        for name, lora in layers.items():
            module = name
            if component != "unet":
                module = aliases.get(name, name)  # the text_model.-prefixed name kohya uses
            elif sgm:
                module = aliases.get(name, name)
            key = prefix + module.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = lora.down
            tensors[f"{key}.lora_up.weight"] = lora.up
            tensors[f"{key}.alpha"] = np.asarray(lora.scale * lora.rank, np.float32)
    return safetensors_files.write_safetensors(path, tensors)
