"""The device mesh: size resolution, errors that name the fix, the DCN layout, FSDP memory, and
checkpoints that move between meshes.

Checks that need several devices run in a subprocess with 8 simulated CPU devices (the test
process itself has one); the DCN layout runs in two real processes joined by jax.distributed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import ml_collections
import pytest
from conftest import REPO

from diffjax.parallel.mesh import MeshError, resolve_axis_sizes


def mesh_config(**sizes) -> ml_collections.ConfigDict:
    from diffjax.config.schema import base_config

    config = base_config().mesh
    for axis, size in sizes.items():
        setattr(config, axis, size)
    return config


CACHE = "from diffjax.runtime import xla; xla.enable_compilation_cache()\n"


def run_script(script: str, *args: str, devices: int = 8, timeout: float = 900) -> dict:
    """Runs `script` with `devices` simulated CPU devices; returns the JSON it prints last."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    result = subprocess.run([sys.executable, "-c", CACHE + textwrap.dedent(script), REPO, *args],
                            cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# --- Size resolution (no devices needed) ---------------------------------------------------------

@pytest.mark.parametrize("sizes, num_devices, expected", [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((2, -1, 1), 8, (2, 4, 1)),
    ((2, 2, -1), 8, (2, 2, 2)),
    ((1, 8, 1), 8, (1, 8, 1)),
    ((-1, 1, 1), 1, (1, 1, 1)),
])
def test_minus_one_fills_the_remaining_devices(sizes, num_devices, expected):
    assert resolve_axis_sizes(sizes, num_devices, "ICI") == expected


@pytest.mark.parametrize("sizes, num_devices, message", [
    ((-1, -1, 1), 8, r"At most one ICI mesh size may be -1"),
    ((0, 1, 1), 8, r"must be positive or -1"),
    ((-2, 1, 1), 8, r"must be positive or -1"),
    ((3, -1, 1), 8, r"8 devices are not divisible by 3"),
    ((2, 2, 1), 8, r"needs 4 devices but 8 are available; set one of "
                   r"--config.mesh.data/fsdp/tensor to -1"),
    ((4, 4, 1), 8, r"needs 16 devices but 8"),
])
def test_bad_sizes_raise_a_message_naming_the_fix(sizes, num_devices, message):
    with pytest.raises(MeshError, match=message):
        resolve_axis_sizes(sizes, num_devices, "ICI")


@pytest.mark.parametrize("dcn", [{"dcn_data": -1}, {"dcn_fsdp": 0}])
def test_dcn_sizes_are_never_inferred(dcn):
    from diffjax.parallel.mesh import create_mesh

    with pytest.raises(MeshError, match=r"DCN mesh sizes must be positive.*--config.mesh.dcn_data"):
        create_mesh(mesh_config(**dcn))


# --- Meshes on 8 simulated devices ---------------------------------------------------------------

MESHES_SCRIPT = r"""
    import json, sys
    import jax
    from diffjax.config.schema import base_config
    from diffjax.parallel.mesh import MeshError, create_mesh

    def build(**sizes):
        config = base_config().mesh
        for axis, size in sizes.items():
            setattr(config, axis, size)
        try:
            mesh = create_mesh(config)
        except MeshError as error:
            return {"error": str(error)}
        return {"shape": dict(mesh.shape), "ids": [d.id for d in mesh.devices.flat]}

    print("RESULT", json.dumps({
        "default": build(),
        "fsdp_fill": build(data=2, fsdp=-1, tensor=2),
        "tensor_fill": build(data=1, fsdp=2, tensor=-1),
        "subset": {"shape": dict(create_mesh(base_config().mesh, jax.devices()[:4]).shape)},
        "too_many": build(data=4, fsdp=4),
        "dcn_single_process": build(data=-1, dcn_data=2),
        "dcn_uneven": build(data=-1, dcn_data=3),
        "ids": [d.id for d in jax.devices()],
    }))
"""


@pytest.fixture(scope="module")
def meshes():
    return run_script(MESHES_SCRIPT)


def test_meshes_on_eight_devices(meshes):
    assert meshes["default"]["shape"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert meshes["fsdp_fill"]["shape"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert meshes["tensor_fill"]["shape"] == {"data": 1, "fsdp": 2, "tensor": 4}
    assert meshes["subset"]["shape"] == {"data": 4, "fsdp": 1, "tensor": 1}
    # CPU devices have no topology: the mesh keeps jax.devices() order, so the batch rows of each
    # process stay contiguous (what make_array_from_process_local_data expects).
    assert meshes["default"]["ids"] == meshes["ids"]
    assert "needs 16 devices but 8 are available" in meshes["too_many"]["error"]


def test_dcn_error_names_the_fix_on_a_single_process(meshes):
    # One process is one DCN unit off TPU: asking for two must say so and how to fix it.
    error = meshes["dcn_single_process"]["error"]
    assert "needs 2 processes, but the 8 devices span 1" in error, error
    assert "--config.mesh.dcn_data/dcn_fsdp/dcn_tensor" in error and "product is 1" in error
    assert "cannot form 3 slices" in meshes["dcn_uneven"]["error"]


DCN_SCRIPT = r"""
    import json, sys
    from diffjax.parallel import distributed
    distributed.initialize_from_environment()
    import jax
    from diffjax.config.schema import base_config
    from diffjax.parallel.mesh import create_mesh

    config = base_config().mesh
    config.data, config.fsdp, config.dcn_data = 1, 2, 2
    mesh = create_mesh(config)
    print("RESULT", json.dumps({
        "process": jax.process_index(),
        "shape": dict(mesh.shape),
        "process_of": [[d.process_index for d in row] for row in mesh.devices[:, :, 0]],
    }))
"""


def test_dcn_axis_runs_across_processes(tmp_path):
    """Two real processes of two devices: dcn_data=2 puts the data axis between the processes.

    TPU multi-slice uses each device's slice_index; elsewhere a process is the DCN unit, which is
    what this checks for real (no fake slice attributes).
    """
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for process_id in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAX_PLATFORMS": "cpu", "DIFFJAX_CPU_COLLECTIVES": "gloo",
               "DIFFJAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "DIFFJAX_NUM_PROCESSES": "2", "DIFFJAX_PROCESS_ID": str(process_id)}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(DCN_SCRIPT)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(
                [l for l in stdout.splitlines() if l.startswith("RESULT ")][-1][len("RESULT "):]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for report in outputs:
        assert report["shape"] == {"data": 2, "fsdp": 2, "tensor": 1}
        # Row = data index, column = fsdp index: fsdp stays inside a process (fast links).
        assert report["process_of"] == [[0, 0], [1, 1]], report


# --- FSDP memory ---------------------------------------------------------------------------------

FSDP_SCRIPT = r"""
    import importlib.util, json, os, sys
    import jax
    from diffjax.parallel.sharding import per_device_bytes
    from diffjax.experiment import build_experiment, example_input
    from diffjax.state.train_state import create_state

    spec = importlib.util.spec_from_file_location(
        "cfg", os.path.join(sys.argv[1], "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    report = {}
    for variant in ("test,dit", "test"):
        for fsdp in (1, 2, 4, 8):
            config = module.get_config(variant)
            config.model.dit.hidden_size = 128  # every 'embed' dimension divisible by 8
            config.mesh.data, config.mesh.fsdp = 8 // fsdp, fsdp
            experiment = build_experiment(config)
            state = create_state(experiment.model, experiment.optimizer, example_input(config),
                                 config.seed, experiment.spec)
            total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
            report[f"{variant}/{fsdp}"] = {"total": total, "per_device": per_device_bytes(state)}
    print("RESULT", json.dumps(report))
"""


@pytest.fixture(scope="module")
def fsdp_memory():
    return run_script(FSDP_SCRIPT)


@pytest.mark.parametrize("variant", ["test,dit", "test"], ids=["dit", "unet"])
@pytest.mark.parametrize("fsdp", [1, 2, 4, 8])
def test_fsdp_divides_state_memory(fsdp_memory, variant, fsdp):
    """Parameters, EMA and Adam moments: each device holds 1/fsdp of the training state."""
    row = fsdp_memory[f"{variant}/{fsdp}"]
    assert row["total"] == fsdp_memory[f"{variant}/1"]["total"]
    expected = row["total"] / fsdp
    assert abs(row["per_device"] / expected - 1) < 0.05, (row, expected)


# --- A checkpoint saved under one mesh restores under another ------------------------------------

RESHARD_SCRIPT = r"""
    import importlib.util, json, os, sys
    import jax, numpy as np
    from diffjax.storage.checkpoints import Checkpointer
    from diffjax.experiment import build_experiment
    from diffjax.training.loop import train

    spec = importlib.util.spec_from_file_location(
        "cfg", os.path.join(sys.argv[1], "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
    workdir = sys.argv[2]

    def config_for(data, fsdp, steps):
        config = module.get_config("test,dit")
        config.mesh.data, config.mesh.fsdp = data, fsdp
        config.training.num_train_steps = steps
        config.training.sample_every_steps = 0
        return config

    saved = train(config_for(2, 4, 3), os.path.join(workdir, "moved"))["state"]
    target = build_experiment(config_for(8, 1, 3))
    checkpointer = Checkpointer(os.path.join(workdir, "moved"), async_save=False)
    restored, _ = checkpointer.restore(target.spec, 3)
    checkpointer.close()

    leaves = lambda tree: jax.tree.leaves(tree)
    equal = all(np.array_equal(np.asarray(a), np.asarray(b))
                for a, b in zip(leaves(saved), leaves(restored)))
    new_layout = all(r.sharding == s
                     for r, s in zip(leaves(restored), leaves(target.spec.shardings)))
    saved_specs = {str(l.sharding.spec) for l in leaves(saved.params)}
    restored_specs = {str(l.sharding.spec) for l in leaves(restored.params)}

    # Training goes on under the new mesh and ends where an uninterrupted run ends.
    resumed = train(config_for(8, 1, 6), os.path.join(workdir, "moved"))["state"]
    straight = train(config_for(2, 4, 6), os.path.join(workdir, "straight"))["state"]
    resume_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                      for a, b in zip(leaves(resumed.params), leaves(straight.params)))
    print("RESULT", json.dumps({"equal": equal, "new_layout": new_layout,
                                "saved_specs": sorted(saved_specs),
                                "restored_specs": sorted(restored_specs),
                                "resumed_step": int(resumed.step), "resume_diff": resume_diff}))
"""


def test_checkpoint_saved_under_one_mesh_restores_under_another(tmp_path):
    report = run_script(RESHARD_SCRIPT, str(tmp_path))
    assert report["equal"], "restored state differs from the saved one"
    assert report["new_layout"], "restored arrays do not carry the new mesh's shardings"
    assert any("fsdp" in spec for spec in report["saved_specs"]), report
    assert not any("fsdp" in spec for spec in report["restored_specs"]), report
    assert report["resumed_step"] == 6
    assert report["resume_diff"] < 1e-5, report
