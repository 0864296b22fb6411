"""Text-to-image end to end through the CLI on configs/digits.py:text,test (48 captioned digits,
the real MiniLM encoder): encode_latents -> train -> sample with prompts -> eval; a resumed run
bit-identical to an uninterrupted one; 8 simulated devices equal to 1; a config that disagrees
with the cache refused in one line."""

import json
import os

import numpy as np
import pytest
from conftest import REPO, run_cli
from test_cli import read_params

CONFIG = "--config=configs/digits.py:text,test"
SUBSET = "--config.data.split=train[:48]"
TRAIN = ("--config.training.num_train_steps=4", "--config.training.checkpoint_every_steps=2",
         "--config.training.sample_every_steps=4")
CLIP = os.path.join(REPO, "tests", "fixtures", "text", "clip_model_tiny")  # random weights
EIGHT_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with the cached pixels + MiniLM outputs and a 4-step run on them."""
    workdir = tmp_path_factory.mktemp("text")
    encode = run_cli(CONFIG, f"--workdir={workdir}", SUBSET, "--mode=encode_latents")
    assert "text encoder minilm (16 tokens x 384, up to 4 captions" in encode.stdout
    run_cli(CONFIG, f"--workdir={workdir}", *TRAIN)
    return workdir


def cache(workdir):
    return f"--config.data.latent_dir={workdir / 'cache'}"


def test_encode_train_sample_with_prompts_and_eval(trained):
    metadata = json.loads((trained / "cache" / "metadata.json").read_text())
    assert metadata["content"] == "pixels" and metadata["num_records"] == 48
    encoder = metadata["text"]["encoder"]
    assert encoder["name"] == "minilm" and encoder["version"] == "0.1.0"
    assert encoder["max_length"] == 16 and len(encoder["fingerprint"]) == 16
    assert (trained / "samples" / "step_00000004.png").exists()

    run_cli(CONFIG, f"--workdir={trained}", "--mode=sample", "--config.sampling.num_samples=4",
            "--config.sampling.batch_size=4",
            "--config.sampling.prompts=a thick seven|number five")
    [npz] = (trained / "samples").glob("step4_*prompts-*.npz")
    stored = np.load(npz)
    assert stored["images"].shape == (4, 8, 8, 1)
    assert list(stored["prompts"]) == ["a thick seven", "number five"]
    assert list(stored["prompt_index"]) == [0, 0, 1, 1]

    result = run_cli(CONFIG, f"--workdir={trained}", "--mode=eval",
                     "--config.eval.checkpoints=latest", "--config.eval.num_samples=8",
                     "--config.eval.batch_size=8", "--config.eval.prompt_num_samples=10",
                     f"--config.eval.clip_model={CLIP}")
    [report] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert np.isfinite(report["fid"]) and report["step"] == 4
    assert 0.0 <= report["prompt_accuracy"] <= 1.0
    assert report["classifier_test_accuracy"] > 0.95  # the ceiling the score is read against
    assert {"prompt_accuracy_seen", "prompt_accuracy_unseen"} <= set(report)
    assert 0.0 <= report["clip_score"] <= 100.0 and 0.0 <= report["clip_score_prompts"] <= 100.0


def test_resume_is_bit_identical(trained, tmp_path):
    run_cli(CONFIG, f"--workdir={tmp_path}", cache(trained), *TRAIN,
            "--config.training.num_train_steps=2")
    resumed = run_cli(CONFIG, f"--workdir={tmp_path}", cache(trained), *TRAIN)
    assert "at step 2" in resumed.stderr
    expected, actual = read_params(trained, 4), read_params(tmp_path, 4)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_eight_devices_equal_one(trained, tmp_path):
    run_cli(CONFIG, f"--workdir={tmp_path}", cache(trained), *TRAIN,
            "--config.mesh.data=4", "--config.mesh.fsdp=2", env=EIGHT_DEVICES)
    expected, actual = read_params(trained, 4), read_params(tmp_path, 4)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], atol=2e-5, err_msg=name)


def test_a_config_that_disagrees_with_the_cache_is_one_line(trained, tmp_path):
    result = run_cli(CONFIG, f"--workdir={tmp_path}", cache(trained),
                     "--config.data.text_max_length=12", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "--config.data.text_max_length=16" in last, last
