"""Write the reference fixtures of diffjax.lora: LoRA files in the layouts people share, and the
outputs diffusers computes with them loaded by its own `load_lora_weights`.

Outputs, under tests/fixtures/lora/ (together well under 300 KB), for the tiny random models of
tests/fixtures/sd_unet/{sd1,sdxl} and tests/fixtures/text/sd_tiny:

* sd1_peft.safetensors: a diffusers/PEFT LoRA written by `StableDiffusionPipeline.
  save_lora_weights` from PEFT-wrapped models (`unet.<module>.lora_A.weight` / `lora_B.weight`,
  `text_encoder.<module>...`, and the adapters' LoraConfig in the `lora_adapter_metadata`
  header entry): U-Net r = 4 with rank_pattern conv1 -> 2, lora_alpha 8 with alpha_pattern
  to_k -> 3; targets the attention projections, proj_in (a 1x1 conv), the resnets' conv1, the
  down/up-sampler convs (a stride-2 conv LoRA) and conv_in; text encoder r = 4, lora_alpha 2
  on q/k/v/out_proj and fc1.
* sd1_kohya.safetensors: the kohya-ss layout for the same models (`lora_unet_<module with
  underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`, `lora_te_text_model_...`),
  r = 3, alphas 1.5 (U-Net) and 6 (text encoder), with conv LoRA (LoCon: down (r, in, 3, 3),
  up (out, r, 1, 1)) on the resnets' conv1 and 1x1 conv_shortcut.
* sdxl_kohya.safetensors: a kohya SDXL file with the sgm block names (input_blocks.i.j,
  middle_block.i, output_blocks.i.j, in_layers_2, out_layers_3, emb_layers_1, skip_connection,
  op, time_embed_0, label_emb_0_0, out_2, ...) for the sdxl U-Net, plus `lora_te1_` /
  `lora_te2_` keys for the two text encoders' MLPs (diffusers 0.42.1 drops SDXL kohya files'
  text-encoder attention keys, see write_kohya_sdxl); r = 2, alpha 1.
* reference.npz: inputs (the U-Net's from tests/fixtures/sd_unet/reference_*.npz, token ids)
  and, computed by diffusers 0.42.1 + peft 0.21.2 in float64 and stored as float32 (`_f64`):
  `sd1_peft_unet`, `sd1_peft_te` (last_hidden_state), the same for `sd1_kohya_*` and
  `sdxl_kohya_unet` / `sdxl_kohya_te1` / `sdxl_kohya_te2` (hidden_states[-2], what SDXL uses,
  and `_te2_embeds`, text_embeds); `sd1_both_*`: both sd1 adapters loaded at once with
  `set_adapters(["peft", "kohya"], adapter_weights=[0.8, 0.5])`; `sd1_peft_scaled_unet`: the
  PEFT adapter alone at weight 0.6; `sd1_base_te`: the text encoder without LoRA;
  `fused_*`: after `pipe.fuse_lora(lora_scale=0.7)` of the PEFT adapter, the fused weights of
  two layers (`fused_to_q`, `fused_conv1`, PyTorch layouts) and the fused U-Net output.

transformers 5.25 asks for peft >= 0.22 (not released; peft 0.21.2 is the newest): the script
skips that version check, so diffusers' text-encoder LoRA loading runs with peft 0.21.2.

EVERY LoRA parameter is random (lora_B too, which PEFT starts at zero): N(0, 0.3^2 / fan_in)
for A (down), N(0, 1 / r) for B (up); stored in float16, as most shared LoRAs are.

A LoRA trained by diffjax loads in diffusers: `tools/train_lora_fixture.py` (diffjax's .venv)
trains one on the sd1 U-Net with qwix and writes tests/fixtures/lora/diffjax_trained/
(pytorch_lora_weights.safetensors + diffjax_outputs.npz). `--check-diffjax` loads that file
with `pipe.load_lora_weights` and compares diffusers' U-Net output with diffjax's, and records
the result in diffjax_trained/diffusers_check.json.

Regenerate from the repository root:

    /work/toolsenv/bin/python tools/make_lora_fixtures.py          # diffusers 0.42.1, peft 0.21.2
    .venv/bin/python tools/train_lora_fixture.py                    # diffjax (qwix)
    /work/toolsenv/bin/python tools/make_lora_fixtures.py --check-diffjax

Tests: tests/test_lora.py.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import (DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from diffusers.utils import logging
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.integrations import peft as transformers_peft

logging.set_verbosity_error()
# transformers 5.25 refuses peft < 0.22 for its text-encoder adapters, and 0.21.2 is the newest
# peft on PyPI: the version check is skipped (the LoRA injection it guards works with 0.21.2:
# the text-encoder outputs below differ from the base and match diffjax's).
transformers_peft.check_peft_version = lambda min_version=None: None

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "lora"
UNETS = REPO / "tests" / "fixtures" / "sd_unet"
TEXT = REPO / "tests" / "fixtures" / "text" / "sd_tiny"
TRAINED = OUT / "diffjax_trained"

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "conv", "conv_in"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1"]


# --- models --------------------------------------------------------------------------------

def unet(name: str) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(UNETS / name).double().eval()


def text_encoder(sub: str = "text_encoder"):
    cls = CLIPTextModel if sub == "text_encoder" else CLIPTextModelWithProjection
    variant = None if sub == "text_encoder" else "fp16"
    return cls.from_pretrained(TEXT, subfolder=sub, variant=variant).double().eval()


def sd1_pipeline() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=None, text_encoder=text_encoder(), tokenizer=CLIPTokenizer.from_pretrained(
            TEXT, subfolder="tokenizer"), unet=unet("sd1"), scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def sdxl_pipeline() -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(
        vae=None, text_encoder=text_encoder(), text_encoder_2=text_encoder("text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(TEXT, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(TEXT, subfolder="tokenizer_2"),
        unet=unet("sdxl"), scheduler=DDIMScheduler())


def randomise_lora(model: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_A" in name:
                fan_in = int(np.prod(param.shape[1:]))
                param.copy_(0.3 * torch.randn(param.shape, generator=generator,
                                              dtype=torch.float64) / np.sqrt(fan_in))
            elif "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64)
                            / np.sqrt(param.shape[1]))


# --- inputs and outputs ------------------------------------------------------------------

def unet_inputs(name: str) -> dict[str, np.ndarray]:
    ref = np.load(UNETS / f"reference_{name}.npz")
    keys = ["sample", "t_float", "context"] + (["text_embeds", "time_ids"] if name == "sdxl"
                                                else [])
    return {k: ref[k].astype(np.float64) for k in keys}


def token_ids() -> np.ndarray:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 812, size=(2, 9))
    ids[:, 0], ids[0, 6], ids[1, 8] = 812, 813, 813  # <|startoftext|> ... <|endoftext|>
    return ids


def run_unet(model, inputs: dict, dtype) -> np.ndarray:
    model.to(dtype)
    added = None
    if "text_embeds" in inputs:
        added = {k: torch.from_numpy(inputs[k]).to(dtype) for k in ("text_embeds", "time_ids")}
    sample = torch.from_numpy(inputs["sample"].transpose(0, 3, 1, 2).copy()).to(dtype)
    with torch.no_grad():
        out = model(sample, torch.from_numpy(inputs["t_float"]),
                    torch.from_numpy(inputs["context"]).to(dtype),
                    added_cond_kwargs=added).sample
    return out.permute(0, 2, 3, 1).numpy()


def run_text(model, ids: np.ndarray, dtype, what: str = "last") -> np.ndarray:
    model.to(dtype)
    with torch.no_grad():
        out = model(torch.from_numpy(ids), output_hidden_states=True)
    if what == "last":
        return out.last_hidden_state.numpy()
    if what == "penultimate":
        return out.hidden_states[-2].numpy()
    return out.text_embeds.numpy()


def both_dtypes(fn) -> dict[str, np.ndarray]:
    """diffusers in float64, stored as float32 (diffjax is checked at float32 precision)."""
    return {"f64": fn(torch.float64).astype(np.float32)}


# --- the files -----------------------------------------------------------------------------

def write_peft(path: Path, generator: torch.Generator) -> None:
    model, te = unet("sd1"), text_encoder()
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS,
                             rank_pattern={"conv1": 2}, alpha_pattern={"to_k": 3.0},
                             init_lora_weights=False)
    te_config = LoraConfig(r=4, lora_alpha=2, target_modules=TE_TARGETS,
                           init_lora_weights=False)
    model.add_adapter(unet_config)
    te.add_adapter(te_config)
    randomise_lora(model, generator)
    randomise_lora(te, generator)
    folder = Path(tempfile.mkdtemp())
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=to_float(get_peft_model_state_dict(model)),
        text_encoder_lora_layers=to_float(get_peft_model_state_dict(te)),
        unet_lora_adapter_metadata=unet_config.to_dict(),
        text_encoder_lora_adapter_metadata=te_config.to_dict())
    shutil.move(folder / "pytorch_lora_weights.safetensors", path)
    shutil.rmtree(folder)


def to_float(state: dict) -> dict:
    # float16 on disk (as most shared LoRAs): both sides read the same exactly representable
    # values.
    return {k: v.half().contiguous() for k, v in state.items()}


def lora_pair(generator, out_features: int, in_features: int, rank: int, kernel: int = 0):
    shape = (rank, in_features) + ((kernel, kernel) if kernel else ())
    fan_in = int(np.prod(shape[1:]))
    down = 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64) / np.sqrt(fan_in)
    up = torch.randn((out_features, rank) + ((1, 1) if kernel else ()), generator=generator,
                     dtype=torch.float64) / np.sqrt(rank)
    return down.half(), up.half()


def kohya_entries(generator, modules: dict[str, torch.nn.Module], prefix: str, rank: int,
                  alpha: float, rename=lambda name: name) -> dict[str, torch.Tensor]:
    """kohya's keys for `modules` (diffusers/transformers name -> nn.Linear or nn.Conv2d)."""
    state = {}
    for name, module in modules.items():
        if isinstance(module, torch.nn.Conv2d):
            down, up = lora_pair(generator, module.out_channels, module.in_channels, rank,
                                 module.kernel_size[0])
        else:
            down, up = lora_pair(generator, module.out_features, module.in_features, rank)
        key = prefix + rename(name).replace(".", "_")
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def pick(model: torch.nn.Module, suffixes: tuple[str, ...], prefix: str = "") -> dict:
    return {name: m for name, m in model.named_modules()
            if name.endswith(suffixes) and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            and name.startswith(prefix)}


def write_kohya_sd1(path: Path, generator) -> None:
    model, te = unet("sd1"), text_encoder()
    modules = pick(model, ("to_q", "to_k", "to_v", "to_out.0", "proj_out", "ff.net.2",
                           "conv1", "conv_shortcut", "time_emb_proj"))
    state = kohya_entries(generator, modules, "lora_unet_", 3, 1.5)
    text_modules = pick(te, ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))
    # kohya names the text encoder by the transformers 4 module path (text_model.encoder...).
    state.update(kohya_entries(generator, text_modules, "lora_te_", 3, 6.0,
                               rename=lambda n: n if n.startswith("text_model.")
                               else "text_model." + n))
    save_file(state, path)


def sgm_name(name: str, layers: list[int], attention: list[bool]) -> str:
    """diffusers' U-Net module name -> the sgm (LDM openaimodel) name kohya uses for SDXL."""
    resnet = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
              "norm2": "out_layers.0", "conv2": "out_layers.3",
              "conv_shortcut": "skip_connection"}
    top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
           "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0",
           "conv_out": "out.2"}
    if name in top:
        return top[name]
    parts = name.split(".")

    def inner(rest):
        if rest[0] in resnet:
            return [resnet[rest[0]]] + rest[1:]
        return rest

    if parts[0] == "down_blocks":
        block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        start = 1 + sum(n + 1 for n in layers[:block])
        if kind == "downsamplers":
            return f"input_blocks.{start + layers[block]}.0.op"
        return ".".join([f"input_blocks.{start + layer}", "0" if kind == "resnets" else "1"]
                        + (inner(rest) if kind == "resnets" else rest))
    if parts[0] == "mid_block":
        kind, layer, rest = parts[1], int(parts[2]), parts[3:]
        index = {("resnets", 0): 0, ("attentions", 0): 1, ("resnets", 1): 2}[(kind, layer)]
        return ".".join([f"middle_block.{index}"] + (inner(rest) if kind == "resnets" else rest))
    if parts[0] == "up_blocks":
        block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        up_layers = [n + 1 for n in reversed(layers)]
        start = sum(up_layers[:block])
        if kind == "upsamplers":
            position = 2 if list(reversed(attention))[block] else 1
            return f"output_blocks.{start + up_layers[block] - 1}.{position}.conv"
        return ".".join([f"output_blocks.{start + layer}", "0" if kind == "resnets" else "1"]
                        + (inner(rest) if kind == "resnets" else rest))
    raise ValueError(name)


def write_kohya_sdxl(path: Path, generator) -> None:
    model = unet("sdxl")
    config = model.config
    layers = [config.layers_per_block] * len(config.block_out_channels)
    attention = [t.startswith("CrossAttn") for t in config.down_block_types]
    modules = pick(model, ("to_q", "to_out.0", "proj_in", "ff.net.0.proj", "conv1", "conv2",
                           "conv_shortcut", "time_emb_proj", "conv", "conv_in", "conv_out",
                           "linear_1", "linear_2"))
    state = kohya_entries(generator, modules, "lora_unet_", 2, 1.0,
                          rename=lambda n: sgm_name(n, layers, attention))
    te1, te2 = text_encoder(), text_encoder("text_encoder_2")
    for prefix, te in (("lora_te1_", te1), ("lora_te2_", te2)):
        # The MLP only: diffusers 0.42.1's SDXL loader leaves kohya's lora_te1_/lora_te2_
        # attention keys in its old `self_attn.to_q_lora.down.weight` naming and skips them
        # (transformers reports them UNEXPECTED); diffjax applies them, as kohya and the SD 1.x
        # loader do (sd1_kohya pins that).
        text_modules = pick(te, ("fc1", "fc2"))
        state.update(kohya_entries(generator, text_modules, prefix, 2, 1.0,
                                   rename=lambda n: n if n.startswith("text_model.")
                                   else "text_model." + n))
    save_file(state, path)


# --- references ----------------------------------------------------------------------------

def references() -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    sd1_in, sdxl_in, ids = unet_inputs("sd1"), unet_inputs("sdxl"), token_ids()
    arrays["token_ids"] = ids

    def record(name, values):
        for suffix, value in values.items():
            arrays[f"{name}_{suffix}"] = value

    pipe = sd1_pipeline()
    record("sd1_base_te", both_dtypes(lambda d: run_text(pipe.text_encoder, ids, d)))
    for kind in ("peft", "kohya"):
        pipe = sd1_pipeline()
        pipe.load_lora_weights(str(OUT), weight_name=f"sd1_{kind}.safetensors",
                               adapter_name=kind)
        record(f"sd1_{kind}_unet", both_dtypes(lambda d: run_unet(pipe.unet, sd1_in, d)))
        record(f"sd1_{kind}_te", both_dtypes(lambda d: run_text(pipe.text_encoder, ids, d)))
        if kind == "peft":
            pipe.set_adapters(["peft"], adapter_weights=[0.6])
            record("sd1_peft_scaled_unet",
                   both_dtypes(lambda d: run_unet(pipe.unet, sd1_in, d)))

    pipe = sd1_pipeline()
    for kind in ("peft", "kohya"):
        pipe.load_lora_weights(str(OUT), weight_name=f"sd1_{kind}.safetensors",
                               adapter_name=kind)
    pipe.set_adapters(["peft", "kohya"], adapter_weights=[0.8, 0.5])
    record("sd1_both_unet", both_dtypes(lambda d: run_unet(pipe.unet, sd1_in, d)))
    record("sd1_both_te", both_dtypes(lambda d: run_text(pipe.text_encoder, ids, d)))

    pipe = sd1_pipeline()
    pipe.load_lora_weights(str(OUT), weight_name="sd1_peft.safetensors", adapter_name="peft")
    pipe.fuse_lora(lora_scale=0.7, components=["unet", "text_encoder"])
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    weights = dict(pipe.unet.named_parameters())
    arrays["fused_to_q"] = weights[
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"].detach().numpy()
    arrays["fused_conv1"] = weights["down_blocks.0.resnets.1.conv1.weight"].detach().numpy()
    record("fused_unet", {"f64": run_unet(pipe.unet, sd1_in, torch.float64)})

    pipe = sdxl_pipeline()
    pipe.load_lora_weights(str(OUT), weight_name="sdxl_kohya.safetensors", adapter_name="kohya")
    record("sdxl_kohya_unet", both_dtypes(lambda d: run_unet(pipe.unet, sdxl_in, d)))
    record("sdxl_kohya_te1", both_dtypes(
        lambda d: run_text(pipe.text_encoder, ids, d, "penultimate")))
    record("sdxl_kohya_te2", both_dtypes(
        lambda d: run_text(pipe.text_encoder_2, ids, d, "penultimate")))
    record("sdxl_kohya_te2_embeds", both_dtypes(
        lambda d: run_text(pipe.text_encoder_2, ids, d, "embeds")))
    return arrays


def check_diffjax_trained() -> None:
    """Loads diffjax's trained LoRA in diffusers and compares the U-Net outputs."""
    expected = np.load(TRAINED / "diffjax_outputs.npz")
    inputs = {k: expected[k].astype(np.float64) for k in ("sample", "t_float", "context")}
    pipe = sd1_pipeline()
    pipe.load_lora_weights(str(TRAINED), weight_name="pytorch_lora_weights.safetensors",
                           adapter_name="diffjax")
    result = {}
    for bits, dtype in ((64, torch.float64), (32, torch.float32)):
        out = run_unet(pipe.unet, inputs, dtype).astype(np.float64)
        ref = expected["lora"].astype(np.float64)
        base = expected["base"].astype(np.float64)
        result[f"rel_l2_float{bits}"] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
        result[f"lora_vs_base_rel_l2_float{bits}"] = float(
            np.linalg.norm(out - base) / np.linalg.norm(base))
    config = pipe.unet.peft_config["diffjax"]
    result.update(r=config.r, lora_alpha=config.lora_alpha,
                  target_modules=sorted(config.target_modules),
                  adapter_layers=sum(1 for name, _ in pipe.unet.named_modules()
                                     if name.endswith("lora_A.diffjax")),
                  passed=bool(result["rel_l2_float64"] < 1e-5),
                  checked_with="diffusers 0.42.1, peft 0.21.2, torch CPU")
    (TRAINED / "diffusers_check.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result["passed"]:
        sys.exit("diffusers' output with the diffjax-trained LoRA differs from diffjax's")


def main() -> None:
    if "--check-diffjax" in sys.argv:
        check_diffjax_trained()
        return
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    write_peft(OUT / "sd1_peft.safetensors", generator)
    write_kohya_sd1(OUT / "sd1_kohya.safetensors", generator)
    write_kohya_sdxl(OUT / "sdxl_kohya.safetensors", generator)
    arrays = references()
    np.savez_compressed(OUT / "reference.npz", **arrays)
    for path in sorted(OUT.glob("*.*")):
        print(f"{path.name}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
