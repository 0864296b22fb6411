"""TrainLoader images/s with threads and with Grain worker processes, and the cores a host needs.

Datasets (tools/make_benchmark_datasets.py, prepared on first use into --data_dir): 10,000
PNG-encoded 32x32x3 images (CIFAR-10-like), 10,000 64x64x3 images, and 10,000 float16
[32, 32, 4] latent records ({"mean", "std", "label"}). For each dataset and loader setting the
loader runs `--batches` global batches of `--batch_size` after a warm-up (worker start-up
excluded), and reports
  images/s            wall clock (on a busy machine this depends on the neighbours);
  images per CPU-s    images over the CPU seconds of this process and its worker processes:
                      the throughput of one host core, what the host sizing below uses.
Components of the per-record cost are timed too: TFDS's per-record decoding (tf.train.Example
parsing + image decode) against the bare PNG decode of the same bytes (PIL).

Cores needed to feed 8 accelerators = 8 x (images/s one accelerator consumes) / images per CPU-s,
at the issue's CIFAR-10 setting (a DDPM++ step on one H100 consumes ~1e4 images/s) and the
latent-DiT setting (--latent_rate, default 1,100 latents/s per H100: DiT-XL/2 at 40% MFU,
3 x 118.6 GFLOPs per latent).

    .venv/bin/python benchmarks/input_pipeline.py                      # ~5 min on 2 cores
    .venv/bin/python benchmarks/input_pipeline.py --workers=0,1,2 --datasets=rgb32
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tools")]

SHAPES = {"rgb32": (32, 3), "rgb64": (64, 3), "latent32": (32, 4)}


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and all its live descendants (Grain's workers)."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def data_config(name: str, data_dir: str, num_workers: int):
    import ml_collections

    size, channels = SHAPES[name]
    return ml_collections.ConfigDict(dict(
        dataset=f"synthetic_images/{name}", data_dir=data_dir, split="train", image_size=size,
        num_channels=channels, num_workers=num_workers))


def loader_rate(name: str, data_dir: str, num_workers: int, batch_size: int, batches: int,
                warmup: int) -> dict:
    from diffjax.data import TrainLoader

    with TrainLoader(data_config(name, data_dir, num_workers), global_batch_size=batch_size,
                     seed=0) as loader:
        for _ in range(warmup):  # starts the workers and fills their buffers
            next(loader)
        time.sleep(0.5 if num_workers else 0.0)  # let the buffers fill, as during a train step
        cpu, wall = tree_cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            batch = next(loader)
        wall, cpu = time.perf_counter() - wall, tree_cpu_seconds() - cpu
    images = batches * batch_size
    largest = max(batch.values(), key=lambda v: v.size)
    return dict(rate=images / wall, per_cpu_second=images / cpu, fields=sorted(batch),
                shape=list(largest.shape), dtype=str(largest.dtype))


def decode_costs(name: str, data_dir: str, count: int = 2000) -> dict:
    """Seconds per record: TFDS's full decoding, and the PNG decode alone (PIL)."""
    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    builder = tfds.builder(f"synthetic_images/{name}", data_dir=data_dir)
    decoded = builder.as_data_source(split="train")
    raw = builder.as_data_source(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    indices = list(range(count))
    start = time.process_time()
    decoded.__getitems__(indices)
    tfds_s = (time.process_time() - start) / count
    pngs = [r["image"] for r in raw.__getitems__(indices)]
    start = time.process_time()
    for png in pngs:
        np.asarray(Image.open(io.BytesIO(png)))
    png_s = (time.process_time() - start) / count
    return dict(tfds_per_record_s=tfds_s, png_decode_s=png_s,
                png_bytes=float(np.mean([len(p) for p in pngs])))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "diffjax_bench_data"))
    parser.add_argument("--datasets", default="rgb32,rgb64,latent32")
    parser.add_argument("--workers", default="0,1,2", help="num_workers settings to compare")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--cifar_rate", type=float, default=1e4,
                        help="images/s one accelerator consumes at the CIFAR-10 setting")
    parser.add_argument("--latent_rate", type=float, default=1.1e3,
                        help="latents/s one accelerator consumes at the latent-DiT setting")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from diffjax.runtime import logs, xla
    logs.quiet_library_logs()
    from make_benchmark_datasets import prepare

    datasets = args.datasets.split(",")
    prepare(args.data_dir, datasets)
    lines = [f"Machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; global "
             f"batch {args.batch_size}, {args.batches} timed batches after {args.warmup}.", "",
             "| dataset | loader | images/s | images per CPU-s | cores for 8 accelerators |",
             "|---|---|---:|---:|---:|"]
    for name in datasets:
        consumed = args.latent_rate if name == "latent32" else args.cifar_rate
        for workers in (int(w) for w in args.workers.split(",")):
            r = loader_rate(name, args.data_dir, workers, args.batch_size, args.batches,
                            args.warmup)
            setting = "2 threads" if workers == 0 else f"{workers} worker process(es)"
            record = f"{name} {r['dtype']}{r['shape'][1:]}"
            lines.append(f"| {record} | {setting} | {r['rate']:,.0f} | "
                         f"{r['per_cpu_second']:,.0f} | {8 * consumed / r['per_cpu_second']:.1f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    lines += ["", "| dataset | TFDS decode per record | PNG decode alone | PNG bytes |",
              "|---|---:|---:|---:|"]
    for name in datasets:
        if name == "latent32":
            continue
        c = decode_costs(name, args.data_dir)
        lines.append(f"| {name} | {c['tfds_per_record_s'] * 1e6:.0f} us | "
                     f"{c['png_decode_s'] * 1e6:.0f} us | {c['png_bytes']:,.0f} |")
    lines += ["", f"Cores for 8 accelerators = 8 x {args.cifar_rate:,.0f} images/s (CIFAR-10, "
              f"DDPM++ on an H100) or 8 x {args.latent_rate:,.0f} latents/s (DiT-XL/2) / images "
              f"per CPU-s; add the cores the training process itself uses."]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
