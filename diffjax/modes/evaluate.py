"""`--mode=eval`: FID (plus KID and Inception Score) of checkpoints, per setting, resumable.

Which checkpoints (`eval.checkpoints`): "all" = every checkpoint missing a report for some
setting; "latest"; "1000,2000"; or "watch" = follow WORKDIR/checkpoints and evaluate checkpoints
as training writes them, until the final training step is done or `eval.watch_timeout_s` passes
without a new one. Which settings: the config's sampling settings, or the cartesian product of
`eval.sweep` (e.g. "sampling.guidance_scale=1,1.5;sampling.num_steps=10,20"). A report
exists per (checkpoint, setting) (`evaluation/reports.py`); an existing one is printed, never
recomputed (delete its file to redo it).

Per checkpoint and setting: `eval.num_samples` images in chunks of `eval.batch_size`, with the
setting's sampler, NFE, guidance and EMA choice. Process 0 writes each chunk atomically, and a
restarted evaluation continues after the last readable chunk. Chunk i uses the noise
fold_in(base, i), and base is the same for every checkpoint, so (1) a resumed evaluation equals an
uninterrupted one image for image, (2) FID differences between checkpoints and settings are not
blurred by different noise.

Text models (data.text_encoder): FID samples are drawn from cached dataset captions (records in a
seeded order, no encoder needed), and the report adds prompt following
(`diffjax.evaluation.prompt_following`: a digit classifier's accuracy on samples from prompts
naming digits; CLIP score with eval.clip_model), with a grid of the prompt samples.

Output: one JSON line per (checkpoint, setting) as it finishes, and a table at the end.
Checkpoints that cannot be read (damaged, or deleted by training's retention while being loaded)
are skipped and reported, never fatal; their leftover sample chunks are removed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from diffjax.evaluation.inception_weights import load_inception_params
from diffjax.evaluation.reports import ReportStore, format_table, summary_line
from diffjax.evaluation.sample_quality import FID_METHOD, sample_metrics
from diffjax.evaluation.settings import EvalSetting, settings_from_config
from diffjax.evaluation.stats import reference_statistics
from diffjax.experiment import build_experiment, is_guided, load_first_stage
from diffjax.latents import text_cache
from diffjax.latents.latent_mode import is_latent, resolve_paths
from diffjax.outputs import images
from diffjax.outputs.metric_writers import create_writer
from diffjax.parallel.distributed import broadcast_from_chief
from diffjax.runtime.console import progress_bar
from diffjax.sampling.generate import draw_batch, make_generate_fn
from diffjax.storage import filesystem as fs, workdir as workdir_lib
from diffjax.storage.checkpoints import Checkpointer

# Noise of evaluation samples; distinct from training grids (0x5A3) and --mode=sample (0x5A4).
EVAL_SALT = 0x5A5
GRID_IMAGES = 100
WATCH_POLL_S = 30.0
_WAIT, _STOP = -1, -2


def _is_chief() -> bool:
    return jax.process_index() == 0


def _agreed_list(values: list[int]) -> list[int]:
    """Process 0's list on every process."""
    if jax.process_count() == 1:
        return values
    count = broadcast_from_chief(len(values))
    return [broadcast_from_chief(values[i] if _is_chief() else 0) for i in range(count)]


def select_steps(selection: str, available: list[int], complete: set[int]) -> list[int]:
    """The checkpoints named by eval.checkpoints ("all", "latest" or "1000,2000"), ascending.

    `complete` holds the steps that already have a report for every setting.
    """
    selection = selection.strip().lower()
    if not available:
        return []
    if selection == "all":
        return [s for s in available if s not in complete]
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
    """Yields checkpoints not done yet, oldest first, as they appear.

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
        action = broadcast_from_chief(action)
        if action == _STOP:
            return
        if action == _WAIT:
            sleep(min(poll_s, max(timeout_s, 0.0)))
            continue
        attempted.add(action)
        yield action
        waiting_since = clock()


def _grid(pixels: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    shown = slice(0, min(GRID_IMAGES, len(pixels)))
    if labels is None:
        return images.make_grid(pixels[shown])
    order = np.argsort(labels[shown], kind="stable")  # one class after another reads better
    return images.make_grid(pixels[shown][order])


@dataclasses.dataclass
class Evaluator:
    """What stays the same across checkpoints and settings: model, Inception, statistics; and a
    compiled sampler per setting."""

    config: Any
    store: ReportStore
    checkpointer: Checkpointer

    def __post_init__(self):
        self.experiment = build_experiment(self.config)
        # Latent mode: samples are decoded to pixels inside the sampler's compiled program.
        self.decoder = load_first_stage(self.config, mesh=self.experiment.mesh) \
            if is_latent(self.config) else None
        self.inception_params = load_inception_params()
        self.reference = reference_statistics(self.config, self.inception_params)
        # Statistics live on process 0; their file name (which carries the Inception
        # fingerprint) is part of every setting's identity, on every process.
        self.reference_name = broadcast_name(
            os.path.basename(self.reference.path) if self.reference else "")
        self._generators: dict[str, Callable] = {}
        self.writer = create_writer(self.store.out_dir, self.config, is_chief=_is_chief())
        self.text = text_cache.is_text(self.config)
        self.clip_scorer = self.prompt_following = None
        if self.text:
            from diffjax.evaluation.prompt_following import PromptFollowing

            if self.config.eval.clip_model:
                from diffjax.text.clip_vision import CLIPScorer

                self.clip_scorer = CLIPScorer(self.config.eval.clip_model)
            self.prompt_following = PromptFollowing(self.config, self.clip_scorer)

    def text_conditions(self, c, index: int, batch_size: int):
        """Cached captions' conditioning of FID chunk `index` (records in a seeded order)."""
        from diffjax.latents import read_metadata
        from diffjax.sampling.prompts import cached_conditions

        size = int(read_metadata(c.data.latent_dir)["num_records"])
        order = np.random.default_rng(int(c.seed)).permutation(size)
        rows = order[(index * batch_size + np.arange(batch_size)) % size]
        return cached_conditions(c.data.latent_dir, rows)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

    def slug(self, setting: EvalSetting) -> str:
        return setting.slug(self.reference_name)

    def generator(self, setting: EvalSetting) -> Callable:
        key = self.slug(setting)
        if key not in self._generators:
            c = setting.config
            self._generators[key] = make_generate_fn(
                c, self.experiment.model, self.experiment.sde, self.experiment.mesh,
                int(c.eval.batch_size), c.sampling, decoder=self.decoder)
        return self._generators[key]

    def restore(self, step: int, use_ema: bool):
        """The sampling parameters of `step`, or the reason they cannot be read."""
        result = self.checkpointer.try_restore(
            self.experiment.spec, step,
            workdir_lib.explain_differences(self.checkpointer.workdir, self.config))
        if isinstance(result, str):
            return result
        state, _ = result
        return state.ema_params if use_ema else state.params

    def evaluate(self, step: int, setting: EvalSetting, params,
                 max_chunks: int | None = None) -> dict | None:
        """The report of (`step`, `setting`); None when stopped early by `max_chunks` (tests)."""
        c, chief = setting.config, _is_chief()
        slug = self.slug(setting)
        num_samples, batch_size = int(c.eval.num_samples), int(c.eval.batch_size)
        sizes = [min(batch_size, num_samples - start)
                 for start in range(0, num_samples, batch_size)]
        chunk_store = self.store.chunks(step, slug, setting.signature(self.reference_name)) \
            if chief else None
        chunks = chunk_store.load_prefix(sizes) if chief else []
        first = broadcast_from_chief(len(chunks))
        if first:
            logging.info("Step %d (%s): resuming after %d of %d sample chunks.", step, slug,
                         first, len(sizes))
        last = len(sizes) if max_chunks is None else min(len(sizes), first + max_chunks)
        if first < last:
            self._sample_chunks(step, setting, params, sizes, first, last, chunk_store, chunks)
        if last < len(sizes):
            return None
        extra = self._prompt_following(step, setting, params) if self.text else {}
        report = self._finish(step, setting, chunks, chunk_store, extra) if chief else None
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"diffjax eval step {step} {slug}")
        return report

    def _sample_chunks(self, step, setting, params, sizes, first, last, chunk_store, chunks):
        """Draws chunks [first, last) on every process; process 0 saves and keeps them."""
        c, chief = setting.config, _is_chief()
        generate = self.generator(setting)
        base = jax.random.fold_in(jax.random.key(c.seed), EVAL_SALT)
        progress = progress_bar(sum(sizes), f"Sampling step {step}", initial=sum(sizes[:first]),
                                enabled=chief)
        with self.experiment.activate():
            for index in range(first, last):
                start = time.perf_counter()
                cond, captions = self.text_conditions(c, index, int(c.eval.batch_size)) \
                    if self.text else (None, None)
                pixels, labels, nfe = draw_batch(c, generate, params,
                                                 jax.random.fold_in(base, index),
                                                 int(c.eval.batch_size), labels=cond)
                chunk = {"images": pixels[:sizes[index]], "nfe": np.int64(nfe),
                         "seconds": np.float64(time.perf_counter() - start)}
                if captions is not None:
                    chunk["captions"] = np.asarray(captions[:sizes[index]])
                elif labels is not None:
                    chunk["labels"] = labels[:sizes[index]]
                if chief:
                    chunk_store.save(index, chunk)
                    chunks.append(chunk)
                progress.update(sizes[index])
        progress.close()

    def _prompt_following(self, step, setting, params) -> dict:
        """Prompt-following metrics of a text model (sampled on every process)."""
        c = setting.config
        with self.experiment.activate():
            drawn = self.prompt_following.sample(self.generator(setting), params,
                                                 int(c.eval.batch_size))
        if drawn is None:
            return {}
        pixels, index = drawn
        metrics = self.prompt_following.score(pixels, index)
        if _is_chief():
            path = self.store.grid_path(step, self.slug(setting)).replace(".png", "_prompts.png")
            images.save_png(path, images.make_grid(pixels[:GRID_IMAGES]))
            metrics["prompt_grid"] = path
        return metrics

    def _finish(self, step, setting, chunks, chunk_store, extra: dict | None = None) -> dict:
        c = setting.config
        slug = self.slug(setting)
        pixels = np.concatenate([chunk["images"] for chunk in chunks])
        labels = np.concatenate([chunk["labels"] for chunk in chunks]) \
            if "labels" in chunks[0] else None
        start = time.perf_counter()
        metrics = sample_metrics(c, pixels, self.reference, self.inception_params,
                                 progress=f"Inception features, step {step}")
        metrics.update(extra or {})
        if self.clip_scorer is not None and "captions" in chunks[0]:
            captions = [str(t) for chunk in chunks for t in chunk["captions"]]
            metrics["clip_score"] = self.clip_scorer.score(pixels, captions)
        metrics_seconds = time.perf_counter() - start
        nfes = [int(chunk["nfe"]) for chunk in chunks]
        sampling_seconds = float(sum(float(chunk["seconds"]) for chunk in chunks))
        conditional = is_guided(c)
        report = {
            "step": step, "setting": slug, "overrides": dict(setting.overrides), **metrics,
            # Adaptive samplers take a different number of steps per chunk: report the mean.
            "nfe": nfes[0] if len(set(nfes)) == 1 else float(np.mean(nfes)),
            "sampler": c.sampling.method, "num_steps": int(c.sampling.num_steps),
            "guidance_scale": float(c.sampling.guidance_scale) if conditional else None,
            "use_ema": bool(c.sampling.use_ema), "num_samples": int(len(pixels)),
            "seconds": sampling_seconds + metrics_seconds,
            "sampling_seconds": sampling_seconds, "metrics_seconds": metrics_seconds,
            "fid_method": FID_METHOD, "reference": self.reference.path,
            "reference_images": self.reference.num_images,
            "signature": setting.signature(self.reference_name),
        }
        grid = _grid(pixels, labels)
        images.save_png(self.store.grid_path(step, slug), grid)
        scalars = {f"{k}/{slug}": report[k] for k in ("fid", "kid", "is", "nfe", "seconds",
                                                      "prompt_accuracy", "clip_score")
                   if report.get(k) is not None}
        self.writer.write_scalars(step, scalars)
        self.writer.write_images(step, {f"samples/{slug}": grid[None]})
        self.writer.flush()
        report["report"] = self.store.write(step, slug, report)
        if not c.eval.get("keep_samples", False):
            chunk_store.remove()
        return report


def broadcast_name(name: str) -> str:
    """Process 0's (short ASCII) string on every process."""
    if jax.process_count() == 1:
        return name
    data = np.frombuffer(name.encode().ljust(256, b"\0")[:256], np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(data), np.uint8)
    return bytes(data).rstrip(b"\0").decode()


def fid_line(report: dict) -> str:
    nfe = report["nfe"]
    nfe_text = f"{nfe:.1f}" if isinstance(nfe, float) else str(nfe)
    return (f"FID@step {report['step']} = {report['fid']:.2f} ({report['num_samples']} samples, "
            f"{report['sampler']}, {nfe_text} NFE, {report.get('setting', '')})")


def evaluate(config, workdir: str, *, out_dir: str | None = None,
             max_chunks: int | None = None) -> list[dict]:
    """Evaluates the selected checkpoints under every setting; returns the reports (process 0;
    [] elsewhere), skipped checkpoints as {"step", "setting", "skipped": reason}.

    `out_dir` (default WORKDIR/eval) and `max_chunks` (stop each setting after that many new
    chunks, leaving it unfinished) exist for tests of the resumption.
    """
    workdir = fs.absolute(workdir)
    config = resolve_paths(config, workdir)
    store = ReportStore(fs.absolute(out_dir) if out_dir else fs.join(workdir, "eval"))
    if _is_chief():  # reports, samples and TensorBoard go there: a read-only workdir fails now
        workdir_lib.check_writable(store.out_dir, "the evaluation folder",
                                   workdir_lib.READ_ONLY_RUN_FIX)
    settings = settings_from_config(config)
    selection = str(config.eval.checkpoints).strip().lower()
    watching = selection == "watch"
    checkpoints_dir = fs.join(workdir, "checkpoints")
    if not watching and not fs.is_dir(checkpoints_dir):
        raise FileNotFoundError(f"No checkpoint in {checkpoints_dir}; train first "
                                f"(--mode=train --workdir={workdir}).")
    # A watcher may start before training has written anything; the folder appears later.
    checkpointer = Checkpointer(workdir, max_to_keep=None, async_save=False, create=watching)
    evaluator: Evaluator | None = None
    reports: list[dict] = []

    def available() -> list[int]:
        checkpointer.reload()  # training adds (and retention removes) steps
        return checkpointer.all_steps()

    def slugs() -> list[str]:
        return [evaluator.slug(s) for s in settings]

    def is_done(step: int) -> bool:
        return all(store.has(step, slug) for slug in slugs())

    try:
        evaluator = Evaluator(config, store, checkpointer)
        if watching:
            steps: Iterator[int] | list[int] = watch_steps(
                available, is_done, int(config.training.num_train_steps),
                float(config.eval.watch_timeout_s))
        else:
            found = available()
            if not found:
                raise FileNotFoundError(f"No checkpoint in {checkpoints_dir}; train first "
                                        f"(--mode=train --workdir={workdir}).")
            complete = {s for s in found if is_done(s)}
            steps = _agreed_list(select_steps(selection, found, complete))
            if not steps and _is_chief():
                print(f"Nothing to evaluate: every checkpoint in {checkpoints_dir} has a report "
                      f"for every setting in {store.out_dir}.", flush=True)
        for step in steps:
            reports.extend(_evaluate_step(evaluator, store, step, settings, max_chunks))
            if watching and _is_chief():
                store.remove_orphans(available())
    finally:
        if evaluator is not None:
            evaluator.close()
        checkpointer.close()
    if _is_chief() and reports:
        print(format_table(reports), flush=True)
    if watching and _is_chief():
        print(f"Stopped watching {checkpoints_dir}; reports in {store.out_dir}.", flush=True)
    return reports if _is_chief() else []


def _evaluate_step(evaluator: Evaluator, store: ReportStore, step: int,
                   settings: list[EvalSetting], max_chunks: int | None) -> list[dict]:
    chief = _is_chief()
    done, params_by_ema = [], {}
    for setting in settings:
        slug = evaluator.slug(setting)
        existing = store.read(step, slug) if chief else None
        if broadcast_from_chief(int(existing is not None)):
            if existing is not None:
                existing = {**existing, "existing": True}
                done.append(existing)
                print(summary_line(existing), flush=True)
            continue
        use_ema = bool(setting.config.sampling.use_ema)
        if use_ema not in params_by_ema:
            params_by_ema[use_ema] = evaluator.restore(step, use_ema)
        params = params_by_ema[use_ema]
        if isinstance(params, str):
            logging.warning("Skipping checkpoint %d: it cannot be read (%s).", step, params)
            skipped = {"step": step, "setting": slug, "skipped": params}
            if chief:
                print(summary_line(skipped), flush=True)
                fs.remove(fs.join(store.step_dir(step), f"{slug}.samples"))
            done.append(skipped)
            continue
        report = evaluator.evaluate(step, setting, params, max_chunks=max_chunks)
        if report is not None:
            done.append(report)
            print(summary_line(report), flush=True)
            logging.info("%s -> %s", fid_line(report), report["report"])
    return done
