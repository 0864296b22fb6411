"""optax optimizer from `config.optim`: clipping, Adam(W), linear warm-up."""

from __future__ import annotations

import optax

OPTIMIZERS = {"adam": optax.adam, "adamw": optax.adamw}


def learning_rate_schedule(optim_config) -> optax.Schedule:
    """Linear warm-up from 0 to `lr` over `warmup_steps`, then constant (score_sde)."""
    if optim_config.warmup_steps <= 0:
        return optax.constant_schedule(optim_config.lr)
    return optax.linear_schedule(0.0, optim_config.lr, optim_config.warmup_steps)


def make_optimizer(optim_config) -> optax.GradientTransformation:
    try:
        optimizer = OPTIMIZERS[optim_config.optimizer]
    except KeyError:
        raise ValueError(
            f"Unknown optim.optimizer={optim_config.optimizer!r}; choose one of {sorted(OPTIMIZERS)}."
        ) from None
    kwargs = dict(learning_rate=learning_rate_schedule(optim_config), b1=optim_config.beta1,
                  b2=optim_config.beta2, eps=optim_config.eps)
    if optim_config.optimizer == "adamw":
        kwargs["weight_decay"] = optim_config.weight_decay
    elif optim_config.weight_decay:
        raise ValueError("optim.weight_decay needs --config.optim.optimizer=adamw.")
    transforms = [optimizer(**kwargs)]
    if optim_config.grad_clip > 0:
        transforms.insert(0, optax.clip_by_global_norm(optim_config.grad_clip))
    return optax.chain(*transforms)
