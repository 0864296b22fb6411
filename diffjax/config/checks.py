"""Checks a config can pass or fail on its own: each key's range and syntax.

These need nothing but the config, so `diffjax.config.load` runs them and so does every mode.
What needs other packages or the machine (registry names, the mesh against the devices, the
dataset's metadata, a trace of the network and the sampler) is the modes' pre-flight,
`diffjax.modes.preflight`, which raises the same `ConfigError`.
"""

from __future__ import annotations

from typing import Any, Callable


class ConfigError(ValueError):
    """An invalid config value; the message names the key and the fix."""


def _at_least(minimum):
    return lambda v: v >= minimum, f">= {minimum}"


def _in_closed(lo, hi):
    return lambda v: lo <= v <= hi, f"in [{lo}, {hi}]"


def _positive():
    return lambda v: v > 0, "> 0"


# key -> (predicate, description of the valid range); every mode checks these.
RANGE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": _at_least(0),
    "data.image_size": _at_least(1),
    "data.num_channels": _at_least(1),
    "data.num_classes": _at_least(1),
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "model.label_dropout": _in_closed(0.0, 1.0),
    "model.sigma_data": _positive(),
    "training.batch_size": _at_least(1),
    "training.num_train_steps": _at_least(1),
    "training.microbatches": _at_least(1),
    "training.log_every_steps": _at_least(1),
    "training.checkpoint_every_steps": _at_least(1),
    "training.sample_every_steps": _at_least(1),
    "training.eval_every_steps": _at_least(0),
    "training.max_checkpoints_to_keep": _at_least(1),
    "training.num_sample_images": _at_least(1),
    "training.ema_decay": _in_closed(0.0, 1.0),
    # 0 only where the process allows it (flow matching: SiT's t ~ U(0, 1)); the pre-flight
    # checks that against the process.
    "training.eps": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "training.preemption_check_every_steps": _at_least(1),
    "optim.lr": _positive(),
    "optim.beta1": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optim.beta2": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "optim.eps": _positive(),
    "optim.weight_decay": _at_least(0.0),
    "optim.warmup_steps": _at_least(0),
    "sampling.num_steps": _at_least(1),
    "sampling.num_samples": _at_least(1),
    "sampling.batch_size": _at_least(1),
    "eval.num_samples": _at_least(2),
    "eval.batch_size": _at_least(1),
    "eval.inception_batch_size": _at_least(1),
    "eval.likelihood_batch_size": _at_least(1),
    "eval.likelihood_max_examples": _at_least(0),
    "eval.watch_timeout_s": _at_least(0),
}


def _get(config, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _has(config, key: str) -> bool:
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def fail(key: str, value: Any, problem: str, fix: str) -> None:
    raise ConfigError(f"config.{key}={value!r} {problem}; {fix}")


def check_ranges(config) -> None:
    for key, (valid, description) in RANGE_CHECKS.items():
        if not _has(config, key):
            continue
        value = _get(config, key)
        if value is None:
            continue
        try:
            ok = bool(valid(value))
        except TypeError:
            ok = False
        if not ok:
            fail(key, value, f"must be {description}", f"set --config.{key} to a value "
                                                      f"{description}")
