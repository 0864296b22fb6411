"""Parity fixtures for the converter: tiny reference networks saved in their official file formats.

Builds small, randomly initialised networks with the reference repositories' own code, saves each
the way its project saves checkpoints, and records the raw network output on fixed inputs:

  score_sde_<name>.pth  score_sde_pytorch `NCSNpp`: {'optimizer', 'model' (DataParallel state dict,
                        'module.' prefix), 'ema' ({'decay', 'num_updates', 'shadow_params'}),
                        'step'}, as `utils.save_checkpoint` writes it. The EMA differs from the
                        raw weights, so both mappings are checked.
  score_sde_ddpm.pth    score_sde_pytorch `DDPM` (models/ddpm.py, Ho et al.'s network), the same
                        file layout; its GroupNorms get NCSNpp's min(C/4, 32) groups instead of
                        DDPM's fixed 32 (equal from C = 128 on, i.e. in every published DDPM
                        config; parameter names and shapes do not depend on it), so that a tiny
                        network (nf 8) exists and computes what diffjax's resblock_type='ddpm'
                        network computes.
  dit_tiny.pt           facebookresearch/DiT `DiT` (learn_sigma=True): a bare state dict, as the
                        released DiT-XL-2-256x256.pt.
  edm_<name>.pkl        NVlabs/edm network snapshot: pickle.dump(dict(ema=<Precond wrapping a
                        SongUNet>, loss_fn, augment_pipe, dataset_kwargs)), as
                        training_loop.py writes it; the embedded module source is replaced by a
                        placeholder (diffjax never reads it, and reference code is not committed).
  reference_outputs.npz inputs and raw outputs per fixture ("<name>/x", ".../out", ...).

EVERY parameter is random (zero-initialised output layers, GroupNorm scales and biases, the
NCSN++ Fourier frequencies included), because a zero layer hides a wrong mapping. Sizes: nf 8,
two resolution levels, 8x8 images; the files stay well under 2 MB together.

Regenerate (torch CPU, numpy, ml_collections and timm; timm imports torchvision at import time,
which has no CPU wheel for this torch, so this script stubs it; DiT's layers do not use it):

    for r in yang-song/score_sde_pytorch facebookresearch/DiT NVlabs/edm; do
        git clone https://github.com/$r /tmp/ref/${r#*/}; done
    # or, from a bare mirror:
    #   mkdir -p /tmp/ref/X && git -C MIRROR archive HEAD | tar -x -C /tmp/ref/X
    pip install torch ml_collections numpy && pip install --no-deps timm
    python tools/make_reference_fixtures.py --score_sde=/tmp/ref/score_sde_pytorch \\
        --dit=/tmp/ref/DiT --edm=/tmp/ref/edm --out=tests/fixtures

score_sde's `op/upfirdn2d.py` compiles a CUDA extension when imported; the script takes its
pure-PyTorch `upfirdn2d` / `upfirdn2d_native` functions from that file (parsed, not imported),
which is what score_sde itself runs on CPU.
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.machinery
import os
import pickle
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

SEED = 20240601


# --------------------------------------------------------------------------- reference imports

def import_score_sde(root: str):
    source = open(os.path.join(root, "op", "upfirdn2d.py")).read()
    wanted = [node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)
              and node.name in ("upfirdn2d", "upfirdn2d_native")]
    namespace = {"torch": torch, "F": F}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "op/upfirdn2d.py", "exec"), namespace)
    op = types.ModuleType("op")
    op.upfirdn2d = namespace["upfirdn2d"]
    sys.modules["op"] = op
    sys.path.insert(0, root)
    import importlib

    for name in ("models.ema", "models.ncsnpp", "models.utils"):
        importlib.import_module(name)
    return sys.modules["models"]


class _AnyAttribute(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyAttribute(name, (), {})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyAttribute(name, (), {})


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def import_dit(root: str):
    sys.meta_path.insert(0, _TorchvisionStub())
    sys.path.insert(0, root)
    import models as dit_models  # DiT's models.py (score_sde's `models` package is not on the path)
    return dit_models


def import_edm(root: str):
    sys.path.insert(0, root)
    from torch_utils import persistence
    from training import augment, loss, networks
    return networks, loss, augment, persistence


# --------------------------------------------------------------------------- helpers

def randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter and float buffer random, at scales that keep activations O(1)."""
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if (not tensor.is_floating_point() or name.endswith("sigmas")
                    or "resample_filter" in name):
                continue  # score_sde's discrete sigma table, EDM's fixed FIR filters
            if name.endswith(".W") and tensor.ndim == 1 or name.endswith("freqs"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 16.0)  # Fourier
            elif tensor.ndim >= 2:  # NIN's W is (in, out), torch's weights (out, in, ...)
                fan_in = tensor.shape[0] if name.endswith(".W") else int(np.prod(tensor.shape[1:]))
                tensor.copy_(torch.randn(tensor.shape, generator=generator) / np.sqrt(fan_in))
            elif "norm" in name.lower() and name.endswith("weight"):
                tensor.copy_(1.0 + 0.2 * torch.randn(tensor.shape, generator=generator))
            else:
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().transpose(0, 2, 3, 1).astype(np.float32)


# --------------------------------------------------------------------------- score_sde

SCORE_SDE_BASE = dict(
    nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
    resamp_with_conv=True, conditional=True, fir=False, fir_kernel=[1, 3, 3, 1],
    skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="none",
    progressive_combine="sum", embedding_type="positional", init_scale=0.0, fourier_scale=16,
    scale_by_sigma=False, nonlinearity="swish", conv_size=3, attention_type="ddpm",
    sigma_min=0.01, sigma_max=50.0, num_scales=1000, beta_min=0.1, beta_max=20.0,
    normalization="GroupNorm", ema_rate=0.9999, name="ncsnpp",
)

# name -> (model overrides, data.centered, SDE family, distinct EMA). The first two are the
# published CIFAR-10 configurations shrunk (the first with one channel, so that the converted
# checkpoint fine-tunes on diffjax's embedded 8x8 digits, and with an EMA that differs from the
# weights; the others share one storage to keep the files small); the variants reach the other
# switches: the output
# pyramid of score_sde's high-resolution configs ('output_skip' with FIR), an input pyramid
# combined by concatenation or sum, DDPM blocks with parameter-free resampling entries.
# Not reachable: score_sde_pytorch's `layerspp.Upsample` fails in its own code whenever it runs
# (non-FIR: F.interpolate(x, size, 'nearest') passes 'nearest' as scale_factor; FIR with a conv:
# `w[..., ::-1, ::-1]` is not valid PyTorch), i.e. for resblock_type='ddpm' without FIR or with
# resamp_with_conv, and for progressive='residual'; no published config uses them.
SCORE_SDE_FIXTURES = {
    "ddpmpp_vp": (dict(), True, "vp", True),
    "ncsnpp_ve": (dict(fir=True, progressive_input="residual", embedding_type="fourier",
                       scale_by_sigma=True), False, "ve", False),
    "variant_skip": (dict(fir=True, progressive="output_skip", progressive_input="input_skip",
                          progressive_combine="cat", skip_rescale=False,
                          embedding_type="fourier", nonlinearity="elu"), True, "ve", False),
    "variant_ddpm": (dict(resblock_type="ddpm", fir=True, resamp_with_conv=False,
                          progressive_input="input_skip", nonlinearity="lrelu"), False, "vp",
                     False),
}


def channels(name: str) -> int:
    return 1 if name == "ddpmpp_vp" else 3


def score_sde_config(overrides: dict, centered: bool, num_channels: int):
    import ml_collections

    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(dict(image_size=8, num_channels=num_channels,
                                                 centered=centered))
    config.training = ml_collections.ConfigDict(dict(continuous=True))
    config.model = ml_collections.ConfigDict({**SCORE_SDE_BASE, **overrides})
    config.device = "cpu"
    return config


def make_score_sde(models, out: str, outputs: dict, generator: torch.Generator) -> None:
    from models.ema import ExponentialMovingAverage
    from models.ncsnpp import NCSNpp

    for name, (overrides, centered, family, distinct_ema) in SCORE_SDE_FIXTURES.items():
        config = score_sde_config(overrides, centered, channels(name))
        model = torch.nn.DataParallel(NCSNpp(config))  # on CPU: only the 'module.' prefix
        randomize(model, generator)
        ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
        if distinct_ema:
            with torch.no_grad():
                for shadow in ema.shadow_params:
                    shadow.add_(0.05 * torch.randn(shadow.shape, generator=generator))
        else:  # same storage as the weights: torch.save writes it once (small fixture)
            ema.shadow_params = [p.detach() for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
        torch.save(dict(optimizer=optimizer.state_dict(), model=model.state_dict(),
                        ema=ema.state_dict(), step=1234),
                   os.path.join(out, f"score_sde_{name}.pth"))

        x = np.random.default_rng(1).standard_normal((2, 8, 8, channels(name))).astype(np.float32)
        if family == "ve":  # get_score_fn feeds sigma for continuous VE
            time_cond = np.array([0.3, 20.0], np.float32)
        else:  # and 999 t for continuous VP
            time_cond = np.array([0.25, 0.9], np.float32) * 999
        model.eval()
        with torch.no_grad():
            raw = nhwc(model(nchw(x), torch.from_numpy(time_cond)))
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
            averaged = nhwc(model(nchw(x), torch.from_numpy(time_cond)))
            ema.restore(model.parameters())
        outputs.update({f"score_sde_{name}/x": x, f"score_sde_{name}/time_cond": time_cond,
                        f"score_sde_{name}/out_model": raw, f"score_sde_{name}/out_ema": averaged})


class _NcsnppGroups(torch.nn.GroupNorm):
    """DDPM's GroupNorm(32, C) as NCSNpp's GroupNorm(min(C // 4, 32), C)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__(min(num_channels // 4, 32), num_channels, eps=eps, affine=affine)


SCORE_SDE_DDPM = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                      resamp_with_conv=True, scale_by_sigma=False, name="ddpm")


def make_score_sde_ddpm(out: str, outputs: dict, generator: torch.Generator) -> None:
    """score_sde's models/ddpm.py, saved as utils.save_checkpoint does (vp/ddpm/cifar10.py:
    discrete VP, the network fed the integer step)."""
    import importlib

    from models.ema import ExponentialMovingAverage

    original = torch.nn.GroupNorm
    torch.nn.GroupNorm = _NcsnppGroups
    try:
        ddpm = importlib.import_module("models.ddpm")
        config = score_sde_config(SCORE_SDE_DDPM, True, 3)
        config.training.continuous = False
        model = torch.nn.DataParallel(ddpm.DDPM(config))
    finally:
        torch.nn.GroupNorm = original
    randomize(model, generator)
    ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    ema.shadow_params = [p.detach() for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    torch.save(dict(optimizer=optimizer.state_dict(), model=model.state_dict(),
                    ema=ema.state_dict(), step=4321), os.path.join(out, "score_sde_ddpm.pth"))
    x = np.random.default_rng(4).standard_normal((2, 8, 8, 3)).astype(np.float32)
    steps = np.array([3.0, 871.0], np.float32)
    model.eval()
    with torch.no_grad():
        raw = nhwc(model(nchw(x), torch.from_numpy(steps)))
    outputs.update({"score_sde_ddpm/x": x, "score_sde_ddpm/time_cond": steps,
                    "score_sde_ddpm/out_ema": raw})


# --------------------------------------------------------------------------- DiT

DIT_TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=24, depth=2, num_heads=2,
                num_classes=10, learn_sigma=True)


def make_dit(dit_models, out: str, outputs: dict, generator: torch.Generator) -> None:
    model = dit_models.DiT(**DIT_TINY)
    pos_embed = model.pos_embed.detach().clone()
    randomize(model, generator)
    with torch.no_grad():
        model.pos_embed.copy_(pos_embed)  # fixed sin-cos table: frozen in DiT, not a weight
    model.eval()
    torch.save(model.state_dict(), os.path.join(out, "dit_tiny.pt"))
    x = np.random.default_rng(2).standard_normal((2, 8, 8, 4)).astype(np.float32)
    t = np.array([17.0, 803.0], np.float32)
    y = np.array([3, 10], np.int64)  # 10 = the null class of classifier-free guidance
    with torch.no_grad():
        out_nhwc = nhwc(model(nchw(x), torch.from_numpy(t), torch.from_numpy(y)))
    outputs.update({"dit_tiny/x": x, "dit_tiny/t": t, "dit_tiny/y": y.astype(np.int32),
                    "dit_tiny/out": out_nhwc})


# --------------------------------------------------------------------------- EDM

EDM_BASE = dict(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=8,
                channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13)
# name -> (Precond class, network kwargs, c_noise of two sigmas, conditional).
EDM_FIXTURES = {
    # edm-cifar10-32x32-cond-vp.pkl: DDPM++ (positional, [1, 1] resampling), EDM
    # preconditioning, 10 classes, 9 augmentation labels.
    "ddpmpp_cond": ("EDMPrecond", dict(embedding_type="positional", encoder_type="standard",
                                       decoder_type="standard", channel_mult_noise=1,
                                       resample_filter=[1, 1], label_dim=10, augment_dim=9),
                    lambda sigma: np.log(sigma) / 4, True),
    # baseline-cifar10-32x32-uncond-ve.pkl: NCSN++ (Fourier, residual input pyramid, FIR).
    "ncsnpp_uncond": ("VEPrecond", dict(embedding_type="fourier", encoder_type="residual",
                                        decoder_type="standard", channel_mult_noise=2,
                                        resample_filter=[1, 3, 3, 1]),
                      lambda sigma: np.log(0.5 * sigma), False),
}


def make_edm(edm, out: str, outputs: dict, generator: torch.Generator) -> None:
    networks, loss, augment, persistence = edm
    for name, (precond, kwargs, c_noise, conditional) in EDM_FIXTURES.items():
        net = getattr(networks, precond)(**{**EDM_BASE, **kwargs})
        randomize(net, generator)
        net.eval().requires_grad_(False)
        for cls in persistence._decorators:  # pylint: disable=protected-access
            cls._orig_module_src = "# NVlabs/edm source elided from this fixture"
        data = dict(ema=net, loss_fn=loss.EDMLoss(),
                    augment_pipe=augment.AugmentPipe(p=0.12, xflip=1e8, yflip=1, scale=1,
                                                     rotate_frac=1, aniso=1, translate_frac=1),
                    dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                        path="datasets/cifar10-32x32.zip", use_labels=conditional,
                                        xflip=False, cache=True, resolution=32, max_size=50000))
        with open(os.path.join(out, f"edm_{name}.pkl"), "wb") as f:
            pickle.dump(data, f)

        x = np.random.default_rng(3).standard_normal((2, 8, 8, 3)).astype(np.float32)
        noise = np.asarray(c_noise(np.array([0.05, 30.0])), np.float32)
        labels = np.array([7, 2], np.int32)
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 10).float()
        with torch.no_grad():
            raw = nhwc(net.model(nchw(x), torch.from_numpy(noise),
                                 class_labels=one_hot if conditional else None))
        outputs.update({f"edm_{name}/x": x, f"edm_{name}/noise_cond": noise,
                        f"edm_{name}/out": raw})
        if conditional:
            outputs[f"edm_{name}/labels"] = labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--score_sde", required=True, help="checkout of score_sde_pytorch")
    parser.add_argument("--dit", required=True, help="checkout of facebookresearch/DiT")
    parser.add_argument("--edm", required=True, help="checkout of NVlabs/edm")
    parser.add_argument("--out", default="tests/fixtures")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    outputs: dict[str, np.ndarray] = {}
    make_score_sde(import_score_sde(args.score_sde), args.out, outputs, generator)
    # Its own generator: the fixtures above and below stay what they were before it existed.
    make_score_sde_ddpm(args.out, outputs, torch.Generator().manual_seed(SEED + 1))
    # DiT's models.py is also called `models`: drop score_sde's package before importing it.
    for module in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[module]
    sys.path.remove(args.score_sde)
    make_dit(import_dit(args.dit), args.out, outputs, generator)
    make_edm(import_edm(args.edm), args.out, outputs, generator)
    np.savez_compressed(os.path.join(args.out, "reference_outputs.npz"), **outputs)
    for name in sorted(os.listdir(args.out)):
        if name.startswith(("score_sde_", "dit_", "edm_", "reference_outputs")):
            print(f"{name}: {os.path.getsize(os.path.join(args.out, name)):,} bytes")


if __name__ == "__main__":
    main()
