"""The few-step and classifier-guidance tables of README's "Measured" (issue #22), on the digits.

Given trained digits runs (configs/digits.py, 2,000 steps each as their variants train):
    vp    the default VP model (`make quickstart`)       edm   `:edm`        flow  `:flow`
    cm    `:consistency` (sCT)                           mf    `:meanflow`
    distill `:distill` with model.teacher = the vp run; distill_flow `:distill,flow` (teacher:
    the flow run); distill_edm `:distill,edm` (teacher: the edm run) (each optional)
it prints, through diffjax's own modes (the numbers are what --mode=eval / --mode=sample give):

1. FID at NFE 1, 2, 4, 8: the consistency model, MeanFlow and the distilled student with their
   few-step samplers, beside DPM-Solver++ (3rd order multistep, no final denoising step, so NFE =
   steps) and EDM's Heun (NFE = 2 steps - 1: 1, 3, 5, 9 are the nearest) on the EDM and flow
   teachers. Every cell: the same number of samples (--num_samples), the same reference
   statistics (the first 500 training digits), EMA weights of the newest checkpoint.
2. Classifier guidance: `--mode=train_classifier` on the vp run (if not trained yet), then
   `--mode=sample` with sampling.classifier_scale = 0, 1, 2, 4 and the labels 0..9 repeated; the
   share of samples that an INDEPENDENT classifier (scikit-learn's SVC on the real training
   digits, its held-out accuracy printed beside) reads as the requested digit. Beside it, with
   --cond, classifier-free guidance on a class-conditional run at guidance 1 (plain
   conditional) and 2.

    .venv/bin/python benchmarks/fewstep_tables.py --runs=workdirs/fewstep --num_samples=500

The runs are folders RUNS/<name>; missing ones are skipped. Reports land in each run's eval/ and
samples/ (a rerun reuses finished reports).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NFES = (1, 2, 4, 8)
# name -> (digits variant, sweep giving NFE 1, 2, 4, 8 (Heun: 1, 3, 5, 9), label)
FEW_STEP = {
    "cm": ("consistency", "sampling.num_steps=1,2,4,8", "sCT (consistency sampler)"),
    "mf": ("meanflow", "sampling.num_steps=1,2,4,8", "MeanFlow (1-2 step sampler, N steps)"),
    "distill": ("distill", "sampling.num_steps=1,2,4,8", "sCD student of the VP run"),
    "distill_flow": ("distill,flow", "sampling.num_steps=1,2,4,8", "sCD student of the flow run"),
    "distill_edm": ("distill,edm", "sampling.num_steps=1,2,4,8", "sCD student of the EDM run"),
}
STUDENT_OF = {"distill": "vp", "distill_flow": "flow", "distill_edm": "edm"}
SOLVERS = {
    "dpm": ("sampling.method=dpm_solver;sampling.denoise=false;sampling.num_steps=1,2,4,8",
            "DPM-Solver++(3M)"),
    "heun": ("sampling.method=edm_heun;sampling.num_steps=1,2,3,5", "EDM Heun"),
}
TEACHERS = {"edm": "edm", "flow": "flow"}
# Many-step references at the same sample count: what the few-step cells approach.
REFERENCES = {
    "vp": ("", "sampling.method=euler_maruyama;sampling.num_steps=100",
           "VP, Euler-Maruyama 100 steps (the quickstart's sampler)"),
    "edm": ("edm", "sampling.method=edm_heun;sampling.num_steps=18", "EDM, Heun 18 steps"),
}


def run_mode(variant: str, workdir: str, mode: str, **overrides):
    from diffjax import config as config_lib, modes

    config = config_lib.load(f"configs/digits.py:{variant}" if variant else "configs/digits.py",
                             overrides)
    return modes.run(config, workdir, mode)


def fid_row(variant: str, workdir: str, sweep: str, num_samples: int, **extra
            ) -> dict[int, float]:
    reports = run_mode(variant, workdir, "eval", **extra, **{
        "eval.checkpoints": "latest", "eval.sweep": sweep, "eval.num_samples": num_samples,
        "eval.batch_size": min(num_samples, 500), "eval.compute_kid": False,
        "eval.compute_is": False})
    return {int(r["nfe"]): float(r["fid"]) for r in reports if "fid" in r}


def independent_classifier():
    """SVC(C=10) on the digits training split as diffjax stores it (uint8 8x8)."""
    from sklearn.svm import SVC

    from diffjax.data.digits.digits_dataset_builder import TEST_EVERY, load_digit_images

    images, labels = load_digit_images()
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    test = np.arange(len(images)) % TEST_EVERY == 0
    svc = SVC(C=10.0, gamma="scale").fit(flat[~test], labels[~test])
    return svc, float(np.mean(svc.predict(flat[test]) == labels[test])), int(test.sum())


def share(svc, summary) -> float:
    data = np.load(summary["npz"])
    x = data["images"].reshape(len(data["images"]), -1).astype(np.float32) / 255.0
    # Unguided samples of an unconditional model carry no labels: the requested ones, in order.
    wanted = data["labels"] if "labels" in data else np.resize(np.arange(10), len(x))
    return float(np.mean(svc.predict(x) == wanted))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="folder holding vp/ edm/ flow/ cm/ mf/ ...")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--guidance_samples", type=int, default=500)
    parser.add_argument("--cond", default="", help="a class-conditional run (:cond) for CFG")
    parser.add_argument("--skip_fid", action="store_true")
    parser.add_argument("--skip_guidance", action="store_true")
    args = parser.parse_args()
    from diffjax.runtime import logs

    logs.quiet_library_logs()
    start = time.perf_counter()
    rows = []
    if not args.skip_fid:
        for name, (variant, sweep, label) in FEW_STEP.items():
            workdir = os.path.join(args.runs, name)
            if os.path.isdir(os.path.join(workdir, "checkpoints")):
                # The student's config names its teacher (the run beside it).
                extra = {"model.teacher": os.path.join(args.runs, STUDENT_OF[name])} \
                    if name in STUDENT_OF else {}
                rows.append((label, "1, 2, 4, 8", fid_row(variant, workdir, sweep,
                                                          args.num_samples, **extra)))
        for name, variant in TEACHERS.items():
            workdir = os.path.join(args.runs, name)
            if not os.path.isdir(os.path.join(workdir, "checkpoints")):
                continue
            for sweep, label in SOLVERS.values():
                nfes = "1, 3, 5, 9" if "heun" in sweep else "1, 2, 4, 8"
                # Heun ends with its own step to sigma = 0 from sampling.eps (the flow variant
                # integrates its ODE to t = 0 and sets 0): EDM's sigma_min-like 1e-3 there.
                extra = {"sampling.eps": 1e-3} if "heun" in sweep and name == "flow" else {}
                rows.append((f"{label} on the {name.upper()} teacher", nfes,
                             fid_row(variant, workdir, sweep, args.num_samples, **extra)))
        print(f"\nFID of {args.num_samples} samples against the first 500 training digits "
              f"(EMA weights, newest checkpoint):\n")
        print("| model / sampler | NFE | FID at NFE 1 | 2 | 4 | 8 |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for label, nfes, fids in rows:
            values = [f"{fids[n]:.2f}" if n in fids else "-" for n in sorted(fids)][:4]
            values += ["-"] * (4 - len(values))
            print(f"| {label} | {nfes} | " + " | ".join(values) + " |")
        print("\nMany-step references (same samples, same statistics):\n")
        print("| model / sampler | NFE | FID |")
        print("| --- | ---: | ---: |")
        for name, (variant, sweep, label) in REFERENCES.items():
            workdir = os.path.join(args.runs, name)
            if os.path.isdir(os.path.join(workdir, "checkpoints")):
                for nfe, fid in fid_row(variant, workdir, sweep, args.num_samples).items():
                    print(f"| {label} | {nfe} | {fid:.2f} |")
    if not args.skip_guidance:
        vp = os.path.join(args.runs, "vp")
        if not os.path.isdir(os.path.join(vp, "classifier", "checkpoints")):
            run_mode("", vp, "train_classifier")
        svc, accuracy, held_out = independent_classifier()
        labels = ",".join(str(d) for d in range(10))
        n = args.guidance_samples
        common = {"sampling.labels": labels, "sampling.num_samples": n,
                  "sampling.batch_size": min(n, 250)}
        print(f"\nClassifier guidance on the unconditional VP run (Euler-Maruyama, 100 steps, "
              f"{n} samples, labels 0-9 in turn); the share read as the requested digit by an "
              f"SVC whose own accuracy on {held_out} held-out real digits is {accuracy:.1%}:\n")
        print("| guidance | scale | share of the requested digit |")
        print("| --- | ---: | ---: |")
        for scale in (0.0, 1.0, 2.0, 4.0):
            # Scale 0 is the unguided model: it takes no labels (the shares count 0..9 in turn).
            options = common if scale else {k: v for k, v in common.items()
                                            if k != "sampling.labels"}
            summary = run_mode("", vp, "sample", **options,
                               **{"sampling.classifier_scale": scale})
            print(f"| classifier (noise-conditional U-Net encoder) | {scale:g} | "
                  f"{share(svc, summary):.1%} |", flush=True)
        if args.cond and os.path.isdir(os.path.join(args.cond, "checkpoints")):
            for scale in (1.0, 2.0):
                summary = run_mode("cond", args.cond, "sample", **common,
                                   **{"sampling.guidance_scale": scale})
                print(f"| classifier-free, conditional run (step {summary['step']}) | {scale:g} "
                      f"| {share(svc, summary):.1%} |", flush=True)
    print(f"\n({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
