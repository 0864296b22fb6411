"""Tiny digits networks with every parameter random (zero-initialised layers too, or a test of
their derivatives would prove nothing), bound to their process as diffjax model functions."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {"vp": "test", "trigflow": "test,consistency", "meanflow": "test,meanflow",
            "meanflow_dit": "test,meanflow,dit", "flow": "test,flow"}


def digits_config(arg: str):
    spec = importlib.util.spec_from_file_location("digits_config",
                                                  os.path.join(REPO, "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def random_params(model, example_input, seed: int = 0):
    import flax.linen as nn

    variables = nn.unbox(model.init(jax.random.key(seed), *example_input, train=False))
    leaves, tree = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [leaf + 0.2 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, noisy)


def random_network_model(name: str, seed: int = 0):
    """The model function of the tiny network `name` (a key of VARIANTS)."""
    from diffjax.experiment import build_experiment, score_fn_for

    config = digits_config(VARIANTS[name])
    config.mesh.data = 1
    experiment = build_experiment(config, jax.devices()[:1])
    params = random_params(experiment.model, experiment.example_input(), seed)
    return score_fn_for(config, experiment.model, experiment.sde, params)


__all__ = ["digits_config", "random_network_model", "random_params", "jnp"]
