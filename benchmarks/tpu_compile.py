"""TPU plans of the published configs, compiled on this host without TPUs: the README table.

For each model and TPU slice, `--mode=compile`'s own `compile_plan` (libtpu's compiler, abstract
devices, the real mesh and train step; no parameter allocated) gives per chip, at the published
global batch, for three plans: DP (data parallel, no remat), FSDP (all chips), FSDP+remat:
  - HBM: the state (parameters, EMA, Adam moments) and the total XLA's memory analysis needs;
  - the largest global batch that fits with FSDP+remat (the least memory per example), searched
    over compiles in steps of the chip count: the published batch's compile predicts it (its
    temporaries scaled with the batch), the next compile checks the prediction, later ones fit a
    line or bisect; at most --search_compiles compiles beyond the published batch;
  - the step time of the first plan that fits (DP, then FSDP, then FSDP+remat): XLA's cost-model
    ESTIMATE ("optimal_seconds") where it is positive, else a roofline bound (max of FLOPs / peak
    and bytes accessed / HBM bandwidth, collectives left out), and the MFU it implies with the
    model FLOPs (XLA's count of the plan without remat); and that plan's collectives.
These are compile-time estimates: CPU load slows the compiles, never the numbers. Every report
is kept in --results, so a rerun compiles only what is missing.

Host memory: libtpu's compiler took 6-7 GB for DDPM++ deep, 13 GB for SD 1.5 on a v5p-8, and more
than 24 GB for SD 1.5 on a v6e-8 (killed for memory on the 24 GiB reference machine).

    make libtpu && .venv/bin/python benchmarks/tpu_compile.py           # hours on 2 busy cores
    .venv/bin/python benchmarks/tpu_compile.py --models=dit --topologies=v5p-8 --search_compiles=0
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (config, global batch as published)
MODELS = {
    "dit": ("DiT-XL/2 (ImageNet-256 latents)", "configs/imagenet256_dit.py:XL", 256),
    "ddpmpp": ("DDPM++ deep (CIFAR-10)", "configs/cifar10_ddpmpp_vp.py:deep", 128),
    # diffusers' train_text_to_image recipe (bf16 compute, remat, AdamW, EMA) on SD 1.5's U-Net
    # (859,520,964 parameters), 512 px: the published config.json files alone (no weights;
    # published_configs/sd15). diffusers' example runs batch 4 on one GPU; 32 gives every chip
    # of these slices whole examples. SDXL: diffjax does not fine-tune it (configs/sd.py).
    "sd15": ("SD 1.5 U-Net fine-tune (512 px)",
             "configs/sd.py:finetune,folder=" + os.path.join(REPO, "benchmarks",
                                                             "published_configs", "sd15"), 32),
}
TOPOLOGIES = ("v5p-8", "v5e-16", "v6e-8")
GIB = 2.0**30


def load_config(spec: str):
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("benchmark_config",
                                                         os.path.join(REPO, path))
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


VARIANTS = {  # name -> (remat, fsdp)
    "DP": (False, False),
    "FSDP": (False, True),
    "FSDP+remat": (True, True),
}


def variant(spec: str, batch: int, *, remat: bool, fsdp: bool, chips: int):
    config = load_config(spec)
    config.training.batch_size = batch
    config.model.remat = remat
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = (1, chips, 1) if fsdp else (-1, 1, 1)
    return config


class Results:
    """Every compile's report, kept in a JSON file so that a rerun compiles only what is new."""

    def __init__(self, path: str):
        self.path = path
        self.data = json.load(open(path)) if path and os.path.exists(path) else {}

    def get(self, key, compute):
        if key not in self.data:
            self.data[key] = compute()
            if self.path:
                with open(self.path + ".tmp", "w") as f:
                    json.dump(self.data, f, indent=1, default=str)
                os.replace(self.path + ".tmp", self.path)
        return self.data[key]


def plan(config, target) -> dict:
    """The report, or {"fits": False, "error": the one line} when it does not fit."""
    from diffjax.modes.compile import CompilePlanError, compile_plan

    start = time.perf_counter()
    try:
        report = compile_plan(config, target, "train")
        report.pop("_compiled", None)
    except CompilePlanError as error:
        report = {"fits": False, "error": str(error)}
    report["wall_seconds"] = time.perf_counter() - start
    return report


def compiled(results, key, spec, target, batch, name) -> dict:
    remat, fsdp = VARIANTS[name]
    report = results.get(f"{key}|{target.name}|{name}|{batch}", lambda: plan(
        variant(spec, batch, remat=remat, fsdp=fsdp, chips=target.num_chips), target))
    print(f"  {name} batch {batch}: " + (f"{report['memory_per_chip']['total'] / GIB:.1f} GiB"
          if report["fits"] else report["error"][:100]) + f" ({report['wall_seconds']:.0f} s)",
          file=sys.stderr, flush=True)
    return report


def largest_batch(results, key, spec, target, published: int, compiles: int
                  ) -> tuple[int, int | None, int]:
    """(largest global batch that fitted, smallest that did not or None, extra compiles) with
    FSDP+remat, in multiples of the chip count. One compile predicts the largest batch by taking
    the temporaries as proportional to the batch and the rest (state, code) as fixed (which
    underestimates it: some temporaries, such as gathered weights, do not grow with the batch);
    two or more by the line through the last two that fitted; a prediction that does not fit
    is halved towards the largest that did."""
    step = target.num_chips
    lo, hi, fitted = 0, None, []

    def record(batch, report):
        nonlocal lo, hi
        if report["fits"]:
            lo = max(lo, batch)
            m = report["memory_per_chip"]
            fitted.append((batch, m["total"] / GIB, m["temporaries"] / GIB, m["capacity"] / GIB))
        else:
            hi = batch if hi is None else min(hi, batch)

    record(published, compiled(results, key, spec, target, published, "FSDP+remat"))
    used = 0
    while used < compiles and not (hi is not None and hi - lo <= step):
        if hi is None and len(fitted) >= 2:
            (b0, m0, _, cap), (b1, m1, _, _) = sorted(fitted)[-2:]
            slope = (m1 - m0) / (b1 - b0)
            batch = int(b1 + (cap - m1) / slope) if slope > 0 else 2 * b1
        elif hi is None:
            b0, m0, t0, cap = fitted[0]
            batch = int(b0 * (cap - (m0 - t0)) / t0) if t0 > 0 else 2 * b0
        else:
            batch = (lo + hi) // 2 if lo else hi // 2
        batch = batch // step * step
        batch = max(batch, lo + step) if hi is None else min(max(batch, lo + step), hi - step)
        if batch < step or (hi is not None and batch >= hi):
            break
        record(batch, compiled(results, key, spec, target, batch, "FSDP+remat"))
        used += 1
    return lo, hi, used


def state_gib(report) -> str:
    if not report:
        return "n/c"
    if not report.get("fits"):
        return "-"
    m = report["memory_per_chip"]
    return f"{(m['parameters'] + m['EMA parameters'] + m['optimizer state']) / GIB:.2f}"


def total_gib(report) -> str:
    if not report:
        return "n/c"
    if not report.get("fits"):
        need = re.search(r"needs ([\d.]+) GiB", report.get("error", ""))
        return f"OOM ({need.group(1)})" if need else "OOM"
    return f"{report['memory_per_chip']['total'] / GIB:.1f}"


def collective_text(report) -> str:
    if not report.get("fits"):
        return "-"
    parts = []
    for op, short in (("all-reduce", "AR"), ("all-gather", "AG"), ("reduce-scatter", "RS"),
                      ("all-to-all", "A2A"), ("collective-permute", "CP")):
        c = report["collectives_per_chip"][op]
        if c["count"]:
            parts.append(f"{short} {c['count']} / {c['bytes'] / GIB:.2f} GiB")
    return ", ".join(parts) or "none"


def estimate_text(reports: dict, peak: float) -> tuple[str, str]:
    """(step time, MFU) of the first plan that fits among DP, FSDP, FSDP+remat: XLA's estimate
    where it gives a positive one, else the roofline bound (marked >=, MFU <=). MFU counts the
    model FLOPs, those of the plan without remat."""
    best = next((reports[n] for n in VARIANTS if reports.get(n, {}).get("fits")), None)
    model = next((reports[n]["flops_per_chip_per_call"] for n in ("DP", "FSDP")
                  if reports.get(n, {}).get("fits")), None)
    if best is None:
        return "-", "-"
    est = best["estimate"]
    name = next(n for n in VARIANTS if reports.get(n) is best)
    if est["seconds_per_call"]:
        seconds, mark = est["seconds_per_call"], ""
    elif est["roofline_seconds_per_call"]:
        seconds, mark = est["roofline_seconds_per_call"], ">="
    else:
        return "-", "-"
    if model is None:  # only remat fits: model FLOPs are 3/4 of forward + recompute + backward
        model = best["flops_per_chip_per_call"] * 3 / 4
    mfu = model / seconds / peak
    bound = "<=" if mark else ""
    return f"{mark}{seconds * 1e3:.0f} ms ({name})", f"{bound}{mfu:.0%}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--search_compiles", type=int, default=0,
                        help="compiles spent on the largest batch per model and slice")
    parser.add_argument("--plans", default="DP,FSDP+remat,search,FSDP",
                        help="the compiles to run, of DP, FSDP+remat, search, FSDP (run in that order)")
    parser.add_argument("--table_only", action="store_true",
                        help="print the table from --results without compiling (n/c: missing)")
    parser.add_argument("--results", default=os.path.join(REPO, "workdirs", "tpu_compile.json"),
                        help="reports of every compile (a rerun compiles only what is missing)")
    args = parser.parse_args()

    from diffjax.runtime import logs, xla

    logs.quiet_library_logs()
    xla.enable_compilation_cache()
    from diffjax.parallel.topologies import compile_target

    if args.results:
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    results = Results(args.results)
    start = time.perf_counter()
    cells = [(key, name) for name in args.topologies.split(",")
             for key in args.models.split(",")]
    targets = {name: compile_target(name) for name in args.topologies.split(",")}
    # Over every cell in turn, the most useful compiles first (one takes 5-30 minutes on 2 busy
    # cores): the two ends (DP, FSDP+remat), then the largest batch, then FSDP alone.
    # (A DDPM++ deep compile for a TPU took over 45 minutes and 6 GB of RAM here.)
    order = [(stage, key, topology) for key in args.models.split(",")
             for stage in ("DP", "FSDP+remat") for topology in args.topologies.split(",")]
    order += [(stage, key, topology) for stage in ("search", "FSDP") for key, topology in cells]
    order = [entry for entry in order if entry[0] in args.plans.split(",")]
    for stage, key, topology in [] if args.table_only else order:
        title, spec, batch = MODELS[key]
        print(f"{title} on {targets[topology].describe()}", file=sys.stderr, flush=True)
        if stage == "search":
            largest_batch(results, key, spec, targets[topology], batch, args.search_compiles)
        else:
            compiled(results, key, spec, targets[topology], batch, stage)
    rows = []
    for key, topology in cells:
        title, spec, batch = MODELS[key]
        target = targets[topology]
        reports = {name: results.data.get(f"{key}|{topology}|{name}|{batch}", {})
                   for name in VARIANTS}
        chips = target.num_chips
        tried = [(int(k.rsplit("|", 1)[1]), v["fits"]) for k, v in results.data.items()
                 if k.startswith(f"{key}|{topology}|FSDP+remat|")]
        lo = max((b for b, fits in tried if fits), default=0)
        hi = min((b for b, fits in tried if not fits and b > lo), default=None)
        search = "n/c" if not tried else \
            (f"{lo // chips} ({lo}) fits" if lo else "none fits") + \
            (f", {hi // chips} ({hi}) does not" if hi else "")
        remat = reports["FSDP+remat"]
        if remat.get("fits"):  # the temporaries scaled with the batch, the rest fixed
            m = remat["memory_per_chip"]
            fixed = m["total"] - m["temporaries"]
            predicted = int(batch * (m["capacity"] - fixed) / m["temporaries"]) // chips * chips
            search += f"; predicted {predicted // chips} ({predicted})"
        step_time, mfu = estimate_text(reports, target.chip.peak_bf16_flops)
        best = next((reports[n] for n in VARIANTS if reports[n].get("fits")), {})
        rows.append(
            f"| {title} | {topology} | {batch} | {state_gib(reports['DP'])} / "
            f"{state_gib(reports['FSDP+remat'])} | {total_gib(reports['DP'])} / "
            f"{total_gib(reports['FSDP'])} / {total_gib(reports['FSDP+remat'])} | "
            f"{target.chip.usable_hbm_gib:.2f} | {search} | {step_time} | {mfu} | "
            f"{collective_text(best)} |")
    header = [
        "| model | slice | batch | state GiB/chip (DP / FSDP, from FSDP+remat) | total GiB/chip (DP / FSDP / "
        "FSDP+remat) | HBM GiB | batch per chip (global) with FSDP+remat: compiled, and predicted "
        "from the published batch's temporaries | "
        "est. step | est. MFU | collectives per step, per chip (count / bytes) |",
        "|---|---|---:|---|---|---:|---|---|---:|---|"]
    print("\n".join(header + rows))
    print(f"\nESTIMATES, not measurements: XLA:TPU memory and cost analysis via libtpu on a CPU "
          f"host; step times marked >= are roofline bounds (XLA gave no positive estimate). "
          f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
