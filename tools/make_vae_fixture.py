"""Write the reference fixtures of diffjax/latents: tiny diffusers AutoencoderKLs and DiT's crop.

Outputs (all under tests/fixtures/, together well under 500 KB):

* vae_sd/  and  vae_16ch/ : diffusers folders (config.json + diffusion_pytorch_model.safetensors,
  written by `AutoencoderKL.save_pretrained`) of two small random-weight AutoencoderKLs:
  - vae_sd: the SD-VAE layout scaled down (block_out_channels (8, 16), layers_per_block 1,
    4 latent channels, 4 groups, quant / post-quant convs, scaling_factor 0.18215);
  - vae_16ch: the SD3 / Flux layout (16 latent channels, no quant convs, scaling_factor 1.5305,
    shift_factor 0.0609) with three levels (4, 8, 8) (downsampling factor 4).
  EVERY parameter is random (conv / linear weights N(0, 1/fan_in), biases N(0, 0.1^2), norm
  scales 1 + N(0, 0.1^2), norm biases N(0, 0.1^2)); in vae_sd two log-variance channels get a
  quant_conv bias of +-40 so that the clamp of logvar to [-30, 20] is exercised.
* vae_reference.npz: for each folder (prefix "sd_" / "16ch_"), NHWC float32 arrays computed by
  diffusers in float64: `images` (2 non-square 16x24 images in [-1, 1]), the posterior `mean` and
  clamped `logvar` of `vae.encode(images)`, `latents` (random, VAE space), `decoded` =
  `vae.decode(latents)`, and `reconstruction` = `vae(images).sample` (decodes the mean); plus
  `sd_vae_param_count`, the parameter count of diffusers' AutoencoderKL at the
  stabilityai/sd-vae-ft-ema config.
* vae_center_crop.npz: DiT's `center_crop_arr` (ADM's center crop, from facebookresearch/DiT
  train.py, read from a DiT checkout at run time, not copied) on a few uint8 images: `input_K`,
  `size_K`, `output_K`.

Regenerate from the repository root with torch + diffusers (never in diffjax's .venv):

    python3 -m venv /tmp/toolsenv && /tmp/toolsenv/bin/pip install torch diffusers safetensors \\
        numpy pillow          # or `make toolsenv`
    git clone https://github.com/facebookresearch/DiT /tmp/DiT   # or a bare mirror of it
    /tmp/toolsenv/bin/python tools/make_vae_fixture.py --dit /tmp/DiT

`--dit` is a DiT checkout or bare git directory (train.py is read with `git show HEAD:train.py`
when the directory has no work tree). Tests: tests/test_autoencoder.py and
tests/test_latent_dataset.py.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from diffusers import AutoencoderKL

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"

SD_VAE_CONFIG = dict(  # stabilityai/sd-vae-ft-ema config.json
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
    block_out_channels=(128, 256, 512, 512), act_fn="silu", sample_size=256,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)

VARIANTS = {
    "sd": dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
               norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, scaling_factor=0.18215),
    "16ch": dict(block_out_channels=(4, 8, 8), layers_per_block=1, latent_channels=16,
                 norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=1.5305,
                 shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False),
}


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random, zero-initialised ones and norm affine parameters included."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64)
            if param.ndim >= 2:
                fan_in = int(np.prod(param.shape[1:]))
                param.copy_(noise / np.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().permute(0, 2, 3, 1).numpy().astype(np.float32)


def write_vae(name: str, config: dict, seed: int) -> dict[str, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    model = AutoencoderKL(**config).double().eval()
    randomise(model, generator)
    if name == "sd":
        with torch.no_grad():  # logvar channels 6 and 7 hit the clamp at -30 and 20
            model.quant_conv.bias[6] -= 40.0
            model.quant_conv.bias[7] += 40.0
    folder = FIXTURES / f"vae_{name}"
    shutil.rmtree(folder, ignore_errors=True)
    # float32 on disk, as published VAEs; the references are computed from the stored values.
    model.float().save_pretrained(folder, safe_serialization=True)
    model.double()
    config_path = folder / "config.json"
    stored = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")

    images = torch.rand((2, 3, 16, 24), generator=generator, dtype=torch.float64) * 2 - 1
    factor = 2 ** (len(config["block_out_channels"]) - 1)
    latents = torch.randn((2, config["latent_channels"], 16 // factor, 24 // factor),
                          generator=generator, dtype=torch.float64)
    with torch.no_grad():
        dist = model.encode(images).latent_dist
        decoded = model.decode(latents).sample
        reconstruction = model(images).sample
    count = sum(p.numel() for p in model.parameters())
    print(f"vae_{name}: {count} parameters, "
          f"{(folder / 'diffusion_pytorch_model.safetensors').stat().st_size} bytes")
    return {f"{name}_images": nhwc(images), f"{name}_mean": nhwc(dist.mean),
            f"{name}_logvar": nhwc(dist.logvar), f"{name}_latents": nhwc(latents),
            f"{name}_decoded": nhwc(decoded), f"{name}_reconstruction": nhwc(reconstruction)}


def sd_vae_param_count() -> int:
    with torch.device("meta"):
        model = AutoencoderKL(**SD_VAE_CONFIG)
    return sum(p.numel() for p in model.parameters())


def dit_train_source(dit: str) -> str:
    path = Path(dit) / "train.py"
    if path.is_file():
        return path.read_text()
    return subprocess.run(["git", "-C", dit, "show", "HEAD:train.py"], check=True,
                          capture_output=True, text=True).stdout


def dit_center_crop(dit: str):
    """DiT's center_crop_arr, compiled from its train.py (only that function is executed)."""
    tree = ast.parse(dit_train_source(dit))
    function = next(node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "center_crop_arr")
    namespace = {"Image": Image, "np": np}
    exec(compile(ast.Module([function], []), "DiT/train.py", "exec"), namespace)
    return namespace["center_crop_arr"]


def crop_cases() -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)

    def smooth(height, width, channels):
        y, x = np.mgrid[0:height, 0:width]
        base = [128 + 100 * np.sin(x / (3 + k) + y / (5 + 2 * k)) for k in range(channels)]
        image = np.stack(base, -1) + rng.normal(0, 4, (height, width, channels))
        return np.clip(image, 0, 255).astype(np.uint8)

    return [
        (smooth(37, 50, 3), 16),   # bicubic down, landscape
        (smooth(70, 41, 3), 16),   # one BOX halving first, portrait
        (smooth(66, 100, 3), 16),  # two BOX halvings
        (smooth(9, 13, 1), 8),     # grayscale, small
        (smooth(8, 8, 1), 8),      # the digits case: already the right size
        (smooth(6, 10, 3), 8),     # upsampling
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dit", required=True, help="DiT checkout or bare git directory")
    args = parser.parse_args()
    torch.manual_seed(0)

    arrays = {}
    for seed, (name, config) in enumerate(VARIANTS.items()):
        arrays.update(write_vae(name, config, seed))
    arrays["sd_vae_param_count"] = np.asarray(sd_vae_param_count(), np.int64)
    print("SD-VAE (sd-vae-ft-ema config) parameters:", int(arrays["sd_vae_param_count"]))
    np.savez_compressed(FIXTURES / "vae_reference.npz", **arrays)

    center_crop_arr = dit_center_crop(args.dit)
    crops = {}
    for k, (image, size) in enumerate(crop_cases()):
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        out = np.asarray(center_crop_arr(pil, size))
        crops[f"input_{k}"] = image
        crops[f"size_{k}"] = np.asarray(size)
        crops[f"output_{k}"] = out.reshape(size, size, image.shape[-1])
    np.savez_compressed(FIXTURES / "vae_center_crop.npz", **crops)
    for path in sorted(FIXTURES.glob("vae_*")):
        size = sum(p.stat().st_size for p in ([path] if path.is_file() else path.iterdir()))
        print(f"{path.relative_to(FIXTURES.parent.parent)}: {size} bytes")


if __name__ == "__main__":
    main()
