"""8 simulated devices train the same model as 1 device (up to float reduction order)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

SCRIPT = textwrap.dedent(r"""
    import importlib.util, json, os, sys
    import jax, numpy as np
    from jax.sharding import PartitionSpec
    from diffjax.runtime import xla
    from diffjax.training.loop import train

    xla.enable_compilation_cache()
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(sys.argv[1], "configs/digits.py"))
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    variant, mesh_sizes, workdir = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]

    def run(name, devices, sizes):
        config = module.get_config(variant)
        config.training.sample_every_steps = 0  # no grids: the step is compared
        for axis, size in sizes.items():
            setattr(config.mesh, axis, size)
        return train(config, os.path.join(workdir, name), devices=devices)["state"]

    single = run("single", jax.devices()[:1], {"data": 1, "fsdp": 1, "tensor": 1})
    sharded = run("sharded", jax.devices(), mesh_sizes)
    leaves_1 = jax.tree_util.tree_leaves_with_path(single.params)
    leaves_8 = jax.tree_util.tree_leaves(sharded.params)
    worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for (_, a), b in zip(leaves_1, leaves_8))
    sharded_axes = sorted({str(axis) for leaf in leaves_8 for axis in leaf.sharding.spec if axis})
    print("RESULT", json.dumps({"max_abs_diff": worst, "sharded_axes": sharded_axes,
                                "num_devices": len(jax.devices())}))
""")


@pytest.mark.parametrize("variant, mesh_sizes, expect_axes", [
    ("test", {"data": 4, "fsdp": 2, "tensor": 1}, {"fsdp"}),
    ("test,dit", {"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp", "tensor"}),
], ids=["unet-data4-fsdp2", "dit-data2-fsdp2-tensor2"])
def test_eight_devices_equal_one(tmp_path, variant, mesh_sizes, expect_axes):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, REPO, variant, json.dumps(mesh_sizes),
                             str(tmp_path)], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT"))
    report = json.loads(line.split(" ", 1)[1])
    assert report["num_devices"] == 8
    assert expect_axes <= set(report["sharded_axes"]), f"parameters not sharded: {report}"
    assert report["max_abs_diff"] < 1e-5, report
