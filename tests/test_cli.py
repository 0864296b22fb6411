"""End-to-end runs of `python -m diffjax.main` on the tiny config."""

import glob
import os
import signal
import time

import numpy as np
import pytest

from conftest import BackgroundRun, run_cli

TEST_CONFIG = "--config=configs/digits.py:test"


def read_params(workdir, step):
    """The parameters of checkpoint `step`, as a flat dict of numpy arrays."""
    import orbax.checkpoint as ocp

    import jax

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    metadata = getattr(metadata, "item_metadata", metadata)
    # As numpy: a checkpoint written on 8 devices reads in a 1-device test process.
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                            getattr(metadata, "tree", metadata))
    tree = checkpointer.restore(path, restore_args=as_numpy)

    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree["params"])}


def test_train_writes_checkpoints_logs_and_samples(tmp_path):
    result = run_cli(TEST_CONFIG, f"--workdir={tmp_path}")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
    assert glob.glob(str(tmp_path / "events.out.tfevents.*")), "no TensorBoard event file"
    png = tmp_path / "samples" / "step_00000006.png"
    assert png.exists()
    assert str(png) in result.stdout and str(tmp_path / "checkpoints") in result.stdout
    from PIL import Image

    assert Image.open(png).size[0] > 8 * 3  # a grid of enlarged 8x8 digits


def test_rerun_resumes_from_the_newest_checkpoint(tmp_path):
    run_cli(TEST_CONFIG, f"--workdir={tmp_path}")
    before = read_params(tmp_path, 6)
    result = run_cli(TEST_CONFIG, f"--workdir={tmp_path}", "--config.training.num_train_steps=9")
    assert "Resumed from" in result.stderr and "at step 6" in result.stderr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6", "9"] or \
        sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "9"]
    np.testing.assert_array_equal(read_params(tmp_path, 6)["['conv_in']['kernel']"],
                                  before["['conv_in']['kernel']"])


@pytest.mark.parametrize("override, expected", [
    ("--config.optim.lrr=1", "unknown config key config.optim.lrr"),
    ("--config.optim.lr=abc", "--config.optim.lr=abc"),
    ("--config.sde.name=foo", "Unknown sde.name='foo'"),
])
def test_user_errors_are_one_line(tmp_path, override, expected):
    result = run_cli(TEST_CONFIG, f"--workdir={tmp_path}", override, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("diffjax: error")]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_one_line(tmp_path):
    result = run_cli("--config=configs/does_not_exist.py", f"--workdir={tmp_path}", check=False)
    assert result.returncode == 2
    assert "configs/does_not_exist.py" in result.stderr and "Traceback" not in result.stderr


def test_nan_loss_stops_without_checkpointing_the_broken_state(tmp_path):
    result = run_cli(TEST_CONFIG, f"--workdir={tmp_path}", "--config.optim.lr=1e38",
                     "--config.optim.grad_clip=0", "--config.optim.warmup_steps=0",
                     "--config.training.checkpoint_every_steps=1", check=False)
    assert result.returncode == 1
    assert "NaN/Inf" in result.stderr and "--config.optim.lr" in result.stderr
    saved = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    for step in saved:  # whatever was saved holds finite parameters only
        assert all(np.isfinite(v).all() for v in read_params(tmp_path, step).values())


LONG_RUN = ("--config.training.num_train_steps=300", "--config.training.checkpoint_every_steps=100",
            "--config.training.log_every_steps=50", "--config.training.sample_every_steps=1000")


def test_sigterm_saves_and_exits_zero(tmp_path):
    run = BackgroundRun(TEST_CONFIG, f"--workdir={tmp_path}",
                        "--config.training.num_train_steps=1000000",
                        "--config.training.checkpoint_every_steps=1000000")
    run.wait_for_line("step 4/")  # steps are running
    sent = time.time()
    run.process.send_signal(signal.SIGTERM)
    assert run.finish(timeout=60) == 0, run.stderr[-3000:]
    assert time.time() - sent < 60
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert len(steps) == 1 and steps[0] > 0, "one checkpoint at the step reached"
    assert f"checkpoint saved at step {steps[0]}" in run.stderr


def test_sigterm_during_start_up_exits_zero_without_a_traceback(tmp_path):
    """The handler is installed before the heavy imports: no death by signal (-15)."""
    run = BackgroundRun(TEST_CONFIG, f"--workdir={tmp_path}")
    time.sleep(1.0)  # importing TensorFlow, JAX and Orbax takes several seconds
    run.process.send_signal(signal.SIGTERM)
    assert run.finish(timeout=120) == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "Stopped before training" in run.stdout or "SIGTERM" in run.stderr
    assert not [s for s in os.listdir(tmp_path / "checkpoints")] if \
        (tmp_path / "checkpoints").exists() else True


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run_cli(TEST_CONFIG, f"--workdir={reference}", *LONG_RUN)

    run = BackgroundRun(TEST_CONFIG, f"--workdir={resumed}", *LONG_RUN)
    run.wait_for_path(resumed / "checkpoints" / "100")
    run.kill()
    killed_at = max(int(s) for s in os.listdir(resumed / "checkpoints") if s.isdigit())
    assert killed_at < 300, "the run finished before it could be killed"
    run_cli(TEST_CONFIG, f"--workdir={resumed}", *LONG_RUN)

    expected, actual = read_params(reference, 300), read_params(resumed, 300)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_a_stray_argument_or_a_run_without_config_is_one_line(tmp_path):
    result = run_cli(TEST_CONFIG, f"--workdir={tmp_path}", "extra", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "diffjax: error: unexpected argument(s) extra: flags take the form --name=value "
        "(see --help)."]
    result = run_cli(f"--workdir={tmp_path}", "--mode=sample", check=False)
    assert result.returncode == 2 and "config.json does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
