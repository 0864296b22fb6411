"""`python -m diffjax.convert`: converted reference networks compute what the reference code
computes, mismatches stop with one line, and the result is an ordinary diffjax checkpoint.

The fixtures are tiny networks built and randomly initialised (every parameter) by the
reference repositories' own code, saved in their official formats, with the raw outputs of
that code on fixed inputs (tools/make_reference_fixtures.py says how to regenerate them).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures")
REFERENCE = np.load(os.path.join(FIXTURES, "reference_outputs.npz"))
TOLERANCE = 1e-4  # relative L2 error of the raw network output

TINY_UNET = {"data.image_size": 8, "model.unet.nf": 8, "model.unet.ch_mult": (1, 2),
             "model.unet.num_res_blocks": 1, "model.unet.attn_resolutions": (4,)}
VP = "configs/cifar10_ddpmpp_vp.py"
VE = "configs/cifar10_ncsnpp_ve.py"

# name -> (source, checkpoint file, config file, overrides, inputs(reference) -> (x, cond, labels)).
CASES = {
    "score_sde_ddpmpp_vp": (
        "score_sde", "score_sde_ddpmpp_vp.pth", VP, {**TINY_UNET, "data.num_channels": 1},
        lambda r: (r["x"], r["time_cond"], None)),  # score_sde feeds 999 t, as diffjax
    "score_sde_ncsnpp_ve": (
        "score_sde", "score_sde_ncsnpp_ve.pth", VE, TINY_UNET,
        lambda r: (r["x"], np.log(r["time_cond"]), None)),  # score_sde feeds sigma, takes log
    "score_sde_variant_skip": (
        "score_sde", "score_sde_variant_skip.pth", VE,
        {**TINY_UNET, "data.centered": True, "model.unet.progressive": "output_skip",
         "model.unet.progressive_input": "input_skip", "model.unet.progressive_combine": "cat",
         "model.unet.skip_rescale": False, "model.unet.nonlinearity": "elu",
         "model.unet.scale_by_sigma": False},
        lambda r: (r["x"], np.log(r["time_cond"]), None)),
    "score_sde_variant_ddpm": (
        "score_sde", "score_sde_variant_ddpm.pth", VP,
        {**TINY_UNET, "data.centered": False, "model.unet.resblock_type": "ddpm",
         "model.unet.fir": True, "model.unet.resamp_with_conv": False,
         "model.unet.progressive_input": "input_skip", "model.unet.nonlinearity": "lrelu"},
        lambda r: (r["x"], r["time_cond"], None)),
    "score_sde_ddpm": (  # score_sde's models/ddpm.py (Ho et al.'s DDPM), fed the integer step
        "score_sde", "score_sde_ddpm.pth", "configs/cifar10_ddpm.py", TINY_UNET,
        lambda r: (r["x"], r["time_cond"], None)),
    "dit_tiny": (
        "dit", "dit_tiny.pt", "configs/cifar10_dit.py",
        {"data.image_size": 8, "data.num_channels": 4, "model.dit.size": "",
         "model.dit.hidden_size": 24, "model.dit.depth": 2, "model.dit.num_heads": 2,
         "model.dit.patch_size": 2, "model.dit.learn_sigma": True},
        lambda r: (r["x"], r["t"], r["y"])),
    "edm_ddpmpp_cond": (  # EDM's DDPM++ with class labels (edm-cifar10-32x32-cond-vp.pkl)
        "edm", "edm_ddpmpp_cond.pkl", VP,
        {**TINY_UNET, "model.conditional": True, "model.unet.label_embedding": "noise_features",
         "model.unet.augment_dim": 9},
        lambda r: (r["x"], r["noise_cond"], r["labels"])),
    "edm_ncsnpp_uncond": (  # the raw F of VEPrecond: inputs in [-1, 1], no division by sigma
        "edm", "edm_ncsnpp_uncond.pkl", VE,
        {**TINY_UNET, "data.centered": True, "model.unet.scale_by_sigma": False},
        lambda r: (r["x"], r["noise_cond"], None)),
}
CLI_CASES = ["score_sde_ddpmpp_vp", "score_sde_ncsnpp_ve", "dit_tiny", "edm_ddpmpp_cond"]
IN_PROCESS_CASES = [name for name in CASES if name not in CLI_CASES]


def make_config(name: str):
    _, _, config_file, overrides, _ = CASES[name]
    spec = importlib.util.spec_from_file_location("config", os.path.join(REPO, config_file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def cli_args(name: str) -> list[str]:
    source, checkpoint, config_file, overrides, _ = CASES[name]
    return [f"--source={source}", f"--checkpoint={os.path.join(FIXTURES, checkpoint)}",
            f"--config={config_file}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def run_convert(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "diffjax.convert", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"convert failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def relative_error(name: str, model, params, key: str = "out") -> float:
    from diffjax.experiment import network

    reference = {k.split("/", 1)[1]: REFERENCE[k] for k in REFERENCE.files
                 if k.startswith(name + "/")}
    x, cond, labels = CASES[name][-1](reference)
    labels = None if labels is None else jnp.asarray(labels)
    apply = jax.jit(lambda p, x, c, y: network(model, p, train=False)(x, c, y))
    out = np.asarray(apply(params, jnp.asarray(x), jnp.asarray(cond), labels))
    expected = reference[key]
    assert out.shape == expected.shape
    return float(np.linalg.norm(out - expected) / np.linalg.norm(expected))


def restored(name: str, workdir, use_ema: bool):
    from diffjax.experiment import build_experiment, open_checkpoints, restore_params

    experiment = build_experiment(make_config(name))
    checkpointer = open_checkpoints(str(workdir))
    try:
        step = checkpointer.latest_step()
        with experiment.activate():
            params = restore_params(experiment, checkpointer, step, use_ema)
    finally:
        checkpointer.close()
    return experiment.model, params, step


@pytest.fixture(scope="module")
def converted_vp(tmp_path_factory):
    """score_sde's DDPM++ (VP) fixture converted through the CLI, shared by two tests."""
    workdir = tmp_path_factory.mktemp("converted_vp")
    result = run_convert(*cli_args("score_sde_ddpmpp_vp"), f"--workdir={workdir}")
    return workdir, result


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_conversion_computes_the_reference_function(name, tmp_path, request):
    if name == "score_sde_ddpmpp_vp":
        workdir, result = request.getfixturevalue("converted_vp")
    else:
        workdir = tmp_path
        result = run_convert(*cli_args(name), f"--workdir={workdir}")
    assert "--mode=eval" in result.stdout
    model, ema, step = restored(name, workdir, use_ema=True)
    if CASES[name][0] == "score_sde":
        assert step == 1234  # the checkpoint's own step
        key = "out_ema"
    else:
        assert step == 0
        key = "out"
    error = relative_error(name, model, ema, key)
    print(f"{name}: relative L2 error {error:.2e}")
    assert error < TOLERANCE
    if name == "score_sde_ddpmpp_vp":  # raw weights -> params, EMA -> ema_params
        _, raw, _ = restored(name, workdir, use_ema=False)
        raw_error = relative_error(name, model, raw, "out_model")
        print(f"{name} (raw weights): relative L2 error {raw_error:.2e}")
        assert raw_error < TOLERANCE
        assert relative_error(name, model, raw, "out_ema") > 1e-3  # the two sets differ


@pytest.mark.parametrize("name", IN_PROCESS_CASES)
def test_other_switches_compute_the_reference_function(name):
    from diffjax.convert import convert_params
    from diffjax.convert.target import _unflatten

    source, checkpoint, *_ = CASES[name]
    target, _, ema, _ = convert_params(source, os.path.join(FIXTURES, checkpoint),
                                       make_config(name))
    key = "out_ema" if source == "score_sde" else "out"
    error = relative_error(name, target.experiment.model, _unflatten(ema), key)
    print(f"{name}: relative L2 error {error:.2e}")
    assert error < TOLERANCE


def test_edm_augmentation_layer_is_carried():
    """EDM's map_augment (random in the fixture) becomes augment_embedding: the outputs above
    feed it no labels, as diffjax feeds it zeros, so its weights are compared directly."""
    from diffjax.convert import convert_params, load
    from diffjax.storage.torch_files import module_state

    path = os.path.join(FIXTURES, "edm_ddpmpp_cond.pkl")
    _, params, ema, _ = convert_params("edm", path, make_config("edm_ddpmpp_cond"))
    weight = np.asarray(dict(module_state(load("edm", path)))["model.map_augment.weight"])
    assert weight.shape == (8, 9) and np.abs(weight).min() > 0
    np.testing.assert_array_equal(ema[("augment_embedding", "kernel")], weight.T)
    np.testing.assert_array_equal(params[("augment_embedding", "kernel")], weight.T)


def test_sit_checkpoint_is_the_negated_first_half_of_dit(tmp_path):
    """SiT's models.py is DiT's with forward() keeping the first C of 2C output channels; with
    diffjax's flow process (network fed SiT's s = 1 - t) the converted velocity is minus that."""
    from diffjax.convert import convert_params
    from diffjax.convert.mapping import CheckpointMismatch
    from diffjax.convert.target import _unflatten
    from diffjax.experiment import network

    config = make_config("dit_tiny")
    config.model.dit.learn_sigma = False
    config.sde.name = "flow"
    config.model.parameterization = "velocity"
    target, _, ema, _ = convert_params("sit", os.path.join(FIXTURES, "dit_tiny.pt"), config)
    x, t, y = (REFERENCE[f"dit_tiny/{k}"] for k in ("x", "t", "y"))
    out = np.asarray(network(target.experiment.model, _unflatten(ema), train=False)(
        jnp.asarray(x), jnp.asarray(t), jnp.asarray(y)))
    expected = -REFERENCE["dit_tiny/out"][..., :x.shape[-1]]
    error = float(np.linalg.norm(out - expected) / np.linalg.norm(expected))
    print(f"sit (dit_tiny): relative L2 error {error:.2e}")
    assert error < TOLERANCE
    config.model.dit.learn_sigma = True
    with pytest.raises(CheckpointMismatch, match="learn_sigma=False"):
        convert_params("sit", os.path.join(FIXTURES, "dit_tiny.pt"), config)


def test_mismatch_is_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "out"
    result = run_convert(*cli_args("score_sde_ncsnpp_ve"), "--config.model.unet.nf=16",
                         f"--workdir={workdir}", check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffjax: error")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "'module.all_modules.0.W'" in lines[0] and "model.unet.nf" in lines[0]
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


@pytest.mark.parametrize("name, overrides, message", [
    ("score_sde_ddpmpp_vp", {"model.unet.num_res_blocks": 2}, "model.unet.num_res_blocks"),
    ("score_sde_ddpmpp_vp", {"model.unet.resblock_type": "ddpm"},
     r"'module.all_modules.5.NIN_0.W'.*model.unet.resblock_type"),
    ("score_sde_ddpmpp_vp", {"data.num_channels": 3},
     r"'module.all_modules.2.weight'.*\[8, 1, 3, 3\].*\[8, 3, 3, 3\].*data.num_channels"),
    ("score_sde_ncsnpp_ve", {"model.noise_embedding": "positional"},
     r"'module.all_modules.0.W'.*model.noise_embedding=fourier"),
    ("dit_tiny", {"model.dit.learn_sigma": False},
     r"'final_layer.linear.weight'.*model.dit.learn_sigma"),
    ("dit_tiny", {"data.image_size": 16}, r"'pos_embed'.*data.image_size"),
    ("edm_ddpmpp_cond", {"model.unet.fir": True}, "model.unet.fir"),
    ("edm_ddpmpp_cond", {"model.unet.augment_dim": 0}, "model.unet.augment_dim=9"),
    ("edm_ncsnpp_uncond", {"model.unet.progressive_input": "none"},
     "model.unet.progressive_input=residual"),
])
def test_mismatches_name_the_parameter_and_the_config_key(name, overrides, message):
    from diffjax.convert import convert_params
    from diffjax.convert.mapping import CheckpointMismatch

    config = make_config(name)
    for key, value in overrides.items():
        section, *rest = key.split(".")
        node = config[section]
        for part in rest[:-1]:
            node = node[part]
        node[rest[-1]] = value
    source, checkpoint, *_ = CASES[name]
    with pytest.raises(CheckpointMismatch, match=message):
        convert_params(source, os.path.join(FIXTURES, checkpoint), config)


def test_converted_checkpoint_fine_tunes(converted_vp, tmp_path):
    """Training resumes from the converted step (state, EMA and data stream) on new data and
    writes its sample grid; sampling modes restore it as the CLI test above does."""
    import shutil

    from diffjax.storage.checkpoints import Checkpointer
    from diffjax.training.loop import train

    source, _ = converted_vp
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    config = make_config("score_sde_ddpmpp_vp")
    config.data.dataset = "digits"  # 8x8x1, ships with diffjax
    config.training.batch_size = 8
    config.training.num_train_steps = 1236
    config.training.num_sample_images = 2
    config.training.async_checkpointing = False
    config.sampling.num_steps = 2
    summary = train(config, str(workdir))
    assert summary["step"] == 1236
    checkpointer = Checkpointer(str(workdir), async_save=False)
    try:
        assert checkpointer.all_steps() == [1234, 1236]
    finally:
        checkpointer.close()
    assert os.path.exists(workdir / "samples" / "step_00001236.png")


def test_pickles_never_run_code(tmp_path):
    """An EDM-style pickle whose globals would run code yields inert stand-ins instead."""
    from diffjax.storage.torch_files import PickledObject, load_plain_pickle

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Exploit()}))
    loaded = load_plain_pickle(path)
    assert isinstance(loaded["ema"], PickledObject) and not marker.exists()
    from diffjax.convert import load

    with pytest.raises(ValueError, match="not an EDM network pickle"):
        load("edm", str(path))
    # The torch.save readers (score_sde, DiT) refuse it before unpickling anything.
    with pytest.raises(ValueError, match="not a checkpoint of --source=dit"):
        load("dit", str(path))
    assert not marker.exists()


def test_unusable_checkpoint_paths_are_one_line_naming_the_flag(tmp_path):
    """Issue #24: an empty file used to say "check --source", a folder raised a bare
    IsADirectoryError; each now names --checkpoint and the fix (the CLI prints these error
    types as one line, as test_mismatch_is_one_line_and_writes_nothing shows)."""
    from diffjax.convert import load
    from diffjax.runtime.cli import USER_ERRORS

    empty = tmp_path / "DiT-XL-2-256x256.pt"
    empty.write_bytes(b"")
    folder = tmp_path / "downloads"
    folder.mkdir()
    garbage = tmp_path / "edm.pkl"
    garbage.write_bytes(b"not a pickle")
    for path, source, expected in [
            (empty, "dit", f"--checkpoint={empty} is empty (0 bytes); download it again"),
            (folder, "score_sde", f"--checkpoint={folder} is a folder; pass the checkpoint file"),
            (garbage, "edm", "is not a checkpoint of --source=edm")]:
        with pytest.raises(USER_ERRORS) as error:
            load(source, str(path))
        assert expected in str(error.value) and "\n" not in str(error.value), error.value
