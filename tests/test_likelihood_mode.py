"""`--mode=likelihood` on a trained tiny checkpoint writes a finite bits/dim report."""

import json

from conftest import run_cli


def test_likelihood_mode_reports_bits_per_dim(tmp_path):
    run_cli("--config=configs/digits.py:test", f"--workdir={tmp_path}")
    result = run_cli("--config=configs/digits.py:test", f"--workdir={tmp_path}", "--mode=likelihood",
                     "--config.eval.likelihood_max_examples=20",
                     "--config.eval.likelihood_batch_size=16",
                     "--config.sampling.rtol=1e-3", "--config.sampling.atol=1e-3")
    # Named after the settings that change the number, so other settings keep their own file.
    (path,) = (tmp_path / "eval").glob("likelihood_6_test_*.json")
    assert str(path) in result.stdout
    report = json.loads(path.read_text())
    assert report["num_examples"] == 20 and report["split"] == "test"
    # An almost untrained model is close to the zero-score model: ~15.5 bits/dim on [-1, 1] data
    # (prior density plus the integrated divergence D log alpha(T)); anything finite in (7, 30).
    assert 7.0 < report["bpd"] < 30.0 and report["nfe_mean"] > 0
    assert "bits/dim@step 6" in result.stdout
