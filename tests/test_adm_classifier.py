"""ADM's noise-conditional classifier against guided-diffusion's own code: random-weight state
dicts saved as the published classifiers are (tools/make_adm_classifier_fixture.py), converted by
`diffjax.convert` and run by diffjax, give guided-diffusion's logits; the published settings
count guided-diffusion's parameters; a converted classifier is the run's classifier, reads x_t
unscaled at the DDPM process's timestep index; what does not fit is one line."""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from diffjax import convert
from diffjax.config.schema import base_config
from diffjax.convert.target import _unflatten
from diffjax.diffusion.classifier_guidance import classifier_logits
from diffjax.experiment import (build_experiment, classifier_network, classifier_sigma_data,
                                load_classifier, resolve_classifier_path)
from diffjax.models import build_classifier

FIXTURES = os.path.join(REPO, "tests", "fixtures", "adm_classifier")
REFERENCE = np.load(os.path.join(FIXTURES, "reference.npz"))
# The fixture's EncoderUNetModel settings (tools/make_adm_classifier_fixture.py) as diffjax keys;
# attention at downsampling 1 and 2 of 16 px = resolutions 16 and 8.
SETTINGS = {
    "attention": dict(nf=32, num_res_blocks=1, attn_resolutions=(16, 8), ch_mult=(1, 1),
                      num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
                      pool="attention"),
    "adaptive": dict(nf=32, num_res_blocks=1, attn_resolutions=(8,), ch_mult=(1, 1),
                     num_heads=2, num_head_channels=-1, use_scale_shift_norm=False,
                     resblock_updown=False, new_attention_order=True, pool="adaptive"),
}


def fixture_config(kind: str, **changes):
    config = base_config()
    config.data.image_size, config.data.num_channels, config.data.num_classes = 16, 3, 5
    config.data.dataset = "digits"
    config.model.name, config.model.dit.size = "dit", ""
    config.model.dit.hidden_size, config.model.dit.depth, config.model.dit.num_heads = 32, 1, 2
    config.sde.name, config.sde.num_timesteps = "ddpm", 1000
    config.classifier.name = "adm"
    for key, value in {**SETTINGS[kind], **changes}.items():
        setattr(config.classifier, key, value)
    return config


@pytest.mark.parametrize("kind", sorted(SETTINGS))
def test_converted_classifier_gives_guided_diffusions_logits(kind):
    config = fixture_config(kind)
    target, params, ema_params, step = convert.convert_params(
        "adm_classifier", os.path.join(FIXTURES, f"{kind}.pt"), config)
    assert step == 0 and all(np.array_equal(params[p], ema_params[p]) for p in params)
    net = build_classifier(config)
    logits = net.apply({"params": _unflatten(params)}, jnp.asarray(REFERENCE["x"]),
                       jnp.asarray(REFERENCE["timesteps"]))
    expected = REFERENCE[f"{kind}_logits32"]
    print(kind, float(np.abs(logits - expected).max()), float(np.abs(expected).max()))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=2e-5)
    count = sum(int(np.prod(v.shape)) for v in params.values())
    assert count == int(REFERENCE[f"{kind}_num_params"])


def test_published_settings_count_guided_diffusions_parameters():
    spec = importlib.util.spec_from_file_location(
        "adm_config", os.path.join(REPO, "configs", "imagenet_adm_classifier.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for size in module.SIZES:
        config = module.get_config(size)
        net = build_classifier(config)
        pixels = config.data.image_size
        shapes = jax.eval_shape(lambda: net.init(
            jax.random.key(0), jnp.zeros((1, pixels, pixels, 3)), jnp.zeros((1,))))
        count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
        assert count == int(REFERENCE[f"published_{size}_num_params"]), size


def test_the_cli_conversion_is_the_runs_classifier_on_unscaled_x_t(tmp_path):
    """`python -m diffjax.convert --source=adm_classifier` writes WORKDIR/classifier, which
    load_classifier restores; classifier guidance's logits feed it x_t itself and the DDPM
    timestep index n = N t - 1, so at t = (n + 1) / N they are guided-diffusion's."""
    config = fixture_config("attention")
    workdir = str(tmp_path / "run")
    path = convert.convert("adm_classifier", os.path.join(FIXTURES, "attention.pt"), config,
                           workdir)
    assert path.startswith(os.path.join(workdir, "classifier", "checkpoints"))
    resolved = resolve_classifier_path(config, workdir)
    classifier = load_classifier(resolved)
    assert classifier.step == 0 and classifier_sigma_data(resolved) is None
    process = build_experiment(resolved).sde
    t = (jnp.asarray(REFERENCE["timesteps"]) + 1.0) / 1000.0
    logits = classifier_logits(classifier_network(classifier.module, classifier.params), process,
                               jnp.asarray(REFERENCE["x"]), t, classifier_sigma_data(resolved))
    np.testing.assert_allclose(logits, REFERENCE["attention_logits32"], rtol=1e-4, atol=5e-5)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        convert.convert("adm_classifier", os.path.join(FIXTURES, "attention.pt"), config,
                        workdir)


def _one_line(fn, match):
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_what_does_not_fit_is_one_line(tmp_path):
    attention = os.path.join(FIXTURES, "attention.pt")
    message = _one_line(lambda: convert.convert(
        "adm_classifier", attention, fixture_config("attention", num_res_blocks=2),
        str(tmp_path / "a")), r"checkpoint and config differ at guided-diffusion classifier "
        r"parameter .*; check classifier\.nf, ch_mult, num_res_blocks")
    print(message)
    _one_line(lambda: convert.convert("adm_classifier", attention,
                                      fixture_config("attention", pool="adaptive"),
                                      str(tmp_path / "b")), "out")
    other = fixture_config("attention")
    other.classifier.name = "unet"
    _one_line(lambda: convert.convert("adm_classifier", attention, other, str(tmp_path / "c")),
              "set --config.classifier.name=adm")
    assert not os.path.exists(tmp_path / "a" / "classifier" / "checkpoints" / "0")
