"""optax optimizer from `config.optim`: clipping, Adam(W), and the learning-rate schedule.

Schedules (`optim.schedule`), each after a linear warm-up from 0 over `optim.warmup_steps`:
    constant  lr from then on (score_sde, DiT, EDM's CIFAR-10 recipe)
    cosine    cosine decay from lr to lr * min_lr_ratio at `optim.decay_steps`
    linear    linear decay from lr to lr * min_lr_ratio at `optim.decay_steps`
`optim.decay_steps` counts from step 0 (warm-up included); <= 0 means training.num_train_steps,
which the caller passes as `total_steps`. The loop logs the value of the schedule as `lr`.
"""

from __future__ import annotations

import optax

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw}


def _constant(lr: float, warmup: int, decay_steps: int, final: float) -> optax.Schedule:
    del decay_steps, final
    return optax.constant_schedule(lr)


def _cosine(lr: float, warmup: int, decay_steps: int, final: float) -> optax.Schedule:
    return optax.cosine_decay_schedule(lr, max(decay_steps - warmup, 1), alpha=final / lr)


def _linear(lr: float, warmup: int, decay_steps: int, final: float) -> optax.Schedule:
    return optax.linear_schedule(lr, final, max(decay_steps - warmup, 1))


# name -> the schedule after warm-up, as a function of (lr, warmup, decay_steps, final lr).
SCHEDULES = {"constant": _constant, "cosine": _cosine, "linear": _linear}


def learning_rate_schedule(optim_config, total_steps: int | None = None) -> optax.Schedule:
    """Linear warm-up from 0 to `lr` over `warmup_steps`, then the named schedule."""
    name = optim_config.get("schedule", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"Unknown optim.schedule={name!r}; choose one of {sorted(SCHEDULES)}.")
    lr, warmup = float(optim_config.lr), int(optim_config.warmup_steps)
    decay_steps = int(optim_config.get("decay_steps", 0) or 0)
    if decay_steps <= 0:
        decay_steps = int(total_steps or 0)
    if name != "constant" and decay_steps <= warmup:
        raise ValueError(f"optim.schedule={name!r} needs optim.decay_steps (or "
                         f"training.num_train_steps) > optim.warmup_steps={warmup}; set "
                         f"--config.optim.decay_steps.")
    final = lr * float(optim_config.get("min_lr_ratio", 0.0))
    after = SCHEDULES[name](lr, warmup, decay_steps, final)
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optim_config, total_steps: int | None = None) -> optax.GradientTransformation:
    try:
        optimizer = OPTIMIZERS[optim_config.optimizer]
    except KeyError:
        raise ValueError(
            f"Unknown optim.optimizer={optim_config.optimizer!r}; choose one of {sorted(OPTIMIZERS)}."
        ) from None
    kwargs = dict(learning_rate=learning_rate_schedule(optim_config, total_steps),
                  b1=optim_config.beta1, b2=optim_config.beta2, eps=optim_config.eps)
    if optim_config.optimizer == "adamw":
        kwargs["weight_decay"] = optim_config.weight_decay
    elif optim_config.weight_decay:
        raise ValueError("optim.weight_decay needs --config.optim.optimizer=adamw.")
    transforms = [optimizer(**kwargs)]
    if optim_config.grad_clip > 0:
        transforms.insert(0, optax.clip_by_global_norm(optim_config.grad_clip))
    return optax.chain(*transforms)
