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
    "training.sample_every_steps": _at_least(0),
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
    "classifier.name": (lambda v: v in ("unet", "dit", "adm"), "'unet', 'dit' or 'adm'"),
    "classifier.pool": (lambda v: v in ("attention", "adaptive"), "'attention' or 'adaptive'"),
    "classifier.num_head_channels": (lambda v: v == -1 or v >= 1, "-1 (use num_heads) or >= 1"),
    "classifier.nf": _at_least(1),
    "classifier.num_res_blocks": _at_least(1),
    "classifier.train_steps": _at_least(1),
    "classifier.train_batch_size": _at_least(1),
    "classifier.lr": _positive(),
    "classifier.dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "training.consistency.tangent_warmup_steps": _at_least(0),
    "training.consistency.tangent_norm_c": _at_least(0.0),
    "training.meanflow.ratio": _in_closed(0.0, 1.0),
    "training.meanflow.norm_p": _at_least(0.0),
    "training.meanflow.norm_eps": _positive(),
    "sampling.classifier_scale": _at_least(0.0),
    "training.min_snr_gamma": _at_least(0.0),
    "training.noise_offset": _at_least(0.0),
}

# training.objective -> what it needs of the rest of the config: (check, problem, fix).
OBJECTIVE_NAMES = ("diffusion", "consistency", "meanflow")


def check_objective(config) -> None:
    """The combinations the few-step objectives need (each fails with the key and the fix)."""
    t, m = config.training, config.model
    name = t.get("objective", "diffusion")
    if name not in OBJECTIVE_NAMES:
        fail("training.objective", name, "is not an objective",
             f"choose one of {list(OBJECTIVE_NAMES)}")
    if name == "meanflow":
        if not m.second_time_embedding:
            fail("model.second_time_embedding", False, "is needed by training.objective=meanflow "
                 "(the network's second time input, t - r)",
                 "set --config.model.second_time_embedding=True")
        if m.parameterization not in ("velocity", "trigflow"):
            fail("model.parameterization", m.parameterization, "is not a velocity, which "
                 "MeanFlow's average velocity is", "set --config.model.parameterization=velocity")
    text = bool(config.data.get("text_encoder", ""))
    for key in ("min_snr_gamma", "noise_offset"):
        if float(t.get(key, 0.0) or 0.0) and name != "diffusion":
            fail(f"training.{key}", t[key], f"applies to the denoising loss, not "
                 f"training.objective={name!r}", "set it to 0")
    if float(t.get("min_snr_gamma", 0.0) or 0.0) and t.likelihood_weighting:
        fail("training.min_snr_gamma", t.min_snr_gamma, "and training.likelihood_weighting both "
             "weight the loss over time", "keep one of them")
    if name != "diffusion" or m.get("teacher", ""):
        if text:
            fail("training.objective", name, "is not implemented for text models "
                 "(data.text_encoder)", "use training.objective=diffusion")
        if m.get("controlnet", "") or ("lora" in m and int(m.lora.rank)):
            fail("training.objective", name, "trains a whole network, not a LoRA adapter or a "
                 "ControlNet", "set model.lora.rank=0 and model.controlnet=''")
    if text and float(config.sampling.get("classifier_scale", 0.0) or 0.0):
        fail("sampling.classifier_scale", config.sampling.classifier_scale, "guides towards "
             "class labels, but this model is conditioned on text", "set it to 0")
    if m.get("controlnet", "") and float(config.sampling.get("classifier_scale", 0.0) or 0.0):
        fail("sampling.classifier_scale", config.sampling.classifier_scale, "is not implemented "
             "for ControlNet sampling", "set it to 0")
    if m.get("teacher", "") and name != "consistency":
        fail("model.teacher", m.teacher, f"is set but training.objective={name!r} does not "
             f"distil", "set --config.training.objective=consistency (sCM's distillation)")
    sigma_d = config.sde.get("sigma_data")
    if config.sde.name == "trigflow" and sigma_d is not None and sigma_d != m.sigma_data:
        fail("sde.sigma_data", sigma_d, f"differs from model.sigma_data={m.sigma_data} (TrigFlow's "
             f"sigma_d is both)", "leave sde.sigma_data unset or make them equal")


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
