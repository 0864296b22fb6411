"""`--mode=likelihood`: bits/dim of a dataset split under the probability-flow ODE of a checkpoint.

Each global batch of the split (in order) is split over processes exactly like training batches,
and every example gets an in-graph adaptive PF-ODE solve with a Hutchinson trace estimate
(`diffjax.evaluation.likelihood`). The last batch is padded and the padding masked out, so one compiled
function serves the whole split. Writes WORKDIR/eval/likelihood_<step>_<split>_<hash>.json: the
name carries every setting that changes the number (split, examples, batch, solver and its
tolerances, weights, seed), so a run with other settings never overwrites another's report.
"""

from __future__ import annotations

import hashlib
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from diffjax.data.pipeline import data_source, read_records
from diffjax.evaluation.likelihood import likelihood_fn
from diffjax.experiment import build_experiment, open_checkpoints, restore_params, score_fn_for
from diffjax.parallel.mesh import batch_axis_size
from diffjax.parallel.sharding import batch_sharding
from diffjax.runtime.console import progress_bar
from diffjax.storage import filesystem as fs, workdir as workdir_lib


def _local_batches(config, split: str, global_batch: int, max_examples: int):
    """(records, valid mask) for this process's slice of each ordered global batch."""
    source = data_source(config.data, split)
    total = len(source) if max_examples <= 0 else min(max_examples, len(source))
    local = global_batch // jax.process_count()
    start = jax.process_index() * local
    for begin in range(0, total, global_batch):
        indices = np.arange(begin + start, begin + start + local)
        valid = indices < total
        yield read_records(source, np.where(valid, indices, 0)), valid


def report_name(config, step: int, global_batch: int) -> str:
    """likelihood_<step>_<split>_<hash of the settings>: one file per way of measuring."""
    e, s = config.eval, config.sampling
    settings = {"split": e.likelihood_split, "max_examples": int(e.likelihood_max_examples),
                "global_batch": int(global_batch), "solver": s.solver, "rtol": float(s.rtol),
                "atol": float(s.atol), "max_steps": int(s.max_steps), "use_ema": bool(s.use_ema),
                "seed": int(config.seed), "centered": bool(config.data.centered)}
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(),
                             digest_size=3).hexdigest()
    split = "".join(c if c.isalnum() else "-" for c in str(e.likelihood_split)).strip("-")
    return f"likelihood_{step}_{split}_{digest}"


def evaluate_likelihood(config, workdir: str) -> dict:
    if jax.process_index() == 0:  # before the (long) solves: a read-only workdir fails now
        workdir_lib.check_writable(fs.join(workdir, "eval"), "the evaluation folder",
                                   workdir_lib.READ_ONLY_RUN_FIX)
    experiment = build_experiment(config)
    e_cfg, s_cfg = config.eval, config.sampling
    parallel = batch_axis_size(experiment.mesh)
    global_batch = -(-e_cfg.likelihood_batch_size // parallel) * parallel
    checkpointer = open_checkpoints(workdir)
    step = checkpointer.latest_step()
    params = restore_params(experiment, checkpointer, step, s_cfg.use_ema)
    checkpointer.close()
    data_range = (-1.0, 1.0) if config.data.centered else (0.0, 1.0)
    lo, hi = data_range

    @jax.jit
    def batch_bpd(params, images, labels, rng):
        x = lo + (hi - lo) * images.astype(jnp.float32) / 255.0
        score_fn = score_fn_for(config, experiment.model, experiment.sde, params,
                                labels=labels if config.model.conditional else None)
        result = likelihood_fn(experiment.sde, score_fn, x, rng, rtol=s_cfg.rtol, atol=s_cfg.atol,
                               solver=s_cfg.solver, max_steps=s_cfg.max_steps,
                               data_range=data_range)
        return result.bpd, result.nfe

    sharding = batch_sharding(experiment.mesh)
    base = jax.random.fold_in(jax.random.key(config.seed), 0x11CE)
    bpds, nfes = [], []
    start_time = time.perf_counter()
    batches = _local_batches(config, e_cfg.likelihood_split, global_batch,
                             e_cfg.likelihood_max_examples)
    total = len(data_source(config.data, e_cfg.likelihood_split))
    if e_cfg.likelihood_max_examples > 0:
        total = min(total, e_cfg.likelihood_max_examples)
    bar = progress_bar(total, f"Likelihood of {e_cfg.likelihood_split}",
                       enabled=jax.process_index() == 0)
    for index, (records, valid) in enumerate(batches):
        arrays = [jax.make_array_from_process_local_data(sharding, records[k])
                  for k in ("image", "label")]
        with experiment.activate():
            bpd, nfe = batch_bpd(params, *arrays, jax.random.fold_in(base, index))
        bpd = multihost_utils.process_allgather(bpd, tiled=True)
        mask = multihost_utils.process_allgather(jnp.asarray(valid), tiled=True)
        bpds.append(np.asarray(bpd)[np.asarray(mask)])
        nfes.append(int(nfe))
        bar.update(int(np.asarray(mask).sum()))
    bar.close()
    values = np.concatenate(bpds)
    if not np.all(np.isfinite(values)):
        raise FloatingPointError(
            f"{int(np.sum(~np.isfinite(values)))} likelihood solves failed (NaN); raise "
            f"--config.sampling.max_steps or loosen --config.sampling.rtol/atol.")
    report = {
        "step": step, "split": e_cfg.likelihood_split, "num_examples": int(values.size),
        "bpd": float(values.mean()), "bpd_stderr": float(values.std(ddof=1) / math.sqrt(values.size))
        if values.size > 1 else None,
        "nfe_mean": float(np.mean(nfes)), "solver": s_cfg.solver, "rtol": s_cfg.rtol,
        "atol": s_cfg.atol, "use_ema": bool(s_cfg.use_ema),
        "seconds": time.perf_counter() - start_time,
    }
    if jax.process_index() == 0:
        name = report_name(config, step, global_batch)
        path = fs.write_atomic(fs.join(workdir, "eval", f"{name}.json"),
                               json.dumps(report, indent=2) + "\n")
        print(f"bits/dim@step {step} = {report['bpd']:.4f} ± {report['bpd_stderr'] or 0:.4f} "
              f"({values.size} {e_cfg.likelihood_split} images, {report['nfe_mean']:.0f} NFE "
              f"per batch, {s_cfg.solver}). Report: {path}", flush=True)
    return report
