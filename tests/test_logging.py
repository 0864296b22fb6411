"""What a run logs: each scalar once per logged step from one source, the learning rate and its
schedules, an optional W&B writer (never the network in tests), and a quiet console."""

from __future__ import annotations

import collections
import glob
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import REPO, run_cli


def scalar_events(workdir) -> dict[str, list[tuple[int, float]]]:
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    (path,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["tensors"]:
        values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]
        # Images and texts are tensors too.
        if all(np.ndim(v) == 0 and np.asarray(v).dtype.kind in "fiu" for _, v in values):
            scalars[tag] = [(step, float(v)) for step, v in values]
    return scalars


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("logged")
    result = run_cli("--config=configs/digits.py:test", f"--workdir={workdir}",
                     "--config.optim.schedule=cosine", "--config.optim.min_lr_ratio=0.1",
                     "--config.training.eval_every_steps=2")
    return workdir, result


def text_events(workdir) -> dict[str, list[tuple[int, str]]]:
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    (path,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    accumulator = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
    accumulator.Reload()
    texts = {}
    for tag in accumulator.Tags()["tensors"]:
        values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in accumulator.Tensors(tag)]
        if all(np.ndim(v) == 0 and np.asarray(v).dtype.kind in "OSU" for _, v in values):
            texts[tag] = [(step, np.asarray(v).item().decode()) for step, v in values]
    return texts


def test_tensorboard_has_the_held_out_loss_and_the_config(logged_run):
    """score_sde's eval loss: the objective on a fixed batch of data.eval_split, fixed noise."""
    workdir, _ = logged_run
    held_out = scalar_events(workdir)["eval_loss"]
    assert [step for step, _ in held_out] == [2, 4, 6]
    assert all(np.isfinite(value) and value > 0 for _, value in held_out)
    ((step, text),) = text_events(workdir)["config"]
    assert step == 0 and '"eval_every_steps": 2' in text and '"nf": 8' in text
    assert all(line.startswith("    ") for line in text.splitlines())  # a Markdown code block


def test_every_scalar_is_written_once_per_logged_step(logged_run):
    workdir, _ = logged_run
    events = scalar_events(workdir)
    for tag in ("loss", "grad_norm", "steps_per_sec", "examples_per_sec", "lr"):
        steps = [step for step, _ in events[tag]]
        assert steps == [2, 4, 6], (tag, steps)  # log_every_steps=2 in the test config
    assert "uptime" not in events  # clu's ReportProgress is gone: one source of steps/s


def test_the_learning_rate_follows_the_configured_schedule(logged_run, digits_config):
    from diffjax.state.optimizer import learning_rate_schedule

    workdir, _ = logged_run
    config = digits_config("test")
    config.optim.schedule, config.optim.min_lr_ratio = "cosine", 0.1
    schedule = learning_rate_schedule(config.optim, config.training.num_train_steps)
    logged = dict(scalar_events(workdir)["lr"])
    for step, value in logged.items():
        np.testing.assert_allclose(value, float(schedule(step - 1)), rtol=1e-6)


@pytest.mark.parametrize("name", ["constant", "cosine", "linear"])
def test_schedules_warm_up_then_reach_their_end_value(name, digits_config):
    from diffjax.state.optimizer import learning_rate_schedule

    optim = digits_config("test").optim
    optim.lr, optim.warmup_steps, optim.schedule, optim.min_lr_ratio = 1e-3, 10, name, 0.1
    schedule = learning_rate_schedule(optim, total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
    end = 1e-3 if name == "constant" else 1e-4
    np.testing.assert_allclose(float(schedule(110)), end, rtol=1e-5)
    if name == "cosine":
        np.testing.assert_allclose(float(schedule(60)), 1e-4 + 0.5 * 9e-4, rtol=1e-5)
    if name == "linear":
        np.testing.assert_allclose(float(schedule(60)), 1e-3 - 0.5 * 9e-4, rtol=1e-5)


def test_a_decay_schedule_needs_room_after_the_warm_up(digits_config):
    from diffjax.state.optimizer import learning_rate_schedule

    optim = digits_config("test").optim
    optim.schedule, optim.warmup_steps = "cosine", 100
    with pytest.raises(ValueError, match="decay_steps"):
        learning_rate_schedule(optim, total_steps=50)


def test_the_console_is_quiet(logged_run):
    _, result = logged_run
    noise = ("oneDNN", "absl::InitializeLog", "OpenCV", "Setting work unit notes", "\x1b[", "\r")
    for text in noise:
        assert text not in result.stderr, text
    progress = [line for line in result.stderr.splitlines() if "step 6/6" in line]
    assert len(progress) == 1 and "loss" in progress[0] and "lr" in progress[0]


def test_help_prints_usage_and_exits_zero():
    from diffjax import modes

    for flag in ("--help", "-h", "--helpfull"):
        result = run_cli(flag, check=False)
        assert result.returncode == 0, (flag, result.stderr[-1000:])
        assert "--mode" in result.stdout and "eval" in result.stdout
        assert "Unknown command line flag" not in result.stderr
        # The mode list comes from the registry: every mode, with what it does.
        shown = result.stdout
        listed = shown[shown.index("Modes:"):shown.index("Any config field")].splitlines()[1:]
        assert [line.split()[0] for line in listed if line.strip()] == list(modes.MODES)
        assert all(len(line.split()) > 2 for line in listed if line.strip())


def test_the_data_pipeline_drops_only_the_opencv_advice():
    """TFDS advises OpenCV (an absl warning) when it first decodes an image, in a notebook too."""
    script = ("import diffjax, absl.logging\n"
              "config = diffjax.load_config('configs/digits.py:test')\n"
              "from diffjax.data import iterate_split\n"
              "print(next(iterate_split(config.data, 'test', 4))['image'].shape)\n"
              "absl.logging.warning('another library warning')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(4, 8, 8, 1)" in result.stdout
    assert "OpenCV" not in result.stderr and "another library warning" in result.stderr


def test_the_wandb_writer_logs_scalars_images_and_the_config(digits_config, monkeypatch,
                                                             tmp_path):
    calls = collections.defaultdict(list)

    class Run:
        config = types.SimpleNamespace(update=lambda values, **kw: calls["config"].append(values))

        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: calls["init"].append(kwargs) or Run()
    fake.Image = lambda array: ("image", np.asarray(array).shape)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    from diffjax.outputs.metric_writers import create_writer

    config = digits_config("test")
    config.training.wandb_project, config.training.wandb_mode = "diffjax-tests", "offline"
    writer = create_writer(str(tmp_path), config, is_chief=True)
    writer.write_scalars(2, {"loss": np.float32(0.5)})
    writer.write_images(2, {"samples": np.zeros((1, 16, 16, 1), np.uint8)})
    writer.flush()
    writer.close()
    (init,) = calls["init"]
    assert init["project"] == "diffjax-tests" and init["mode"] == "offline"
    assert init["config"]["model"]["unet"]["nf"] == 8
    assert calls["log"][0] == (2, {"loss": 0.5})
    assert calls["log"][1][1]["samples"] == [("image", (16, 16))]
    assert calls["finish"] == [True]


def test_wandb_without_the_package_is_one_clear_error(digits_config, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    from diffjax.outputs.metric_writers import create_writer

    config = digits_config("test")
    config.training.wandb_project = "x"
    with pytest.raises(ValueError, match=r"pip install \"diffjax\[wandb\]\""):
        create_writer(str(tmp_path), config, is_chief=True)


def _closed_loop_wakeup() -> types.SimpleNamespace:
    """What TensorStore's completion callbacks raise after a failed async save closed the loop."""
    import asyncio

    loop = asyncio.new_event_loop()
    loop.close()
    try:
        loop.call_soon_threadsafe(lambda: None)
    except RuntimeError as error:
        return types.SimpleNamespace(exc_type=RuntimeError, exc_value=error,
                                     exc_traceback=error.__traceback__, err_msg=None, object=None)
    raise AssertionError("a closed loop accepted a callback")


def test_only_wakeups_of_a_closed_event_loop_are_dropped_from_unraisables(monkeypatch):
    from diffjax.runtime import logs

    shown = []
    monkeypatch.delenv("DIFFJAX_TRACEBACK", raising=False)
    monkeypatch.setattr(sys, "unraisablehook", shown.append)
    logs.quiet_library_logs()
    logs.quiet_library_logs()  # idempotent: one wrapper
    wakeup = _closed_loop_wakeup()
    sys.unraisablehook(wakeup)
    assert shown == []
    other = types.SimpleNamespace(exc_type=RuntimeError,
                                  exc_value=RuntimeError("Event loop is closed"),
                                  exc_traceback=None, err_msg=None, object=None)
    sys.unraisablehook(other)  # the same words from anywhere else are kept
    monkeypatch.setenv("DIFFJAX_TRACEBACK", "1")
    sys.unraisablehook(wakeup)
    assert shown == [other, wakeup]


def test_asyncio_errors_of_a_failed_save_keep_one_line():
    import asyncio
    import logging

    from diffjax.runtime import logs

    try:
        raise ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("asyncio", logging.ERROR, asyncio.base_events.__file__, 1,
                               "_GatheringFuture exception was never retrieved\nfuture: <...>",
                               (), exc_info)
    assert logs.LibraryLogFilter().filter(record)
    assert record.getMessage() == "_GatheringFuture exception was never retrieved"
    assert record.exc_info is None
