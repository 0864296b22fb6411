"""LoRA files applied to Stable Diffusion components: unmerged adapters with their own scales,
and fuse / unfuse.

    unet = {"unet": unet_params, "text_encoder": te_params}           # what the file may touch
    style = diffjax.lora.load_lora(unet, "style.safetensors", scale=0.8)
    detail = diffjax.lora.load_lora(unet, "detail.safetensors", scale=0.5)
    params = diffjax.lora.apply_lora(unet_params, [style, detail], "unet")  # inside jit
    out = unet_module.apply({"params": params}, sample, t, context)

`load_lora` reads the file once (`diffjax.lora.files`) into an `Adapter`: per component,
{Flax module path: (down, up, factor)} in Flax's layout (down (in, r) or (kh, kw, in, r),
up (r, out); qwix's `*_lora_a` / `*_lora_b` layout) with factor = alpha / r, plus the user
`scale` as an array. `apply_lora(params, adapters, component)` is pure and jittable: each
adapted kernel becomes W + sum_i scale_i factor_i down_i @ up_i, the same delta diffusers'
PEFT layers add (W x + scale (alpha / r) B A x), computed in float32 before any cast to the
compute dtype. The stored parameters never change: scales are traced values (changing one
recompiles nothing) and adapters come and go freely. Call it once per generation, outside the
denoising loop: for a rank-r adapter on an (in, out) layer it costs in * r * out
multiply-adds, once, where the layer itself costs that per pixel at every step.

`fuse_lora` writes the same sum into the parameters (numpy or jax arrays; diffusers'
`fuse_lora(lora_scale=...)`), and `unfuse_lora` subtracts it again: the original returns to
float32 rounding (|delta| * 2^-24 per element).

What differs from diffusers: the delta is added to the weight instead of computing B(A x) next
to W x (equal up to float rounding: ~1e-7 relative in float32); under a bfloat16 compute dtype
the adapted weight is rounded once to bfloat16, as a fused LoRA is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.lora import files
from diffjax.lora.layouts import Component, text_component, unet_component


@flax.struct.dataclass
class Adapter:
    """One LoRA file's weights for each component it touches, and its scale."""

    layers: dict  # {component: {"/"-joined module path: {"down", "up", "factor"}}}
    scale: jax.Array
    name: str = flax.struct.field(pytree_node=False, default="")

    def with_scale(self, scale: float) -> "Adapter":
        return self.replace(scale=jnp.asarray(scale, jnp.float32))

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self.layers)

    def num_params(self) -> int:
        return sum(int(np.size(v["down"]) + np.size(v["up"]))
                   for layers in self.layers.values() for v in layers.values())


def components_for(params: Mapping[str, Any], unet_config=None) -> dict[str, Component]:
    """The LoRA-able layers of each given component ("unet", "text_encoder",
    "text_encoder_2"); `unet_config` (a UNetConfig) adds SDXL's sgm names."""
    made = {}
    for name, tree in params.items():
        if name == "unet":
            made[name] = unet_component(tree, unet_config)
        elif name in ("text_encoder", "text_encoder_2"):
            made[name] = text_component(tree, name)
        else:
            raise ValueError(f"Unknown component {name!r}; LoRA files name 'unet', "
                             f"'text_encoder' and 'text_encoder_2'.")
    return made


def _as_components(params) -> Mapping[str, Any]:
    if isinstance(params, Mapping) and set(params) <= {"unet", "text_encoder", "text_encoder_2"}:
        return params
    return {"unet": params}  # a bare U-Net parameter tree


def to_flax(lora: files.LayerLora) -> dict[str, np.ndarray]:
    """PyTorch down (r, in[, kh, kw]) / up (out, r[, 1, 1]) -> Flax down (in, r) or
    (kh, kw, in, r) and up (r, out)."""
    if lora.down.ndim == 4:
        down = lora.down.transpose(2, 3, 1, 0)
        up = lora.up.reshape(lora.up.shape[0], lora.up.shape[1]).T
    else:
        down, up = lora.down.T, lora.up.T
    return {"down": np.ascontiguousarray(down, np.float32),
            "up": np.ascontiguousarray(up, np.float32),
            "factor": np.asarray(lora.scale, np.float32)}


def from_flax(entry: Mapping[str, Any]) -> files.LayerLora:
    down, up = np.asarray(entry["down"], np.float32), np.asarray(entry["up"], np.float32)
    if down.ndim == 4:
        torch_down = down.transpose(3, 2, 0, 1)
        torch_up = up.T[:, :, None, None]
    else:
        torch_down, torch_up = down.T, up.T
    return files.LayerLora(np.ascontiguousarray(torch_down), np.ascontiguousarray(torch_up),
                           float(np.asarray(entry["factor"])))


def load_lora(params, path: str, scale: float = 1.0, *, name: str | None = None,
              unet_config=None) -> Adapter:
    """The LoRA file at `path` as an `Adapter` for `params`: {"unet": ..., "text_encoder": ...,
    "text_encoder_2": ...} (the components the pipeline has) or one U-Net parameter tree.
    Every key must fit one of them; the first that does not is a one-line ValueError."""
    components = components_for(_as_components(params), unet_config)
    read = files.read_lora(path, components)
    layers = {}
    for component, by_name in read.items():
        made = components[component]
        layers[component] = {"/".join(made.layers[n].path): to_flax(lora)
                             for n, lora in by_name.items()}
    return Adapter(layers, jnp.asarray(scale, jnp.float32), name or str(path))


def _delta(entry: Mapping[str, Any]) -> jax.Array:
    down, up = jnp.asarray(entry["down"], jnp.float32), jnp.asarray(entry["up"], jnp.float32)
    return jnp.tensordot(down, up, axes=1) * jnp.asarray(entry["factor"], jnp.float32)


def _deltas(adapters: Adapter | Sequence[Adapter], component: str) -> dict[str, list]:
    adapters = [adapters] if isinstance(adapters, Adapter) else list(adapters)
    out: dict[str, list] = {}
    for adapter in adapters:
        for path, entry in adapter.layers.get(component, {}).items():
            out.setdefault(path, []).append((adapter.scale, entry))
    return out


def _update(params: Any, path: str, fn) -> Any:
    keys = path.split("/")
    node = params
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"The adapter's layer {path!r} is not in these parameters; load "
                             f"the LoRA with the same component's parameters.")
        node = node[key]
    return _replace(params, keys + ["kernel"], fn)


def _replace(tree: Any, keys: list[str], fn) -> Any:
    out = dict(tree)
    out[keys[0]] = fn(tree[keys[0]]) if len(keys) == 1 else _replace(tree[keys[0]], keys[1:], fn)
    return out


def _combined(params: Any, adapters, component: str, sign: float, use_numpy: bool) -> Any:
    for path, terms in _deltas(adapters, component).items():
        def add(kernel, terms=terms):
            total = sum(scale * _delta(entry) for scale, entry in terms)
            if use_numpy:
                return (np.asarray(kernel, np.float32) +
                        sign * np.asarray(total, np.float32)).astype(np.asarray(kernel).dtype)
            return (jnp.asarray(kernel, jnp.float32) + sign * total).astype(kernel.dtype)

        params = _update(params, path, add)
    return params


def apply_lora(params: Any, adapters: Adapter | Sequence[Adapter], component: str = "unet"
               ) -> Any:
    """`params` with every adapter's delta added to the layers it adapts (pure, jittable; the
    input is not modified)."""
    return _combined(params, adapters, component, 1.0, use_numpy=False)


def fuse_lora(params: Any, adapters: Adapter | Sequence[Adapter], component: str = "unet"
              ) -> Any:
    """The fused parameters W + sum scale factor down @ up (numpy float32 where given numpy)."""
    use_numpy = all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(params))
    return _combined(params, adapters, component, 1.0, use_numpy)


def unfuse_lora(params: Any, adapters: Adapter | Sequence[Adapter], component: str = "unet"
                ) -> Any:
    """The inverse of `fuse_lora` with the same adapters and scales (to float32 rounding)."""
    use_numpy = all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(params))
    return _combined(params, adapters, component, -1.0, use_numpy)


def adapter_from_qwix(adapter_params: Any, scale: float, component: str = "unet",
                      name: str = "") -> Adapter:
    """A qwix-trained LoRA (`*_lora_a` (in, r) / `*_lora_b` (r, out) leaves, scale alpha / r)
    as an `Adapter` (for `save_lora` or `apply_lora`). Only 2-D and conv kernels map to
    reference layers; DiT's DenseGeneral adapters stay in diffjax's checkpoints."""
    layers = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(adapter_params)[0]:
        keys = [str(getattr(k, "key", k)) for k in path]
        if not keys[-1].endswith("_lora_a"):
            continue
        weight = keys[-1][:-len("_lora_a")]
        node = adapter_params
        for key in keys[:-1]:
            node = node[key]
        a, b = np.asarray(leaf, np.float32), np.asarray(node[weight + "_lora_b"], np.float32)
        if weight != "kernel" or a.ndim not in (2, 4):
            raise ValueError(f"The adapter of {'/'.join(keys[:-1])}/{weight} (shape "
                             f"{a.shape}) has no PyTorch LoRA layout; only Dense and Conv "
                             f"kernels are written to LoRA files.")
        layers["/".join(keys[:-1])] = {"down": a, "up": b,
                                       "factor": np.asarray(scale, np.float32)}
    return Adapter({component: layers}, jnp.asarray(1.0, jnp.float32), name)


def save_lora(path: str, adapter: Adapter, params, *, layout: str = "peft",
              unet_config=None) -> str:
    """Writes `adapter` (its scale folded in) as a diffusers/PEFT file (`layout="peft"`,
    loadable by diffusers' `load_lora_weights`) or a kohya-ss file (`"kohya"`, `"kohya_sgm"`
    for SDXL's block names). `params` as for `load_lora` (to name the layers)."""
    components = components_for(_as_components(params), unet_config)
    by_name: dict[str, dict[str, files.LayerLora]] = {}
    scale = float(np.asarray(adapter.scale))
    for component, layers in adapter.layers.items():
        if component not in components:
            raise ValueError(f"The adapter has {component} layers but no {component} "
                             f"parameters were given.")
        made = components[component]
        names = {"/".join(layer.path): name for name, layer in made.layers.items()}
        for flax_path, entry in layers.items():
            lora = from_flax(entry)
            lora = dataclasses.replace(lora, scale=lora.scale * scale)
            by_name.setdefault(component, {})[names[flax_path]] = lora
    if layout == "peft":
        return files.write_peft(path, by_name)
    if layout in ("kohya", "kohya_sgm"):
        return files.write_kohya(path, by_name, components, sgm=layout == "kohya_sgm")
    raise ValueError(f"layout={layout!r}; choose 'peft', 'kohya' or 'kohya_sgm'.")
