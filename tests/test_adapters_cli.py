"""LoRA and ControlNet runs end to end on the tiny digits config: train on a frozen base run,
resume bit for bit, sample with `--mode=sample`; a LoRA run on 8 simulated devices (data 4 x
fsdp 2) equals one on 1 device.

One base run (configs/digits.py:test) serves every test of the module.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO, run_cli

TEST = "configs/digits.py:test"

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
MESH = ["--config.mesh.data=4", "--config.mesh.fsdp=2"]

# The same LoRA run on 1 of the 8 devices, in-process (the CLI runs use all 8).
SCRIPT = textwrap.dedent(r"""
    import importlib.util, json, os, sys
    import jax, numpy as np
    from diffjax.runtime import xla
    from diffjax.training.loop import train

    xla.enable_compilation_cache()
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(sys.argv[1], "configs/digits.py"))
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    root = sys.argv[2]
    config = module.get_config("lora,test")
    config.model.lora.base = os.path.join(root, "base")
    config.mesh.data = 1
    config.training.sample_every_steps = 0  # the weights are compared, not grids
    state = train(config, os.path.join(root, "single"), devices=jax.devices()[:1])["state"]
    np.savez(os.path.join(root, "single.npz"),
             **{jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(state.params)})
""")


def checkpoint_params(workdir, step):
    """The flat parameters of a checkpoint, read with numpy."""
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(workdir, "checkpoints", str(step))
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(os.path.join(path, "state"))
    tree = getattr(getattr(metadata, "item_metadata", metadata), "tree", None) or metadata
    restored = checkpointer.restore(os.path.join(path, "state"), restore_args=jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree))
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(restored["params"])}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny digits run, trained once for the module on 8 simulated devices."""
    root = tmp_path_factory.mktemp("adapters")
    run_cli(f"--config={TEST}", f"--workdir={root / 'base'}",
            "--config.training.sample_every_steps=0", env=EIGHT)
    return root


def test_lora_train_resume_sample_and_eight_devices(base, tmp_path):
    root = base
    work = root / "lora"
    lora = ["--config=configs/digits.py:lora,test", f"--config.model.lora.base={root / 'base'}"]
    run_cli(*lora, *MESH, f"--workdir={work}", env=EIGHT)

    # The checkpoint holds the adapter alone, and the base's identity in its data record.
    params = checkpoint_params(str(work), 6)
    assert params and all(k.endswith(("_lora_a']", "_lora_b']")) for k in params), list(params)
    base_params = checkpoint_params(str(root / "base"), 6)
    assert sum(v.size for v in params.values()) < sum(v.size for v in base_params.values())
    record = json.load(open(os.path.join(work, "checkpoints", "6", "data", "metadata")))
    assert record["frozen_base"]["folder"] == str(root / "base")
    assert len(record["frozen_base"]["sha256"]) == 64 and record["frozen_base"]["step"] == 6

    # Resume from checkpoint 3: checkpoint 6 again, bit for bit.
    resumed = tmp_path / "resumed"
    shutil.copytree(work, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    run_cli(*lora, *MESH, f"--workdir={resumed}", "--config.training.sample_every_steps=0",
            env=EIGHT)
    again = checkpoint_params(str(resumed), 6)
    assert again.keys() == params.keys()
    for name in params:
        np.testing.assert_array_equal(again[name], params[name], err_msg=name)

    result = run_cli(*lora, f"--workdir={work}", "--mode=sample", env=EIGHT)
    assert "Samples of step 6" in result.stdout

    # The adapter trained on the data 4 x fsdp 2 mesh equals the one trained on 1 device.
    result = subprocess.run([sys.executable, "-c", SCRIPT, REPO, str(root)], capture_output=True,
                            text=True, env={**os.environ, **EIGHT}, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    single = dict(np.load(root / "single.npz"))
    worst = max(float(np.max(np.abs(single[k] - params[k]))) for k in params)
    print("LoRA on 8 devices vs 1: max abs difference", worst)
    assert single.keys() == params.keys() and worst < 1e-5


def test_controlnet_train_resume_and_sample(base, tmp_path):
    root = base
    work = tmp_path / "cn"
    args = ["--config=configs/digits.py:controlnet=downsampled,test",
            f"--config.model.controlnet_base={root / 'base'}"]
    run_cli(*args, f"--workdir={work}")
    params = checkpoint_params(str(work), 6)
    assert any("controlnet_down_0" in k for k in params)
    assert not any("up_0" in k for k in params)  # only the copy of the down path trains

    resumed = tmp_path / "resumed"
    shutil.copytree(work, resumed)
    shutil.rmtree(resumed / "checkpoints" / "6")
    run_cli(*args, f"--workdir={resumed}", "--config.training.sample_every_steps=0")
    again = checkpoint_params(str(resumed), 6)
    for name in params:
        np.testing.assert_array_equal(again[name], params[name], err_msg=name)

    run_cli(*args, f"--workdir={work}", "--mode=sample")
    summaries = [f for f in os.listdir(work / "samples") if f.endswith(".json")]
    summary = json.load(open(work / "samples" / summaries[0]))
    assert summary["controlnet"] == "downsampled" and summary["condition_mse"] >= 0
