"""--mode=fid_stats, --mode=eval (selection, watch, resumption) and --mode=sample, tiny config.

Inception costs about 0.15-0.5 s per image on a CPU, so the reference statistics use the first 40
test images (`test[:40]`) and are computed once per module in a temporary stats_dir.
"""

import glob
import json
import math
import os

import numpy as np
import pytest

from conftest import run_cli

TEST_CONFIG = "--config=configs/digits.py:test"
REFERENCE = "--config.eval.reference_split=test[:40]"
REPORT_KEYS = {"fid", "kid", "is", "nfe", "sampler", "num_samples", "seconds", "step",
               "guidance_scale", "use_ema"}
# configs/digits.py:test samples with euler_maruyama, 4 steps plus the final denoising step.
EXPECTED_NFE = 5


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fid_stats")


@pytest.fixture(scope="module")
def fid_stats_run(stats_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("unused_workdir")
    result = run_cli(TEST_CONFIG, f"--workdir={workdir}", "--mode=fid_stats", REFERENCE,
                     f"--config.eval.stats_dir={stats_dir}")
    (path,) = glob.glob(str(stats_dir / "*.npz"))
    return path, result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    run_cli(TEST_CONFIG, f"--workdir={workdir}")
    return workdir


def eval_cli(workdir, stats_dir, *overrides, check=True):
    return run_cli(TEST_CONFIG, f"--workdir={workdir}", "--mode=eval", REFERENCE,
                   f"--config.eval.stats_dir={stats_dir}", *overrides, check=check)


@pytest.fixture(scope="module")
def evaluated(trained, stats_dir, fid_stats_run):
    result = eval_cli(trained, stats_dir)
    return trained, result


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_fid_stats_mode_writes_and_reuses_statistics(fid_stats_run, stats_dir, tmp_path):
    path, result = fid_stats_run
    assert path in result.stdout
    assert os.path.basename(path).startswith("digits_test-first40_8px_inception-")
    with np.load(path) as stats:
        assert stats["mu"].shape == (2048,) and stats["mu"].dtype == np.float64
        assert stats["sigma"].shape == (2048, 2048) and stats["sigma"].dtype == np.float64
        np.testing.assert_array_equal(stats["sigma"], stats["sigma"].T)
        assert stats["kid_features"].shape == (40, 2048)
        assert int(stats["num_images"]) == 40
    before = os.stat(path).st_mtime_ns

    again = run_cli(TEST_CONFIG, f"--workdir={tmp_path}", "--mode=fid_stats", REFERENCE,
                    f"--config.eval.stats_dir={stats_dir}")
    assert "Reusing FID reference statistics" in again.stderr
    assert path in again.stdout
    assert os.stat(path).st_mtime_ns == before


def test_eval_mode_reports_every_checkpoint(evaluated):
    workdir, result = evaluated
    for step in (3, 6):
        report = read_json(workdir / "eval" / f"{step}.json")
        assert REPORT_KEYS <= set(report)
        assert report["step"] == step
        assert math.isfinite(report["fid"]) and report["fid"] > 0
        assert math.isfinite(report["kid"])
        assert report["num_samples"] == 40
        assert report["nfe"] == EXPECTED_NFE
        assert report["sampler"] == "euler_maruyama" and report["use_ema"] is True
        # default_1.pt has no classifier: no Inception Score, and the report says why.
        assert report["is"] is None and "classifier" in report["is_unavailable_reason"]
        assert (workdir / "eval" / f"{step}.png").exists()
        assert not (workdir / "eval" / f"{step}.samples").exists()  # chunks deleted when done
        assert f"FID@step {step} = {report['fid']:.2f} (40 samples, euler_maruyama, 5 NFE)" \
            in result.stdout
    assert glob.glob(str(workdir / "eval" / "events.out.tfevents.*"))


def test_eval_reruns_do_nothing_new(evaluated, stats_dir):
    workdir, _ = evaluated
    listing = sorted(os.listdir(workdir / "eval"))
    mtimes = {name: os.stat(workdir / "eval" / name).st_mtime_ns for name in listing}

    rerun = eval_cli(workdir, stats_dir)
    assert "Nothing to evaluate" in rerun.stdout
    latest = eval_cli(workdir, stats_dir, "--config.eval.checkpoints=latest")
    assert "FID@step 6 = " in latest.stdout and "existing report" in latest.stdout
    assert "FID@step 3" not in latest.stdout
    watch = eval_cli(workdir, stats_dir, "--config.eval.checkpoints=watch",
                     "--config.eval.watch_timeout_s=5")
    assert "Stopped watching" in watch.stdout  # the final step (6) already has its report

    assert sorted(os.listdir(workdir / "eval")) == listing
    assert {n: os.stat(workdir / "eval" / n).st_mtime_ns for n in listing} == mtimes


def test_eval_rejects_missing_checkpoints(trained, digits_config, tmp_path):
    from diffjax.modes.evaluate import evaluate

    config = digits_config("test")
    config.eval.checkpoints = "4,6"
    with pytest.raises(ValueError, match=r"no checkpoint at step\(s\) \[4\]"):
        evaluate(config, str(trained))
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_interrupted_eval_resumes_to_the_same_fid(evaluated, stats_dir, digits_config, tmp_path):
    from diffjax.modes.evaluate import evaluate

    workdir, _ = evaluated
    config = digits_config("test")
    config.eval.reference_split = "test[:40]"
    config.eval.stats_dir = str(stats_dir)
    config.eval.checkpoints = "6"
    out_dir = tmp_path / "eval"

    # "Interrupted" after the first of the two chunks of 20 samples.
    assert evaluate(config, str(workdir), out_dir=str(out_dir), max_chunks=1) == {}
    chunks = sorted(os.listdir(out_dir / "6.samples"))
    assert chunks == ["chunk_00000.npz", "meta.json"]
    assert not (out_dir / "6.json").exists()
    with np.load(out_dir / "6.samples" / "chunk_00000.npz") as chunk:
        assert chunk["images"].shape == (20, 8, 8, 1) and chunk["images"].dtype == np.uint8

    resumed = evaluate(config, str(workdir), out_dir=str(out_dir))[6]
    uninterrupted = read_json(workdir / "eval" / "6.json")
    assert resumed["fid"] == uninterrupted["fid"]
    assert resumed["kid"] == uninterrupted["kid"]
    assert read_json(out_dir / "6.json")["fid"] == uninterrupted["fid"]


def test_sample_mode_writes_grid_and_arrays(trained):
    result = run_cli(TEST_CONFIG, f"--workdir={trained}", "--mode=sample")
    png, npz = trained / "samples" / "sample_6.png", trained / "samples" / "sample_6.npz"
    assert png.exists() and str(png) in result.stdout and str(npz) in result.stdout
    assert f"{EXPECTED_NFE} NFE" in result.stdout
    with np.load(npz) as stored:
        assert stored["images"].shape == (8, 8, 8, 1) and stored["images"].dtype == np.uint8
        assert "labels" not in stored  # unconditional model


def test_select_steps():
    from diffjax.modes.evaluate import select_steps

    assert select_steps("all", [3, 6, 9], {6}) == [3, 9]
    assert select_steps("latest", [3, 6, 9], {9}) == [9]
    assert select_steps("9, 3", [3, 6, 9], set()) == [3, 9]
    assert select_steps("all", [], set()) == []
    with pytest.raises(ValueError, match="no checkpoint at step"):
        select_steps("4", [3, 6], set())
    with pytest.raises(ValueError, match="not 'all', 'latest', 'watch'"):
        select_steps("newest", [3, 6], set())


class FakeTraining:
    """Checkpoints that appear on a fake clock: {time: step}."""

    def __init__(self, schedule):
        self.schedule, self.now, self.done = schedule, 0.0, set()

    def list_steps(self):
        return sorted(step for at, step in self.schedule.items() if at <= self.now)

    def sleep(self, seconds):
        self.now += seconds


def test_watch_evaluates_checkpoints_as_they_appear_until_the_final_step():
    from diffjax.modes.evaluate import watch_steps

    training = FakeTraining({0: 100, 50: 200, 55: 300, 400: 400})
    seen = []
    for step in watch_steps(training.list_steps, training.done.__contains__, final_step=400,
                            timeout_s=1000, poll_s=10, sleep=training.sleep,
                            clock=lambda: training.now):
        seen.append(step)
        training.done.add(step)
    assert seen == [100, 200, 300, 400]
    assert training.now == 400  # stopped at once after the final step


def test_watch_gives_up_after_the_timeout():
    from diffjax.modes.evaluate import watch_steps

    training = FakeTraining({0: 100})
    seen = []
    for step in watch_steps(training.list_steps, training.done.__contains__, final_step=1000,
                            timeout_s=60, poll_s=25, sleep=training.sleep,
                            clock=lambda: training.now):
        seen.append(step)
        training.done.add(step)
    assert seen == [100]
    assert training.now == 75  # 25 + 25 + 25 >= 60 s without a new checkpoint


def test_streamed_moments_equal_feature_statistics():
    from diffjax.evaluation import feature_statistics
    from diffjax.evaluation.stats import MomentSums

    features = np.random.default_rng(0).gamma(2.0, 0.3, size=(300, 2048)).astype(np.float32)
    sums = MomentSums()
    for part in np.array_split(features, 7):
        sums.update(part)
    mu, sigma = sums.mean_and_covariance()
    want_mu, want_sigma = feature_statistics(features)
    np.testing.assert_allclose(mu, want_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-9, atol=1e-12)


def test_parse_reference_split():
    from diffjax.evaluation.stats import parse_reference_split

    assert parse_reference_split("train") == ("train", 0)
    assert parse_reference_split("test[:40]") == ("test", 40)
    for bad in ("train[10:]", "train[:0]", "a b"):
        with pytest.raises(ValueError, match="reference_split"):
            parse_reference_split(bad)
