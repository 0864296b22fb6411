"""Where a LoRA file's keys point: the LoRA-able layers of a Stable Diffusion component and the
names the published layouts give them.

A layer is a Dense or Conv kernel of the Flax parameters (`Layer.path` + "kernel"), named as
the reference names the module: diffusers' U-Net names (`down_blocks.0.attentions.0.
transformer_blocks.0.attn1.to_q`, `mid_block.resnets.1.conv1`) or transformers' CLIP names
(`encoder.layers.0.self_attn.q_proj`; `text_model.` prefixed as older files write it).

Layouts (what diffusers 0.42's `load_lora_weights` reads, checked by tests/fixtures/lora):
* diffusers / PEFT: `unet.<module>.lora_A.weight` (r, in[, kh, kw]) and `.lora_B.weight`
  (out, r[, 1, 1]); `text_encoder.` / `text_encoder_2.` for the text encoders; diffusers' older
  `.lora.down.weight` / `.lora.up.weight` and attention-processor names
  (`attn1.processor.to_q_lora.down.weight`, `self_attn.to_q_lora...`, `mlp.fc1.lora_linear_
  layer...`) map to the same modules. The scale comes from the file's `lora_adapter_metadata`
  (PEFT's LoraConfig: lora_alpha, r, alpha_pattern, rank_pattern, use_rslora) or `.alpha`
  tensors; with neither it is 1 (alpha = r), as diffusers does.
* kohya-ss: `lora_unet_<module with "." -> "_">.lora_down.weight` / `.lora_up.weight` /
  `.alpha` (scale alpha / r); `lora_te_` (or `lora_te1_`) and `lora_te2_` name the text
  encoders by their `text_model.` path. SDXL files name U-Net blocks as Stability's sgm code
  does; `sgm_name` maps a diffusers name to it exactly as diffusers' converter reads it
  (`_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key`): input_blocks.0.0 = conv_in,
  input_blocks.{1 + block offset + layer}.{0 resnet | 1 attention}, the down-sampler
  input_blocks.{..}.0.op, middle_block.{0, 1, 2}, output_blocks.{offset + layer}.{0 | 1 |
  upsampler 2 (1 without attention)}, resnet parts in_layers.2 / emb_layers.1 / out_layers.3 /
  skip_connection, time_embed.{0,2}, label_emb.0.{0,2}, out.{0,2}. Rather than rewriting key
  strings, every layer's possible names are generated from the model, so a key either names
  one layer or is reported.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
KOHYA_PREFIXES = {"unet": ("lora_unet_",), "text_encoder": ("lora_te_", "lora_te1_"),
                  "text_encoder_2": ("lora_te2_",)}
TEXT_MODEL = "text_model."

_RESNET_SGM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3",
               "conv_shortcut": "skip_connection"}
_TOP_SGM = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
            "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0",
            "conv_out": "out.2"}


@dataclasses.dataclass(frozen=True)
class Layer:
    """One LoRA-able weight: params[path]["kernel"], Dense (in, out) or Conv (kh, kw, in, out)."""

    path: tuple[str, ...]
    name: str
    kernel_shape: tuple[int, ...]

    @property
    def is_conv(self) -> bool:
        return len(self.kernel_shape) == 4

    @property
    def in_features(self) -> int:
        return self.kernel_shape[-2]

    @property
    def out_features(self) -> int:
        return self.kernel_shape[-1]

    def describe(self) -> str:
        if self.is_conv:
            kh, kw = self.kernel_shape[:2]
            return f"a {kh}x{kw} conv {self.in_features} -> {self.out_features}"
        return f"a linear {self.in_features} -> {self.out_features}"

    def down_shape(self, rank: int) -> tuple[int, ...]:
        """lora_A / lora_down in PyTorch's layout."""
        if self.is_conv:
            return (rank, self.in_features, *self.kernel_shape[:2])
        return (rank, self.in_features)

    def up_shape(self, rank: int) -> tuple[int, ...]:
        return (self.out_features, rank, 1, 1) if self.is_conv else (self.out_features, rank)


@dataclasses.dataclass(frozen=True)
class Component:
    """The LoRA-able layers of one model, by every name a file may give them."""

    name: str  # "unet", "text_encoder", "text_encoder_2"
    layers: Mapping[str, Layer]  # by the reference's module name
    aliases: Mapping[str, str]  # other module names (sgm, text_model.-prefixed) -> name

    def layer(self, module: str) -> Layer | None:
        module = self.aliases.get(module, module)
        return self.layers.get(module)

    def kohya_names(self) -> dict[str, str]:
        """kohya module key (`lora_unet_down_blocks_0_...`) -> layer name."""
        names = {}
        for prefix in KOHYA_PREFIXES[self.name]:
            for module in (*self.layers, *self.aliases):
                names[prefix + module.replace(".", "_")] = self.aliases.get(module, module)
        return names


def _kernels(params: Any) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        if keys[-1] == "kernel" and len(leaf.shape) in (2, 4):
            out.append((keys[:-1], tuple(leaf.shape)))
    return out


def component(name: str, params: Any, name_of: Callable[[tuple[str, ...]], str],
              aliases: Mapping[str, str] | None = None) -> Component:
    """The layers of `params` (any Flax tree), named by `name_of(module path)`."""
    layers = {}
    for path, shape in _kernels(params):
        layers[name_of(path)] = Layer(path, name_of(path), shape)
    return Component(name, layers, dict(aliases or {}))


def unet_component(params: Any, config=None) -> Component:
    """A diffusers UNet2DConditionModel's layers (config: its `UNetConfig`, for sgm names)."""
    from diffjax.models.sd_unet_weights import torch_name

    def name_of(path):
        return torch_name(path + ("kernel",)).removesuffix(".weight")

    made = component("unet", params, name_of)
    if config is None:
        return made
    aliases = {}
    for layer in made.layers:
        sgm = sgm_name(layer, config)
        if sgm and sgm != layer:
            aliases[sgm] = layer
    return dataclasses.replace(made, aliases=aliases)


def text_component(params: Any, name: str = "text_encoder") -> Component:
    """A CLIP text encoder's layers; `text_model.`-prefixed names are aliases."""
    from diffjax.storage.torch_layout import torch_name

    def name_of(path):
        return torch_name(path + ("kernel",)).removesuffix(".weight")

    made = component(name, params, name_of)
    aliases = {TEXT_MODEL + layer: layer for layer in made.layers
               if not layer.startswith("text_projection")}
    return dataclasses.replace(made, aliases=aliases)


def sgm_name(name: str, config) -> str | None:
    """diffusers' U-Net module name -> Stability's sgm name, for a diffjax `UNetConfig`."""
    if name in _TOP_SGM:
        return _TOP_SGM[name]
    parts = name.split(".")
    layers = list(config.layers_per_block)

    def resnet(rest):
        return [_RESNET_SGM.get(rest[0], rest[0])] + rest[1:]

    try:
        if parts[0] == "down_blocks":
            block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            start = 1 + sum(n + 1 for n in layers[:block])
            if kind == "downsamplers":
                return ".".join([f"input_blocks.{start + layers[block]}", "0", "op"] + rest[1:])
            inner = ["0"] + resnet(rest) if kind == "resnets" else ["1"] + rest
            return ".".join([f"input_blocks.{start + layer}"] + inner)
        if parts[0] == "mid_block":
            kind, layer, rest = parts[1], int(parts[2]), parts[3:]
            index = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, layer)]
            inner = resnet(rest) if kind == "resnets" else rest
            return ".".join([f"middle_block.{index}"] + inner)
        if parts[0] == "up_blocks":
            block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
            up_layers = [n + 1 for n in reversed(layers)]
            start = sum(up_layers[:block])
            if kind == "upsamplers":
                position = "2" if config.up_attention[block] else "1"
                return ".".join([f"output_blocks.{start + up_layers[block] - 1}", position]
                                + rest)
            inner = ["0"] + resnet(rest) if kind == "resnets" else ["1"] + rest
            return ".".join([f"output_blocks.{start + layer}"] + inner)
    except (IndexError, KeyError, ValueError):
        return None
    return None
