"""WORKDIR/eval: one folder per checkpoint, one report per evaluation setting, resumable samples.

    eval/<step>/<slug>.json         the report (FID, KID, IS, NFE, the setting, timings)
    eval/<step>/<slug>.png          a grid of the first samples
    eval/<step>/<slug>.samples/     chunks of samples while the setting is being evaluated

`<slug>` names the setting readably and ends with a hash of everything that changes the number
(`settings.EvalSetting`), so rerunning with another sampler, NFE, guidance or sample count writes
a new report instead of finding the old one. Chunks are written atomically; a chunk that cannot be
read on resume (a truncated or garbled file) is discarded and resampled, as is everything after it.
Every file goes through `diffjax.storage.filesystem`, so WORKDIR may be gs://.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from typing import Any

import numpy as np

from diffjax.storage import filesystem as fs

# Failures of a damaged .npz chunk: short file, bad zip directory, missing or garbled member.
_UNREADABLE_CHUNK = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile)


class ChunkStore:
    """The sample chunks of one (checkpoint, setting), written by process 0 only."""

    def __init__(self, directory: str, signature: dict):
        self.directory = directory
        self.signature = json.loads(json.dumps(signature, default=str))
        meta = fs.join(directory, "meta.json")
        if fs.exists(meta):
            try:
                stored = json.loads(fs.read_text(meta))
            except (OSError, ValueError):
                stored = None
            if stored != self.signature:
                logging.warning("Discarding %s: it was sampled with another setting.", directory)
                fs.remove(directory)
        if not fs.exists(meta):
            fs.makedirs(directory)
            fs.write_atomic(meta, json.dumps(self.signature))

    def path(self, index: int) -> str:
        return fs.join(self.directory, f"chunk_{index:05d}.npz")

    def load_prefix(self, sizes: list[int]) -> list[dict]:
        """The chunks 0, 1, ... already on disk, up to the first missing or unreadable one."""
        chunks = []
        for index, size in enumerate(sizes):
            path = self.path(index)
            if not fs.exists(path):
                break
            try:
                with np.load(io.BytesIO(fs.read_bytes(path))) as stored:
                    chunk = {k: stored[k] for k in stored.files}
                ok = chunk["images"].shape[0] == size
            except _UNREADABLE_CHUNK as error:
                logging.warning("Discarding unreadable sample chunk %s (%s); it is sampled "
                                "again.", path, type(error).__name__)
                ok = False
            if not ok:
                for later in range(index, len(sizes)):
                    if fs.exists(self.path(later)):
                        fs.remove(self.path(later))
                break
            chunks.append(chunk)
        return chunks

    def save(self, index: int, chunk: dict) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **chunk)
        fs.write_atomic(self.path(index), buffer.getvalue())

    def remove(self) -> None:
        fs.remove(self.directory)


class ReportStore:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def step_dir(self, step: int) -> str:
        return fs.join(self.out_dir, str(step))

    def report_path(self, step: int, slug: str) -> str:
        return fs.join(self.step_dir(step), f"{slug}.json")

    def grid_path(self, step: int, slug: str) -> str:
        return fs.join(self.step_dir(step), f"{slug}.png")

    def has(self, step: int, slug: str) -> bool:
        return fs.exists(self.report_path(step, slug))

    def read(self, step: int, slug: str) -> dict | None:
        path = self.report_path(step, slug)
        if not fs.exists(path):
            return None
        try:
            return json.loads(fs.read_text(path))
        except (OSError, ValueError):
            logging.warning("Ignoring unreadable report %s; it is computed again.", path)
            return None

    def write(self, step: int, slug: str, report: dict) -> str:
        path = self.report_path(step, slug)
        fs.write_atomic(path, json.dumps(report, indent=2, default=str) + "\n")
        return path

    def chunks(self, step: int, slug: str, signature: dict) -> ChunkStore:
        return ChunkStore(fs.join(self.step_dir(step), f"{slug}.samples"), signature)

    def remove_orphans(self, available_steps: list[int]) -> None:
        """Sample chunks of checkpoints that no longer exist (training's retention deleted them
        before their evaluation finished): they can never be completed."""
        for name in fs.listdir(self.out_dir):
            if name.isdigit() and int(name) not in available_steps:
                for entry in fs.listdir(self.step_dir(int(name))):
                    if entry.endswith(".samples"):
                        logging.info("Removing %s: checkpoint %s no longer exists.", entry, name)
                        fs.remove(fs.join(self.step_dir(int(name)), entry))


def summary_line(report: dict[str, Any]) -> str:
    """The report without bulky fields, as one JSON line (for scripts that follow sweeps)."""
    keep = ("step", "setting", "fid", "kid", "kid_std", "is", "nfe", "sampler", "num_steps",
            "guidance_scale", "use_ema", "num_samples", "seconds", "report", "existing",
            "skipped", "prompt_accuracy", "prompt_accuracy_seen", "prompt_accuracy_unseen",
            "classifier_test_accuracy", "clip_score", "clip_score_prompts")
    return json.dumps({k: report[k] for k in keep if k in report}, default=str)


def format_table(reports: list[dict[str, Any]]) -> str:
    header = ("step", "setting", "NFE", "samples", "FID", "KID", "seconds")
    rows = []
    for r in reports:
        if r.get("skipped"):
            rows.append((str(r["step"]), r.get("setting", ""), "-", "-", "skipped", "-", "-"))
            continue
        nfe = r.get("nfe")
        rows.append((str(r["step"]), r.get("setting", ""),
                     f"{nfe:.1f}" if isinstance(nfe, float) else str(nfe),
                     str(r.get("num_samples")), f"{r['fid']:.3f}",
                     "-" if r.get("kid") is None else f"{r['kid']:.5f}",
                     f"{r.get('seconds', 0):.1f}"))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
