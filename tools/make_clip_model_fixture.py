"""Write tests/fixtures/text/clip_model_tiny/: a tiny random transformers CLIPModel (both towers,
both projections, logit_scale) and its outputs, for diffjax.text.clip_vision (CLIP score).

* config.json + model.safetensors from `CLIPModel.save_pretrained` (transformers 5): text tower
  32 wide, 2 layers, 4 heads, quick_gelu, the 814-id CLIP BPE vocabulary of
  tests/fixtures/text/sd_tiny/tokenizer (copied in, with its tokenizer files); vision tower
  32x32 images, patch 8 (16 patches + class token), 32 wide, 2 layers, 4 heads; projection 16.
  EVERY parameter is random: weights N(0, 1/fan_in), embeddings and class_embedding N(0, 1),
  biases N(0, 0.1^2), LayerNorm weights 1 + N(0, 0.1^2) and biases N(0, 0.1^2), logit_scale.
* reference.npz:
  - `pixel_values` (NHWC, random normal) and `image_embeds_f64` / `vision_last_f64`
    (`get_image_features` and the vision last_hidden_state, float64);
  - `input_ids`, `attention_mask` (from the fixture's own tokenizer, transformers' fast
    CLIPTokenizer padded to the longest prompt, as CLIPProcessor(padding=True) does) and
    `text_embeds_f64` (`get_text_features`, float64);
  - `images_uint8_*` (an 8x8 grey digit-like image and a 40x50 RGB image) with
    `processed_pil_*` (CLIPImageProcessorPil: PIL bicubic; what diffjax implements) and
    `processed_torchvision_*` (transformers 5's default CLIPImageProcessor, for the record);
  - `clip_score`: torchmetrics' formula max(mean(100 * cos), 0) over (processed_pil images,
    `captions`) with transformers' features in float64, and `pair_scores`.

Regenerate from the repository root (reference env):
    toolsenv/bin/python tools/make_clip_model_fixture.py
Test: tests/test_clip_vision.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTokenizer,
                          CLIPVisionConfig)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "text"
OUT = ROOT / "clip_model_tiny"
CAPTIONS = ["a photo of a cat", "a dog"]


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.copy_(torch.tensor(2.3))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
            elif name.endswith("bias") or "norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            elif "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=generator) / np.sqrt(fan_in))


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(ROOT / "sd_tiny" / "tokenizer" / name, OUT / name)
    vocab_size = len(json.loads((OUT / "vocab.json").read_text()))
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                          pad_token_id=vocab_size - 1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                        projection_dim=16)
    model = CLIPModel(config).eval()
    randomize(model)
    model.save_pretrained(OUT)
    CLIPImageProcessorPil(size={"shortest_edge": 32},
                          crop_size={"height": 32, "width": 32}).save_pretrained(OUT)

    rng = np.random.default_rng(0)
    ref: dict[str, np.ndarray] = {}
    model64 = model.double()
    with torch.no_grad():
        pixels = rng.standard_normal((2, 32, 32, 3))
        ref["pixel_values"] = pixels.astype(np.float32)
        tensor = torch.tensor(ref["pixel_values"], dtype=torch.float64).permute(0, 3, 1, 2)
        ref["image_embeds_f64"] = model64.get_image_features(tensor).pooler_output.numpy()
        ref["vision_last_f64"] = model64.vision_model(tensor).last_hidden_state.numpy()
        tokenizer = CLIPTokenizer.from_pretrained(OUT)
        tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        ref["input_ids"] = tokens["input_ids"].numpy().astype(np.int32)
        ref["attention_mask"] = tokens["attention_mask"].numpy().astype(np.int32)
        ref["text_embeds_f64"] = model64.get_text_features(
            tokens["input_ids"], tokens["attention_mask"]).pooler_output.numpy()

        grey = (rng.random((8, 8, 1)) * 255).astype(np.uint8)
        color = (rng.random((40, 50, 3)) * 255).astype(np.uint8)
        pil = CLIPImageProcessorPil(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32})
        fast = CLIPImageProcessor(size={"shortest_edge": 32},
                                  crop_size={"height": 32, "width": 32})
        processed = []
        for name, image in (("grey", grey), ("color", color)):
            ref[f"images_uint8_{name}"] = image
            rgb = np.repeat(image, 3, -1) if image.shape[-1] == 1 else image
            p = pil(images=[rgb], return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
            f = fast(images=[torch.tensor(rgb).permute(2, 0, 1)],
                     return_tensors="pt")["pixel_values"][0].permute(1, 2, 0).numpy()
            ref[f"processed_pil_{name}"] = p.astype(np.float32)
            ref[f"processed_torchvision_{name}"] = f.astype(np.float32)
            processed.append(p)
        batch = torch.tensor(np.stack(processed), dtype=torch.float64).permute(0, 3, 1, 2)
        image = model64.get_image_features(batch).pooler_output
        text_tokens = tokenizer(CAPTIONS, padding=True, return_tensors="pt")
        text_features = model64.get_text_features(
            text_tokens["input_ids"], text_tokens["attention_mask"]).pooler_output
        image = image / image.norm(p=2, dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(p=2, dim=-1, keepdim=True)
        pair = 100 * (image * text_features).sum(-1)
        ref["pair_scores"] = pair.numpy()
        ref["clip_score"] = np.asarray(max(float(pair.mean()), 0.0))
    ref["captions"] = np.asarray(CAPTIONS)
    np.savez_compressed(OUT / "reference.npz", **ref)
    print({k: v.shape for k, v in ref.items()})
    print(sorted(p.name for p in OUT.iterdir()),
          sum(p.stat().st_size for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
