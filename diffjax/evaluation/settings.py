"""Evaluation settings: what identifies an FID number, and sweeps over sampler settings.

A checkpoint is evaluated many ways (NFE sweeps, guidance sweeps, EMA or raw weights, sample
counts), so a report is identified by everything that changes its number, not by the step alone:
the sampler and every option it reads, guidance, EMA, the number of samples and the batch they
are drawn in (noise is drawn per batch), the seed, the data range conversion and the reference
statistics. `EvalSetting.signature` is that identity; `slug` is a readable file name that carries
the main settings plus a hash of the whole signature.

Sweeps: `--config.eval.sweep="sampling.guidance_scale=1,1.5,4;sampling.num_steps=10,20"` runs
the cartesian product (6 settings here) for every selected checkpoint. Keys are any field of
`config.sampling` and `eval.num_samples`; values are parsed like command-line values and checked
against the field's type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any

from diffjax import sampling
from diffjax.config.loading import set_field, unknown_key

SWEEPABLE_PREFIXES = ("sampling.",)
SWEEPABLE_KEYS = ("eval.num_samples",)


def parse_value(text: str) -> Any:
    text = text.strip()
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_sweep(spec: str) -> list[tuple[str, list[Any]]]:
    """"a=1,2;b=x" -> [("a", [1, 2]), ("b", ["x"])]; raises ValueError naming the problem."""
    axes = []
    for part in [p for p in spec.split(";") if p.strip()]:
        if "=" not in part:
            raise ValueError(f"eval.sweep part {part.strip()!r} is not KEY=V1,V2,...; e.g. "
                             f"--config.eval.sweep='sampling.guidance_scale=1,1.5'")
        key, values = part.split("=", 1)
        key = key.strip()
        if key.startswith("config."):
            key = key[len("config."):]
        problem = unknown_key(key)
        if problem:
            raise ValueError(f"eval.sweep: {problem}")
        if not (key.startswith(SWEEPABLE_PREFIXES) or key in SWEEPABLE_KEYS):
            raise ValueError(f"eval.sweep key {key!r} cannot be swept; use a sampling.* key or "
                             f"eval.num_samples")
        parsed = [parse_value(v) for v in values.split(",") if v.strip()]
        if not parsed:
            raise ValueError(f"eval.sweep key {key!r} has no values")
        axes.append((key, parsed))
    return axes


def _set(config, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part, {})
    kind = node.get_type(leaf) if hasattr(node, "get_type") and leaf in node else None
    # Values were parsed without the field's type: 1 for a bool, 3 for a string (labels=3).
    if kind is bool and value in (0, 1) and not isinstance(value, bool):
        value = bool(value)
    elif kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    set_field(config, key, value, source="eval.sweep")  # "did you mean", the field's type


@dataclasses.dataclass(frozen=True)
class EvalSetting:
    overrides: tuple[tuple[str, Any], ...]
    config: Any

    def signature(self, reference_name: str) -> dict[str, Any]:
        c = self.config
        text = bool(c.data.get("text_encoder", ""))
        conditional = bool(c.model.conditional) or text
        signature = {
            "sampler": c.sampling.method,
            "options": sampling.sampler_options(c.sampling),
            "guidance_scale": float(c.sampling.guidance_scale) if conditional else None,
            "use_ema": bool(c.sampling.use_ema),
            "num_samples": int(c.eval.num_samples),
            "batch_size": int(c.eval.batch_size),
            "seed": int(c.seed),
            "centered": bool(c.data.centered),
            "dequantize": bool(c.data.dequantize),
            "reference": reference_name,
        }
        if text:  # what else a text model's report measures
            signature.update(prompts=str(c.eval.prompts),
                             prompt_num_samples=int(c.eval.prompt_num_samples),
                             clip_model=str(c.eval.clip_model),
                             caption_null=str(c.training.caption_null))
        return signature

    def slug(self, reference_name: str) -> str:
        c = self.config
        options = sampling.sampler_options(c.sampling)
        parts = [c.sampling.method]
        if "num_steps" in options:
            parts.append(f"{options['num_steps']}steps")
        if c.model.conditional or c.data.get("text_encoder", ""):
            parts.append(f"cfg{float(c.sampling.guidance_scale):g}")
        if not c.sampling.use_ema:
            parts.append("raw")
        parts.append(f"n{int(c.eval.num_samples)}")
        digest = hashlib.blake2b(json.dumps(self.signature(reference_name), sort_keys=True,
                                            default=str).encode(), digest_size=3).hexdigest()
        return "_".join(parts) + f"_{digest}"

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides) or "config as given"


def settings_from_config(config) -> list[EvalSetting]:
    """One setting per point of eval.sweep (just the config itself without a sweep)."""
    axes = parse_sweep(str(config.eval.get("sweep", "") or ""))
    if not axes:
        return [EvalSetting((), config)]
    keys = [k for k, _ in axes]
    settings = []
    for values in itertools.product(*[v for _, v in axes]):
        variant = config.copy_and_resolve_references()
        for key, value in zip(keys, values):
            _set(variant, key, value)
        variant.lock()
        settings.append(EvalSetting(tuple(zip(keys, values)), variant))
    return settings
