"""Write the reference fixtures of ADM's noise-conditional classifier (guided-diffusion).

Runs openai/guided-diffusion's own `EncoderUNetModel` (guided_diffusion/unet.py) on two tiny
configurations with every parameter random (the zero-initialised output convs and attention
projections too) and stores, per configuration, the state dict as guided-diffusion saves it
(`torch.save(model.state_dict())`, the format of the published `*_classifier.pt`) and the logits
on fixed inputs, in float32 only: guided-diffusion's network does not run in float64 (its
GroupNorm32 and time embedding compute in float32 and reject float64 parameters):
- `attention`: what the published classifiers use: attention pooling, scale-shift norms,
  residual down-sampling blocks, 16 channels per head, the legacy q/k/v order;
- `adaptive`: the other branches: average pooling head, additive time embedding, stride-2 conv
  down-sampling, 2 heads by count, the new q/k/v order.
Also the parameter counts of `create_classifier` at the four published settings (the README's
CLASSIFIER_FLAGS: 64x64 depth 4, 128/256/512 depth 2; width 128, attention at 32,16,8).

The reference environment (torch from PyPI, never in diffjax's .venv):

    git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion
    git -C /tmp/guided-diffusion checkout 22e0df8
    make toolsenv
    toolsenv/bin/python tools/make_adm_classifier_fixture.py --guided-diffusion /tmp/guided-diffusion

(The fixture in the repository was written with torch 2.14.1 CPU.)

Output: tests/fixtures/adm_classifier/{attention,adaptive}.pt and reference.npz.
Test: tests/test_adm_classifier.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "adm_classifier"
IMAGE_SIZE, NUM_CLASSES = 16, 5
CONFIGS = {
    "attention": dict(model_channels=32, num_res_blocks=1, attention_resolutions=(1, 2),
                      channel_mult=(1, 1), num_head_channels=16, use_scale_shift_norm=True,
                      resblock_updown=True, pool="attention"),
    "adaptive": dict(model_channels=32, num_res_blocks=1, attention_resolutions=(2,),
                     channel_mult=(1, 1), num_heads=2, use_scale_shift_norm=False,
                     resblock_updown=False, use_new_attention_order=True, pool="adaptive"),
}
PUBLISHED = {64: 4, 128: 2, 256: 2, 512: 2}  # image size: classifier_depth


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random at a scale that keeps activations O(1): weights ~ N(0, 1/fan_in),
    norm scales 1 + N(0, 0.2^2), biases N(0, 0.1^2), the position table N(0, 1/C)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("positional_embedding"):
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[0] ** 0.5)
            elif p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=generator))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=generator) / fan_in ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guided-diffusion", required=True, type=Path,
                        help="a clone of github.com/openai/guided-diffusion (commit 22e0df8)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.guided_diffusion))
    from guided_diffusion.script_util import classifier_defaults, create_classifier
    from guided_diffusion.unet import EncoderUNetModel

    generator = torch.Generator().manual_seed(0)
    x = torch.randn((4, 3, IMAGE_SIZE, IMAGE_SIZE), generator=generator)
    timesteps = torch.tensor([0.0, 17.5, 500.0, 999.0])
    out = {"x": x.permute(0, 2, 3, 1).numpy(), "timesteps": timesteps.numpy()}
    OUT.mkdir(parents=True, exist_ok=True)
    for name, options in CONFIGS.items():
        model = EncoderUNetModel(image_size=IMAGE_SIZE, in_channels=3, out_channels=NUM_CLASSES,
                                 **options).eval()
        randomise(model, generator)
        # A state dict with only plain tensors, as the published files hold.
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, OUT / f"{name}.pt")
        with torch.no_grad():
            out[f"{name}_logits32"] = model(x, timesteps).numpy()
        out[f"{name}_num_params"] = np.asarray(sum(p.numel() for p in model.parameters()))
        print(f"{name}: {out[f'{name}_num_params']} parameters, logits "
              f"{out[f'{name}_logits32'][0, :3]}")
    defaults = classifier_defaults()
    for size, depth in PUBLISHED.items():
        model = create_classifier(
            image_size=size, classifier_use_fp16=False,
            classifier_width=defaults["classifier_width"], classifier_depth=depth,
            classifier_attention_resolutions=defaults["classifier_attention_resolutions"],
            classifier_use_scale_shift_norm=defaults["classifier_use_scale_shift_norm"],
            classifier_resblock_updown=defaults["classifier_resblock_updown"],
            classifier_pool=defaults["classifier_pool"])
        out[f"published_{size}_num_params"] = np.asarray(sum(p.numel()
                                                             for p in model.parameters()))
        print(f"published {size}x{size}: {out[f'published_{size}_num_params']} parameters")
    np.savez(OUT / "reference.npz", **out)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
