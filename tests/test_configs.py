"""Every shipped config loads, keeps the base schema, and builds its model without allocating."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from diffjax.config.schema import base_config
from diffjax.experiment import example_condition
from diffjax.models import build_model

SECTION_ORDER = ["data", "model", "autoencoder", "classifier", "pipeline", "sde", "training",
                 "optim", "sampling", "eval", "mesh", "compile", "export"]
CONFIGS = {
    "digits.py": [None, "test", "sde=ve", "sde=subvp", "cond", "dit", "test,cond,dit", "text",
                  "text,test", "consistency", "meanflow", "distill", "distill,flow",
                  "distill,edm", "test,meanflow,cond,dit"],
    "cifar10_ddpmpp_vp.py": [None, "deep"],
    "cifar10_ddpmpp_subvp.py": [None, "deep"],
    "cifar10_ncsnpp_ve.py": [None, "deep"],
    "cifar10_dit.py": ["S", "B,uncond"],
    "imagenet64_dit.py": ["S", "XL"],
    "cifar10_edm.py": [None, "cond"],
    "cifar10_ddpm.py": [None],
    "imagenet256_dit.py": [None, "S", "B", "L", "XL"],
    "imagenet256_sit.py": [None, "S", "B", "L", "XL"],
    "cifar10_scm.py": [None, "distill"],
    "imagenet256_meanflow.py": [None, "B", "XL"],
    "sd.py": [None, "sd21", "sdxl", "test", "sdxl,test", "finetune", "finetune,sd21,test"],
    "imagenet_adm_classifier.py": [None, "512"],
}
# Parameter counts of the published networks, as their reference code counts them (sum of
# model.parameters(), measured with torch): NVlabs/edm's EDMPrecond(SongUNet) at train.py's
# --arch=ddpmpp with augment_dim=9; score_sde's models/ddpm.py; facebookresearch/DiT's models.py
# (learn_sigma=True; SiT: learn_sigma=False, see configs/imagenet256_sit.py). DiT's fixed sin-cos
# table `pos_embed` is a parameter there and a constant in diffjax: (count, fixed table).
PUBLISHED_PARAMS = {
    ("cifar10_edm.py", None): (55_733_891, 0),
    ("cifar10_edm.py", "cond"): (55_735_299, 0),
    ("cifar10_ddpm.py", None): (35_218_947, 0),
    ("imagenet256_dit.py", "S"): (32_963_360, 98_304),
    ("imagenet256_dit.py", "B"): (130_512_416, 196_608),
    ("imagenet256_dit.py", "L"): (458_102_816, 262_144),
    ("imagenet256_dit.py", "XL"): (675_129_632, 294_912),
    ("imagenet256_dit.py", None): (675_129_632, 294_912),
    ("imagenet256_sit.py", "S"): (32_957_200, 98_304),
    ("imagenet256_sit.py", "B"): (130_500_112, 196_608),
    ("imagenet256_sit.py", "L"): (458_086_416, 262_144),
    ("imagenet256_sit.py", "XL"): (675_111_184, 294_912),
    ("imagenet256_sit.py", None): (675_111_184, 294_912),
    # MeanFlow's DiT (Gsunshine/meanflow models_dit.py): SiT's count plus its h_embedder, a
    # second TimestepEmbedder (256 -> d -> d); the paper's "131M" and "676M".
    ("imagenet256_meanflow.py", "B"): (131_288_080, 196_608),
    ("imagenet256_meanflow.py", "XL"): (676_735_504, 294_912),
    ("imagenet256_meanflow.py", None): (676_735_504, 294_912),
    # EDM's DDPM++ (55,733,891) plus sCM's adaptive-weighting head: 64 fixed Fourier
    # frequencies and Linear(128, 1).
    ("cifar10_scm.py", None): (55_734_084, 0),
    ("cifar10_scm.py", "distill"): (55_734_084, 0),
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
    if name == "sd.py":  # a pretrained pipeline's networks come from its folder
        return
    model = build_model(config)
    x = jax.ShapeDtypeStruct((2, *network_input_shape(config)), jnp.float32)
    labels = example_condition(config, 2, abstract=True)  # class ids, text states or None
    # MeanFlow's networks take (t, t - r) per example.
    noise = jax.ShapeDtypeStruct((2, 2) if config.model.second_time_embedding else (2,),
                                 jnp.float32)
    variables = jax.eval_shape(
        lambda x, c, y: model.init(jax.random.key(0), x, c, y, train=False), x, noise, labels)
    assert jax.tree.leaves(variables)
    if (name, arg) in PUBLISHED_PARAMS:
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))
        reference, fixed_table = PUBLISHED_PARAMS[(name, arg)]
        print(f"{name}:{arg}: {count:,} parameters (+ {fixed_table:,} fixed)")
        assert count + fixed_table == reference


def network_input_shape(config):
    """Images, or for a latent config the latents of its VAE (the SD-VAE architecture in the
    config, so that no pretrained folder is needed: 256 px -> 32x32x4)."""
    from diffjax.latents.latent_mode import model_input_shape

    if config.data.latent_dir:
        config = config.copy_and_resolve_references()
        config.autoencoder.pretrained = ""
    return model_input_shape(config)


def test_latent_imagenet_configs_build_with_a_diffusers_vae():
    """imagenet256_dit/sit as built for training, with the tiny diffusers VAE fixture in place of
    the SD-VAE folder and a tiny network: the experiment, its process and sampler validate."""
    from diffjax.experiment import build_experiment
    from diffjax.modes.preflight import trace_sampler

    for name in ("imagenet256_dit.py", "imagenet256_sit.py"):
        config = load(name).get_config("S")
        config.autoencoder.pretrained = os.path.join(REPO, "tests", "fixtures", "vae_sd")
        config.data.image_size = 16  # the fixture's downsampling 2: 8x8x4 latents
        config.model.dit.size = ""
        config.model.dit.hidden_size, config.model.dit.depth, config.model.dit.num_heads = 32, 1, 2
        config.sampling.num_steps = 3
        config.mesh.fsdp, config.mesh.data = 1, -1
        experiment = build_experiment(config)
        assert experiment.sde.name == config.sde.name
        trace_sampler(config, experiment, 2)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="valid"):
        load("digits.py").get_config("nope")
