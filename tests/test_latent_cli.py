"""The latent path end to end through the CLI, on configs/digits.py:latent,test.

train_autoencoder -> encode_latents -> train -> eval / sample in one workdir, the way the
config's docstring documents it; and the same latents and training on 8 devices as on 1.
"""

import json
import os

import numpy as np
import pytest

from conftest import run_cli
from test_cli import read_params

CONFIG = "--config=configs/digits.py:latent,test"
EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
TRAIN = ("--config.training.num_train_steps=4", "--config.training.checkpoint_every_steps=4",
         "--config.training.sample_every_steps=4")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """A workdir with a trained first stage and its latents (what every test below needs)."""
    workdir = tmp_path_factory.mktemp("latent")
    run_cli(CONFIG, f"--workdir={workdir}", "--mode=train_autoencoder")
    run_cli(CONFIG, f"--workdir={workdir}", "--mode=encode_latents")
    return workdir


def read_latents(directory):
    from diffjax.latents.reader import LatentSource

    source = LatentSource(str(directory))
    records = source.__getitems__(range(len(source)))
    return {key: np.stack([r[key] for r in records]) for key in ("mean", "std", "label")}


def test_first_stage_publishes_its_latent_scale(encoded):
    record = json.loads((encoded / "autoencoder" / "latent_space.json").read_text())
    # LDM's rule: the scale makes the training latents unit-variance.
    assert record["scaling_factor"] == pytest.approx(1 / record["std"])
    assert sorted(os.listdir(encoded / "autoencoder" / "checkpoints")) == ["3", "6"]


def test_encoding_stores_the_configured_views_and_a_rerun_writes_nothing(encoded):
    metadata = json.loads((encoded / "latents" / "metadata.json").read_text())
    assert metadata["num_records"] == metadata["num_examples"]  # digits: no mirrored view
    assert metadata["latent_shape"] == [4, 4, 4]
    rerun = run_cli(CONFIG, f"--workdir={encoded}", "--mode=encode_latents")
    assert "(0 shards written now" in rerun.stdout


def test_eight_devices_encode_the_same_latents(encoded):
    run_cli(CONFIG, f"--workdir={encoded}", "--mode=encode_latents",
            "--config.data.latent_dir=latents8", env=EIGHT_DEVICES)
    one, eight = read_latents(encoded / "latents"), read_latents(encoded / "latents8")
    np.testing.assert_array_equal(eight["label"], one["label"])
    np.testing.assert_allclose(eight["mean"], one["mean"], atol=1e-5)
    np.testing.assert_allclose(eight["std"], one["std"], atol=1e-5)


def test_train_eval_and_sample_decode_to_pixels(encoded):
    run_cli(CONFIG, f"--workdir={encoded}", *TRAIN)
    assert (encoded / "samples" / "step_00000004.png").exists()
    eval_run = run_cli(CONFIG, f"--workdir={encoded}", "--mode=eval")
    reports = [json.loads(line) for line in eval_run.stdout.splitlines() if line.startswith("{")]
    assert reports and all(np.isfinite(r["fid"]) for r in reports)

    run_cli(CONFIG, f"--workdir={encoded}", "--mode=sample", "--config.sampling.num_samples=8")
    [npz] = (encoded / "samples").glob("step4_*.npz")
    images = np.load(npz)["images"]
    assert images.shape == (8, 8, 8, 1)  # pixels, not 4x4x4 latents

    # The same training on 8 devices: the same step, up to reduction order.
    eight = encoded / "eight"
    run_cli(CONFIG, f"--workdir={eight}", *TRAIN, "--config.data.latent_dir=../latents",
            "--config.autoencoder.pretrained=../autoencoder",
            "--config.training.sample_every_steps=0", env=EIGHT_DEVICES)  # weights compared
    expected, actual = read_params(encoded, 4), read_params(eight, 4)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=2e-5, err_msg=name)


def test_training_without_latents_names_the_command(tmp_path):
    result = run_cli(CONFIG, f"--workdir={tmp_path}", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "--mode=train_autoencoder" in last or "--mode=encode_latents" in last, last


@pytest.mark.parametrize("overrides, expected", [
    (["--config.autoencoder.pretrained=/nonexistent/vae"], "holds no first stage"),
    (["--config.autoencoder.latent_channels=8"], "set --config.autoencoder.latent_channels=4"),
    (["--mode=encode_latents", "--config.data.image_size=7", "--config.data.latent_dir=odd"],
     "not divisible by the autoencoder's downsampling factor 2"),
])
def test_bad_latent_inputs_are_one_line(encoded, overrides, expected):
    result = run_cli(CONFIG, f"--workdir={encoded}", *overrides, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert expected in last and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_latents_of_an_older_first_stage_are_refused_by_train_and_sample(encoded, tmp_path):
    """The first stage trained on after encoding: its latents no longer decode with it. The
    fingerprint the latents carry is checked against the first stage at start-up (a hash of its
    parameters), by the CLI's train and sample modes."""
    import shutil

    import diffjax
    from diffjax.data import DataError

    workdir = tmp_path / "run"
    shutil.copytree(encoded, workdir)
    config = diffjax.load_config("configs/digits.py:latent,test",
                                 [arg.removeprefix("--config.") for arg in TRAIN])
    if not (workdir / "checkpoints").exists():  # this test alone: train the diffusion model
        diffjax.train(config, str(workdir))
    metadata_path = workdir / "latents" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["vae_fingerprint"] = "0123456789abcdef"  # written by another first stage
    metadata_path.write_text(json.dumps(metadata))
    before = sorted(os.listdir(workdir / "checkpoints"))
    for mode in ("sample", "train"):
        with pytest.raises(DataError, match="were encoded by another VAE .*0123456789abcdef"):
            diffjax.run_mode(config if mode == "sample" else _longer(config), str(workdir),
                             mode)
    assert sorted(os.listdir(workdir / "checkpoints")) == before


def _longer(config):
    longer = config.copy_and_resolve_references()
    longer.training.num_train_steps = 8
    longer.lock()
    return longer
