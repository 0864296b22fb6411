"""The few-step variants and classifier guidance end to end, and a JVP-training run's resume and
sharding. Each test is one subprocess (imports and compilations paid once): the modes run
through `diffjax.modes.run`, exactly what `python -m diffjax.main` calls after parsing its flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO

CHAIN = textwrap.dedent(r"""
    import json, os, sys
    import numpy as np
    from diffjax import config as config_lib, modes

    root = sys.argv[1]
    steps = {"training.num_train_steps": 2, "training.checkpoint_every_steps": 2,
             "training.log_every_steps": 1, "training.sample_every_steps": 0}

    def run(variant, name, mode="train", **overrides):
        options = {**(steps if mode.startswith("train") else {}), **overrides}
        config = config_lib.load(f"configs/digits.py:{variant}", options)
        return modes.run(config, os.path.join(root, name), mode)

    report = {}
    run("test", "vp")  # the teacher, as `make quickstart` trains it (tiny)
    report["distill"] = run("test,distill", "distill",
                            **{"model.teacher": os.path.join(root, "vp")})["loss"]
    report["consistency"] = run("test,consistency", "cm")["loss"]
    report["meanflow"] = run("test,meanflow", "mf")["loss"]
    evaluation = run("test,consistency", "cm", "eval", **{
        "eval.num_samples": 8, "eval.batch_size": 8, "eval.inception_batch_size": 8,
        "eval.reference_split": "test[:16]", "eval.stats_dir": os.path.join(root, "stats"),
        "eval.compute_kid": False, "eval.compute_is": False,
        "eval.sweep": "sampling.num_steps=1,2"})
    report["eval_nfe"] = sorted(r["nfe"] for r in evaluation)
    report["meanflow_sample"] = run("test,meanflow", "mf", "sample", **{
        "sampling.num_steps": 2, "sampling.num_samples": 4, "sampling.batch_size": 4})["nfe"]
    run("test", "vp", "train_classifier")
    guided = run("test", "vp", "sample", **{
        "sampling.classifier_scale": 2.0, "sampling.labels": "3", "sampling.num_samples": 4,
        "sampling.batch_size": 4, "sampling.num_steps": 2})
    report["guided"] = {"nfe": guided["nfe"], "name": guided["name"],
                        "labels": np.load(guided["npz"])["labels"].tolist()}
    print("RESULT", json.dumps(report))
""")


def _result(output: str) -> dict:
    line = next(l for l in output.splitlines() if l.startswith("RESULT"))
    return json.loads(line.split(" ", 1)[1])


def test_few_step_variants_train_evaluate_and_sample(tmp_path):
    result = subprocess.run([sys.executable, "-c", CHAIN, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    report = _result(result.stdout)
    for name in ("distill", "consistency", "meanflow"):
        assert report[name] is not None and abs(report[name]) < 1e6, report
    assert report["eval_nfe"] == [1, 2], report
    assert report["meanflow_sample"] == 2
    assert report["guided"]["nfe"] == 3 and report["guided"]["labels"] == [3, 3, 3, 3]  # + denoise
    assert "cg2" in report["guided"]["name"], report
    assert os.path.isdir(tmp_path / "vp" / "classifier" / "checkpoints")
    # The distilled student started from the teacher: its config names it.
    recorded = json.load(open(tmp_path / "distill" / "config.json"))
    assert recorded["model"]["teacher"].endswith("vp")


SHARDED = textwrap.dedent(r"""
    import importlib.util, json, os, sys
    import jax, numpy as np
    from diffjax.runtime import xla
    from diffjax.training.loop import train

    xla.enable_compilation_cache()
    spec = importlib.util.spec_from_file_location("cfg", "configs/digits.py")
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    root = sys.argv[1]

    def run(name, devices, steps, mesh):
        config = module.get_config("test,consistency")
        config.training.num_train_steps = steps
        config.training.checkpoint_every_steps = 2
        config.training.sample_every_steps = 0
        for axis, size in mesh.items():
            setattr(config.mesh, axis, size)
        return train(config, os.path.join(root, name), devices=devices)["state"]

    eight = {"data": 4, "fsdp": 2, "tensor": 1}
    straight = run("straight", jax.devices(), 4, eight)
    run("resumed", jax.devices(), 2, eight)
    resumed = run("resumed", jax.devices(), 4, eight)  # resumes at step 2 (tangent warm-up on)
    single = run("single", jax.devices()[:1], 4, {"data": 1, "fsdp": 1, "tensor": 1})
    def leaves(state):
        return [np.asarray(x) for x in jax.tree.leaves((state.params, state.ema_params,
                                                        state.opt_state))]

    identical = all(np.array_equal(a, b) for a, b in zip(leaves(straight), leaves(resumed)))
    worst = max(float(np.max(np.abs(a - b))) for a, b in
                zip(leaves(single)[:len(jax.tree.leaves(single.params))], leaves(straight)))
    print("RESULT", json.dumps({"identical": identical, "max_abs_diff": worst,
                                "devices": len(jax.devices())}))
""")


def test_jvp_training_resumes_bit_identically_and_eight_devices_equal_one(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", SHARDED, str(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    report = _result(result.stdout)
    assert report["devices"] == 8
    assert report["identical"], report
    assert report["max_abs_diff"] < 1e-5, report
