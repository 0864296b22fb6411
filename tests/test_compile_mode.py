"""`--mode=compile`: slice names, the HLO collective reader, and compiles of the tiny DiT for this
host's CPU (always), for 8 CPU devices with and without FSDP, and for a TPU v5p-8 when libtpu is
installed (`make libtpu`; skipped otherwise). The tiny DiT (digits:test,dit) compiles in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_cli

from diffjax.modes import compile as compile_mode
from diffjax.parallel import topologies

CONFIG = "--config=configs/digits.py:test,dit"
HAS_LIBTPU = topologies.libtpu_available()
NEEDS_LIBTPU = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed (TPU compiler; "
                                  "`make libtpu` installs the version jax[tpu] pins)")


@pytest.mark.parametrize("name, generation, shape", [
    ("v4-8", "v4", (2, 2, 1)), ("v5p-8", "v5p", (2, 2, 1)), ("v5p-16", "v5p", (2, 2, 2)),
    ("v5p-32", "v5p", (2, 2, 4)), ("v5p-64", "v5p", (2, 4, 4)), ("v5p-256", "v5p", (4, 4, 8)),
    ("v4-4096", "v4", (8, 16, 16)), ("v5e-1", "v5e", (1, 1)), ("v5litepod-4", "v5e", (2, 2)),
    ("v5e-8", "v5e", (2, 4)), ("v5e-16", "v5e", (4, 4)), ("v5litepod-256", "v5e", (16, 16)),
    ("v6e-8", "v6e", (2, 4)), ("v6e-128", "v6e", (8, 16)), ("v5p:4x4x12", "v5p", (4, 4, 12)),
    ("V6E:8x16", "v6e", (8, 16)),
])
def test_slice_names_take_cloud_tpu_shapes(name, generation, shape):
    chip, parsed = topologies.parse(name)
    assert (chip.generation, parsed) == (generation, shape)


@pytest.mark.parametrize("name, message", [
    ("v5p-7", "even"), ("v5p-24", "v5p:4x4x4"), ("v7x-8", "Unknown TPU topology"),
    ("v5e:4x4x4", "2 axes"), ("v4-4", "smallest"), ("tpu", "Unknown TPU topology"),
])
def test_bad_slice_names_say_what_to_write(name, message):
    with pytest.raises(topologies.TopologyError, match=message):
        topologies.parse(name)


HLO = """
  %all-gather-start.1 = (f32[4,128]{1,0}, f32[16,128]{1,0}) all-gather-start(f32[4,128]{1,0} %p)
  %all-gather-done.1 = f32[16,128]{1,0:T(8,128)} all-gather-done(%all-gather-start.1)
  %all-reduce.2 = (bf16[1024]{0}, f32[8]{0}) all-reduce(%a, %b), replica_groups={{0,1}}
  ROOT %reduce-scatter.3 = f32[2,64]{1,0} reduce-scatter(f32[8,64]{1,0} %c), dimensions={0}
  %collective-permute-done = s32[3]{0} collective-permute-done(%cp-start)
  %fusion.4 = f32[16]{0} fusion(%all-reduce.2), kind=kLoop
"""


def test_collectives_are_counted_once_per_pair_with_their_result_bytes():
    found = compile_mode.collectives(HLO)
    assert found["all-gather"] == {"count": 1, "bytes": 16 * 128 * 4}
    assert found["all-reduce"] == {"count": 1, "bytes": 1024 * 2 + 8 * 4}
    assert found["reduce-scatter"] == {"count": 1, "bytes": 2 * 64 * 4}
    assert found["collective-permute"] == {"count": 1, "bytes": 12}
    assert found["all-to-all"] == {"count": 0, "bytes": 0}


def test_compile_for_this_hosts_cpu_writes_the_report_and_the_executable(tmp_path):
    executable = tmp_path / "step.exe"
    result = run_cli("--mode=compile", CONFIG, f"--workdir={tmp_path}",
                     "--config.compile.topology=cpu",
                     f"--config.compile.save_executable={executable}")
    report = json.loads((tmp_path / "compile" / "cpu_train.json").read_text())
    memory = report["memory_per_chip"]
    assert report["fits"] and report["chips"] == 1 and report["batch_size"] == 16
    assert memory["parameters"] == memory["EMA parameters"] > 0
    assert memory["optimizer state"] >= 2 * memory["parameters"]  # Adam's two moments
    assert memory["arguments"] >= memory["parameters"] * 4  # params, EMA, moments and the batch
    assert memory["aliased"] > 0  # the donated state
    assert report["flops_per_chip"] > 0
    assert report["estimate"]["seconds_per_call"] is None  # XLA estimates TPU programs only
    assert "Memory per chip" in result.stdout and "FLOPs per chip" in result.stdout
    assert report["executable"]["bytes"] == executable.stat().st_size > 0
    loaded = compile_mode.load_executable(str(executable))
    assert loaded is not None


def test_compile_the_sampler_reports_one_step_of_its_loop(tmp_path):
    run_cli("--mode=compile", CONFIG, f"--workdir={tmp_path}", "--config.compile.topology=cpu",
            "--config.compile.what=sample")
    report = json.loads((tmp_path / "compile" / "cpu_sample.json").read_text())
    assert report["what"] == "sample" and report["batch_size"] == 8
    assert report["loop"] == {"name": "sampler step", "trips": 4}  # digits:test, 4 EM steps
    assert set(report["memory_per_chip"]) >= {"parameters", "temporaries", "total"}
    assert report["flops_per_chip_per_call"] == 4 * report["flops_per_chip"] > 0


def test_a_plan_that_does_not_fit_is_one_line_with_the_switches(tmp_path):
    result = run_cli("--mode=compile", CONFIG, f"--workdir={tmp_path}",
                     "--config.compile.topology=cpu", "--config.compile.memory_per_chip_gib=1e-5",
                     check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert "does not fit: needs" in line and "GiB per chip on cpu" in line, line
    assert "--config.model.remat=True" in line and "--config.model.dtype=bfloat16" in line, line
    assert "Traceback" not in result.stderr


def test_compile_keys_are_checked_before_compiling(tmp_path):
    for override, expected in [("--config.compile.topology=v9-8", "Unknown TPU topology"),
                               ("--config.compile.what=eval", "compile.what"),
                               ("--config.compile.num_slices=2", "dcn_data=2")]:
        result = run_cli("--mode=compile", CONFIG, f"--workdir={tmp_path}",
                         "--config.compile.topology=cpu", override, check=False)
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
        assert expected in line, line


def test_a_text_model_is_planned_before_its_text_cache_exists(tmp_path, digits_config):
    """The null caption is a constant of the step: zeros of its shape make the same program, so
    a pod plan needs no encode_latents run. Its sampler is not planned (prompts are encoded on
    the host), in one line."""
    run_cli("--mode=compile", "--config=configs/digits.py:text,test", f"--workdir={tmp_path}",
            "--config.compile.topology=cpu")
    report = json.loads((tmp_path / "compile" / "cpu_train.json").read_text())
    assert report["fits"] and report["memory_per_chip"]["batch"] > 0
    assert not (tmp_path / "cache").exists()  # nothing encoded, nothing written there

    config = digits_config("text,test")
    config.data.latent_dir = str(tmp_path / "nothing")
    with pytest.raises(compile_mode.UserError, match="compile.what=train"):
        compile_mode.compile_plan(config, topologies.compile_target("cpu"), "sample")


FSDP_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from diffjax.runtime import xla
xla.enable_compilation_cache()
import importlib.util
spec = importlib.util.spec_from_file_location("c", sys.argv[1] + "/configs/digits.py")
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
from diffjax.modes.compile import compile_plan
from diffjax.parallel.topologies import compile_target
out = {}
for fsdp in (1, 8):
    config = module.get_config("test,dit")
    config.mesh.data, config.mesh.fsdp = 8 // fsdp, fsdp
    report = compile_plan(config, compile_target("cpu"), "train")
    out[fsdp] = {k: report["memory_per_chip"][k] for k in ("parameters", "optimizer state",
                                                             "arguments")}
    out[fsdp]["collectives"] = report["collectives_per_chip"]
print("RESULT", json.dumps(out))
"""


def test_fsdp_over_eight_devices_cuts_per_chip_state_to_an_eighth():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", FSDP_SCRIPT, REPO], capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    for key in ("parameters", "optimizer state"):
        ratio = out["8"][key] / out["1"][key]
        assert 1 / 8 <= ratio < 1.2 / 8, (key, ratio)  # a few small arrays stay whole
    assert out["8"]["arguments"] < out["1"]["arguments"] / 4
    # Data parallelism all-reduces gradients; FSDP gathers weights and scatters gradients.
    assert out["1"]["collectives"]["all-reduce"]["count"] > 0
    assert out["8"]["collectives"]["all-gather"]["count"] > 0


@NEEDS_LIBTPU
def test_compile_for_a_tpu_v5p_8_reports_xla_estimates(tmp_path):
    run_cli("--mode=compile", CONFIG, f"--workdir={tmp_path}", "--config.compile.topology=v5p-8")
    report = json.loads((tmp_path / "compile" / "v5p-8_train.json").read_text())
    assert report["device_kind"] == "TPU v5" and report["chips"] == 4
    assert report["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert report["memory_per_chip"]["capacity"] == int(95.74 * 2**30)
    estimate = report["estimate"]
    assert estimate["seconds_per_call"] > 0 and 0 < estimate["mfu"] < 1
    assert report["collectives_per_chip"]["all-reduce"]["count"] > 0


@NEEDS_LIBTPU
def test_a_batch_over_a_v5e_chips_memory_is_refused_by_xla_in_one_line(tmp_path):
    result = run_cli("--mode=compile", CONFIG, f"--workdir={tmp_path}",
                     "--config.compile.topology=v5e-4", "--config.training.batch_size=4000000",
                     check=False)
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert "does not fit: needs" in line and "of 15.8 GiB per chip on v5e-4 (XLA" in line, line
