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

from conftest import REPO, run_cli

TEST_CONFIG = "--config=configs/digits.py:test"
REFERENCE = "--config.eval.reference_split=test[:40]"
REPORT_KEYS = {"fid", "kid", "kid_std", "is", "nfe", "sampler", "num_samples", "seconds", "step",
               "guidance_scale", "use_ema", "setting", "signature"}
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


def reports_of(workdir, step):
    """{setting slug: report} of one checkpoint."""
    folder = workdir / "eval" / str(step)
    return {os.path.basename(p)[:-5]: read_json(p) for p in glob.glob(str(folder / "*.json"))}


def test_eval_mode_reports_every_checkpoint(evaluated):
    workdir, result = evaluated
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["step"] for line in lines] == [3, 6]  # one JSON line per (step, setting)
    for step in (3, 6):
        (slug, report), = reports_of(workdir, step).items()
        assert slug.startswith("euler_maruyama_4steps_n40_")  # the name carries the setting
        assert REPORT_KEYS <= set(report)
        assert report["step"] == step and report["setting"] == slug
        assert math.isfinite(report["fid"]) and report["fid"] > 0
        assert math.isfinite(report["kid"])
        assert report["kid_std"] is None  # 40 < 1000 samples: every KID subset is the whole set
        assert report["num_samples"] == 40
        assert report["nfe"] == EXPECTED_NFE
        assert report["sampler"] == "euler_maruyama" and report["use_ema"] is True
        # default_1.pt has no classifier: no Inception Score, and the report says why.
        assert report["is"] is None and "classifier" in report["is_unavailable_reason"]
        assert (workdir / "eval" / str(step) / f"{slug}.png").exists()
        assert not (workdir / "eval" / str(step) / f"{slug}.samples").exists()  # chunks deleted
    table = result.stdout[result.stdout.index("step  setting"):].splitlines()
    assert "FID" in table[0] and len(table) == 4  # header, rule, one row per checkpoint
    assert glob.glob(str(workdir / "eval" / "events.out.tfevents.*"))


def test_eval_reruns_do_nothing_new(evaluated, stats_dir):
    workdir, _ = evaluated
    listing = sorted(os.listdir(workdir / "eval" / "6"))
    mtimes = {name: os.stat(workdir / "eval" / "6" / name).st_mtime_ns for name in listing}

    rerun = eval_cli(workdir, stats_dir)
    assert "Nothing to evaluate" in rerun.stdout
    latest = eval_cli(workdir, stats_dir, "--config.eval.checkpoints=latest")
    (line,) = [json.loads(x) for x in latest.stdout.splitlines() if x.startswith("{")]
    assert line["step"] == 6 and line["existing"] is True
    watch = eval_cli(workdir, stats_dir, "--config.eval.checkpoints=watch",
                     "--config.eval.watch_timeout_s=5")
    assert "Stopped watching" in watch.stdout  # the final step (6) already has its report

    assert sorted(os.listdir(workdir / "eval" / "6")) == listing
    assert {n: os.stat(workdir / "eval" / "6" / n).st_mtime_ns for n in listing} == mtimes


def test_another_setting_gets_its_own_report_and_sweeps_print_a_table(evaluated, stats_dir):
    workdir, _ = evaluated
    before = reports_of(workdir, 6)
    swept = eval_cli(workdir, stats_dir, "--config.eval.checkpoints=6",
                     "--config.eval.sweep=sampling.num_steps=2,4")
    lines = [json.loads(x) for x in swept.stdout.splitlines() if x.startswith("{")]
    assert [(x["num_steps"], x.get("existing", False)) for x in lines] == [(2, False), (4, True)]
    after = reports_of(workdir, 6)
    assert len(after) == 2 and set(before) < set(after)
    new = after[lines[0]["setting"]]
    assert new["nfe"] == 3 and new["overrides"] == {"sampling.num_steps": 2}
    assert "step  setting" in swept.stdout  # the closing table
    assert swept.stdout.count(lines[0]["setting"]) >= 2  # in its JSON line and in the table


def test_eval_rejects_missing_checkpoints(trained, digits_config, tmp_path):
    from diffjax.modes.evaluate import evaluate

    config = digits_config("test")
    config.eval.checkpoints = "4,6"
    with pytest.raises(ValueError, match=r"no checkpoint at step\(s\) \[4\]"):
        evaluate(config, str(trained))
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_interrupted_eval_resumes_to_the_same_fid_and_resamples_a_damaged_chunk(
        evaluated, stats_dir, digits_config, tmp_path):
    from diffjax.modes.evaluate import evaluate

    workdir, _ = evaluated
    config = digits_config("test")
    config.eval.reference_split = "test[:40]"
    config.eval.stats_dir = str(stats_dir)
    config.eval.checkpoints = "6"
    out_dir = tmp_path / "eval"

    # "Interrupted" after the first of the two chunks of 20 samples.
    assert evaluate(config, str(workdir), out_dir=str(out_dir), max_chunks=1) == []
    (samples,) = glob.glob(str(out_dir / "6" / "*.samples"))
    assert sorted(os.listdir(samples)) == ["chunk_00000.npz", "meta.json"]
    assert not glob.glob(str(out_dir / "6" / "*.json"))
    with np.load(os.path.join(samples, "chunk_00000.npz")) as chunk:
        assert chunk["images"].shape == (20, 8, 8, 1) and chunk["images"].dtype == np.uint8

    # The chunk on disk is then truncated (a crash mid-copy, a bad disk): resuming discards it
    # and draws it again, with the same noise.
    with open(os.path.join(samples, "chunk_00000.npz"), "r+b") as f:
        f.truncate(100)
    (resumed,) = evaluate(config, str(workdir), out_dir=str(out_dir))
    uninterrupted = reports_of(workdir, 6)[resumed["setting"]]
    assert resumed["fid"] == uninterrupted["fid"]
    assert resumed["kid"] == uninterrupted["kid"]


def test_eval_skips_an_unreadable_checkpoint_and_removes_its_chunks(evaluated, stats_dir,
                                                                     digits_config, tmp_path):
    import shutil

    from diffjax.modes.evaluate import evaluate

    workdir = tmp_path / "copy"
    shutil.copytree(evaluated[0], workdir)
    shutil.rmtree(workdir / "eval")
    shutil.rmtree(workdir / "checkpoints" / "3" / "state" / "ocdbt.process_0")
    config = digits_config("test")
    config.eval.reference_split = "test[:40]"
    config.eval.stats_dir = str(stats_dir)
    config.eval.num_samples = 20
    reports = evaluate(config, str(workdir))
    assert [r["step"] for r in reports] == [3, 6]
    assert "skipped" in reports[0] and "fid" in reports[1]
    assert not glob.glob(str(workdir / "eval" / "3" / "*"))
    assert (workdir / "checkpoints" / "3").exists()  # eval never moves a checkpoint


def test_sample_mode_names_outputs_by_setting_and_picks_a_step(trained):
    result = run_cli(TEST_CONFIG, f"--workdir={trained}", "--mode=sample")
    (npz,) = glob.glob(str(trained / "samples" / "step6_euler_maruyama-4steps_n8_seed0_*.npz"))
    png = npz[:-4] + ".png"
    assert os.path.exists(png) and png in result.stdout and npz in result.stdout
    assert f"{EXPECTED_NFE} NFE" in result.stdout
    with np.load(npz) as stored:
        cli_images = stored["images"]
        assert cli_images.shape == (8, 8, 8, 1) and cli_images.dtype == np.uint8
        assert "labels" not in stored  # unconditional model

    # From Python in two lines, with the run's own config: the same images as the CLI.
    import diffjax

    run = diffjax.load(str(trained))
    images = run.sample(8, seed=0)
    np.testing.assert_array_equal(images, cli_images)
    assert run.step == 6 and run.last_nfe == EXPECTED_NFE
    assert run.sample(3, seed=1, num_steps=2).shape == (3, 8, 8, 1) and run.last_nfe == 3
    with pytest.raises(ValueError, match="did you mean config.sampling.num_steps"):
        run.sample(2, num_step=2)
    with pytest.raises(ValueError, match="unconditional"):
        run.sample(2, labels="grid")

    # Without --config: the run's config.json, with command-line overrides on top.
    other = run_cli(f"--workdir={trained}", "--mode=sample",
                    "--config.sampling.checkpoint_step=3", "--config.sampling.num_steps=2",
                    "--config.sampling.write_pngs=True")
    (folder,) = [p for p in glob.glob(str(trained / "samples" / "step3_euler_maruyama-2steps_n8_"
                                                                 "seed0_*")) if os.path.isdir(p)]
    assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(8)]
    assert folder in other.stdout and os.path.exists(png)  # the first run's files are kept
    assert "(8 images, euler_maruyama, 3 NFE)" in other.stdout


def test_a_config_of_another_model_is_refused_in_every_mode_that_reads_the_run(
        trained, digits_config):
    """VP weights under an EDM config sample noise: refused in one line naming the keys, before
    anything is built, in sample (CLI), eval and likelihood (Python, as the CLI runs them)."""
    import diffjax
    from diffjax.storage.workdir import RunMismatchError

    before = sorted(os.listdir(trained / "samples"))
    result = run_cli("--config=configs/digits.py:edm,test", f"--workdir={trained}",
                     "--mode=sample", check=False)
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert "config.sde.name ('vp' -> 'edm')" in line and \
        "config.model.parameterization ('eps' -> 'edm')" in line, line
    assert "config.json" in line and "Traceback" not in result.stderr
    assert "Compiled" not in result.stderr and len(line) < 600
    assert sorted(os.listdir(trained / "samples")) == before
    for mode in ("eval", "likelihood"):
        with pytest.raises(RunMismatchError, match=r"config.model.unet.nf \(8 -> 16\)"):
            config = digits_config("test")
            config.model.unet.nf = 16
            diffjax.run_mode(config, str(trained), mode)
    # Settings of sampling and evaluation are not the model: they may differ.
    from diffjax.storage.workdir import check_same_model

    config = digits_config("test")
    config.sampling.method, config.eval.num_samples, config.model.dropout = "ddim", 10, 0.3
    check_same_model(str(trained), config)


def test_sample_names_carry_every_setting_and_likelihood_reports_theirs(digits_config):
    from diffjax.modes.likelihood import report_name
    from diffjax.modes.sample import output_name

    config = digits_config("test")
    config.sampling.method = "ddim"
    names = {output_name(config, 6)}
    for key, value in (("eta", 1.0), ("denoise", False), ("time_grid", "uniform"),
                       ("batch_size", 4)):
        variant = digits_config("test")
        variant.sampling.method = "ddim"
        variant.sampling[key] = value
        names.add(output_name(variant, 6))
    assert len(names) == 5, names  # eta=1 no longer overwrites eta=0
    assert all(n.startswith("step6_ddim-4steps_n8_seed0_") for n in names)
    reports = {report_name(config, 6, 16)}
    for key, value in (("rtol", 1e-3), ("atol", 1e-3), ("solver", "tsit5"), ("use_ema", False)):
        variant = digits_config("test")
        variant.sampling[key] = value
        reports.add(report_name(variant, 6, 16))
    variant = digits_config("test")
    variant.eval.likelihood_max_examples = 20
    reports |= {report_name(variant, 6, 16), report_name(config, 6, 32)}
    assert len(reports) == 7 and all(r.startswith("likelihood_6_test_") for r in reports)


def test_a_failed_sample_leaves_no_folder_behind(trained, digits_config, tmp_path):
    from diffjax.modes.sample import sample

    typo = tmp_path / "mistyped"
    with pytest.raises(FileNotFoundError, match="train first"):
        sample(digits_config("test"), str(typo))
    assert not typo.exists()


def test_eval_sweeps_name_the_closest_key_and_the_type(digits_config):
    from diffjax.evaluation.settings import settings_from_config

    config = digits_config("test")
    config.eval.sweep = "sampling.num_step=2,4"
    with pytest.raises(ValueError, match="did you mean config.sampling.num_steps"):
        settings_from_config(config)
    config.eval.sweep = "samplng.num_steps=2"
    with pytest.raises(ValueError, match="did you mean config.sampling"):
        settings_from_config(config)
    config.eval.sweep = "sampling.num_steps=abc"
    with pytest.raises(ValueError) as error:
        settings_from_config(config)
    assert "is not of its type int" in str(error.value)
    assert "Could not override" not in str(error.value)  # ml_collections' wording
    config.eval.sweep = "sampling.denoise=0,1;sampling.labels=3"
    assert [s.config.sampling.denoise for s in settings_from_config(config)] == [False, True]


def test_sample_mode_inpaints_from_the_cli(trained):
    result = run_cli(TEST_CONFIG, f"--workdir={trained}", "--mode=sample",
                     "--config.sampling.inpaint=left_half", "--config.sampling.method=pc")
    (npz,) = glob.glob(str(trained / "samples" / "*inpaint-left_half*.npz"))
    assert npz in result.stdout
    from diffjax.data import iterate_split
    import importlib.util

    spec = importlib.util.spec_from_file_location("d", os.path.join(REPO, "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("test")
    original = next(iterate_split(config.data, "test", 8))["image"]
    with np.load(npz) as stored:
        filled = stored["images"]
    np.testing.assert_array_equal(filled[:, :, 4:], original[:, :, 4:])  # known half kept
    assert not np.array_equal(filled[:, :, :4], original[:, :, :4])


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
