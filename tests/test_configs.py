"""Every shipped config loads, keeps the base schema, and builds its model without allocating."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO
from diffjax.config_base import base_config
from diffjax.models import build_model

SECTION_ORDER = ["data", "model", "autoencoder", "sde", "training", "optim", "sampling", "eval",
                 "mesh"]
CONFIGS = {
    "digits.py": [None, "test", "sde=ve", "sde=subvp", "cond", "dit", "test,cond,dit"],
    "cifar10_ddpmpp_vp.py": [None, "deep"],
    "cifar10_ddpmpp_subvp.py": [None, "deep"],
    "cifar10_ncsnpp_ve.py": [None, "deep"],
    "cifar10_dit.py": ["S", "B,uncond"],
    "imagenet64_dit.py": ["S", "XL"],
}


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat_keys(config, prefix=""):
    keys = set()
    for key, value in config.items():
        if hasattr(value, "items"):
            keys |= flat_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


def test_every_config_file_is_listed():
    assert sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "configs", "*.py"))) \
        == sorted(CONFIGS)


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in CONFIGS.items() for a in args])
def test_config_schema_and_model(name, arg):
    module = load(name)
    assert "Launch" in module.__doc__ and "Expected" in module.__doc__
    config = module.get_config(arg)
    assert flat_keys(config) == flat_keys(base_config()), "configs change values, never keys"
    # Readers find sections in one order: the first line touching each comes in that order.
    source = open(module.__file__).read().split("def get_config", 1)[1]
    first_use = {s: source.find(f"config.{s}.") for s in SECTION_ORDER if f"config.{s}." in source}
    assert sorted(first_use, key=first_use.get) == [s for s in SECTION_ORDER if s in first_use]
    model = build_model(config)
    d = config.data
    x = jax.ShapeDtypeStruct((2, d.image_size, d.image_size, d.num_channels), jnp.float32)
    labels = jax.ShapeDtypeStruct((2,), jnp.int32) if config.model.conditional else None
    noise = jax.ShapeDtypeStruct((2,), jnp.float32)
    variables = jax.eval_shape(
        lambda x, c, y: model.init(jax.random.key(0), x, c, y, train=False), x, noise, labels)
    assert jax.tree.leaves(variables)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="valid"):
        load("digits.py").get_config("nope")
