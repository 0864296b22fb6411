"""LoRA: training adapters on any diffjax network (Google's qwix), and the LoRA files people
share for Stable Diffusion (diffusers/PEFT and kohya-ss layouts), applied unmerged or fused.

    # Files (inference): one adapter per file, each with its own scale
    adapter = diffjax.lora.load_lora({"unet": unet_params, "text_encoder": te_params},
                                     "style.safetensors", scale=0.8)
    unet_params_now = diffjax.lora.apply_lora(unet_params, [adapter], "unet")   # in jit
    fused = diffjax.lora.fuse_lora(unet_params, [adapter], "unet")             # or merged
    diffjax.lora.save_lora("out.safetensors", adapter, {"unet": unet_params})

    # Training (configs): --config.model.lora.rank=4 --config.model.lora.base=WORKDIR
    model = diffjax.lora.lora_network(model, LoraSettings(rank=4, alpha=4, targets="attention"))

Files: targets.py (which layers: regular expressions over module paths, presets),
network.py (qwix's LoraProvider on a linen module; base / adapter split of the parameters),
layouts.py (the LoRA-able layers of a U-Net / CLIP and the names diffusers, PEFT, kohya and
SDXL's sgm code give them), files.py (reading and writing the files with numpy), adapters.py
(the `Adapter` a file becomes, `apply_lora`, `fuse_lora` / `unfuse_lora`, export of a
qwix-trained adapter).

Imports: models (the U-Net's parameter names), storage (safetensors), and the qwix library;
never torch, diffusers or peft.
"""

from diffjax.lora.adapters import (Adapter, adapter_from_qwix, apply_lora, components_for,
                                   fuse_lora, load_lora, save_lora, unfuse_lora)
from diffjax.lora.network import LoraSettings, lora_network, merge, split
from diffjax.lora.targets import PRESETS, target_regex

__all__ = [
    "Adapter", "LoraSettings", "PRESETS", "adapter_from_qwix", "apply_lora", "components_for",
    "fuse_lora", "load_lora", "lora_network", "merge", "save_lora", "split", "target_regex",
    "unfuse_lora",
]
