"""The launchers in launch/: the commands they print with --dry-run, and what they do with fake
`python`/`gcloud` binaries (no cloud, no TPU). The multi-process training itself is in
test_multihost.py; here the process handling of local.sh is checked in seconds.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import time

import pytest

from conftest import REPO

LAUNCH = os.path.join(REPO, "launch")
JAX_PIN = re.search(r'"jax==([^"]+)"', open(os.path.join(REPO, "pyproject.toml")).read()).group(1)


def launch(script: str, *args: str, env: dict | None = None, timeout: float = 60,
           prefix: tuple = ("bash",)) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, os.path.join(LAUNCH, script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def commands(result: subprocess.CompletedProcess) -> list[list[str]]:
    """The printed commands, as argv lists (they must parse as shell words)."""
    assert result.returncode == 0, result.stderr
    return [shlex.split(line, comments=True) for line in result.stdout.splitlines()
            if line.strip()]


def executable(path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.parametrize("script", ["local.sh", "tpu_vm.sh", "xpk.sh", "slurm.sbatch"])
def test_scripts_parse_and_are_executable(script):
    path = os.path.join(LAUNCH, script)
    assert os.access(path, os.X_OK), f"chmod +x launch/{script}"
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    assert "set -euo pipefail" in open(path).read()


# --- local.sh ------------------------------------------------------------------------------------

TRAIN = ["--config=configs/digits.py:test", "--workdir=/tmp/run dir", "--config.mesh.fsdp=2"]


def test_local_dry_run_prints_one_command_per_process():
    result = launch("local.sh", "--num_processes=3", "--devices_per_process=2", "--port=12345",
                    "--dry-run", "--", *TRAIN, env={"PYTHON": "python3", "XLA_FLAGS": ""})
    lines = commands(result)
    assert lines[0] == ["cd", REPO]
    processes = lines[1:]
    assert len(processes) == 3
    for i, argv in enumerate(processes):
        assert argv[0] == "env"
        split = argv.index("python3")
        environment = dict(word.split("=", 1) for word in argv[1:split])
        assert environment == {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
            "DIFFJAX_CPU_COLLECTIVES": "gloo",
            "DIFFJAX_COORDINATOR_ADDRESS": "localhost:12345",
            "DIFFJAX_NUM_PROCESSES": "3",
            "DIFFJAX_PROCESS_ID": str(i),
        }
        assert argv[split + 1:] == ["-m", "diffjax.main", *TRAIN]


@pytest.mark.parametrize("args, message", [
    (["--devices_per_process=2", "--", "x"], "--num_processes=N and --devices_per_process=D"),
    (["--num_processes=0", "--devices_per_process=2", "--", "x"], "positive integers"),
    (["--num_processes=2", "--devices_per_process=2"], "no training arguments"),
    (["--num_processes=2", "--devices_per_process=2", "--port=99999", "--", "x"], "--port"),
    (["--nprocs=2", "--", "x"], "unknown option '--nprocs=2'"),
])
def test_local_rejects_bad_options(args, message):
    result = launch("local.sh", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: reports its arguments, then behaves as FAKE_EXIT_<process id> says.
echo "argv: $*"
echo "$$" > "$FAKE_DIR/pid.$DIFFJAX_PROCESS_ID"
code_var="FAKE_EXIT_$DIFFJAX_PROCESS_ID"
case "${!code_var:-0}" in
  hang) exec sleep 120 ;;
  *) exit "${!code_var:-0}" ;;
esac
"""


def test_local_prefixes_output_and_succeeds_when_all_succeed(tmp_path):
    python = executable(tmp_path / "python", FAKE_PYTHON)
    result = launch("local.sh", "--num_processes=2", "--devices_per_process=1", "--", "--a=1",
                    env={"PYTHON": python, "FAKE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == ["[process 0] argv: -m diffjax.main --a=1",
                             "[process 1] argv: -m diffjax.main --a=1"]


def test_local_stops_the_others_and_returns_the_first_failure(tmp_path):
    python = executable(tmp_path / "python", FAKE_PYTHON)
    start = time.monotonic()
    result = launch("local.sh", "--num_processes=3", "--devices_per_process=1", "--", "--a=1",
                    env={"PYTHON": python, "FAKE_DIR": str(tmp_path), "FAKE_EXIT_0": "hang",
                         "FAKE_EXIT_1": "7", "FAKE_EXIT_2": "hang", "KILL_GRACE_S": "2"})
    assert result.returncode == 7, (result.stdout, result.stderr)
    assert "process 1 exited with code 7; stopping the others" in result.stderr
    assert time.monotonic() - start < 30, "the hanging processes were not stopped"
    for survivor in (0, 2):
        pid_file = tmp_path / f"pid.{survivor}"
        if not pid_file.exists():
            continue  # stopped before it got to write its pid
        pid = int(pid_file.read_text())
        deadline = time.monotonic() + 5  # SIGKILL is asynchronous
        while time.monotonic() < deadline and process_exists(pid):
            time.sleep(0.1)
        assert not process_exists(pid), f"process {survivor} (pid {pid}) is still running"


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- tpu_vm.sh -----------------------------------------------------------------------------------

TPU = ["--name=diffjax-v4", "--zone=us-central2-b", "--accelerator=v4-32"]
POD_TRAIN = ["--config=configs/cifar10_ddpmpp_vp.py", "--workdir=gs://my-bucket/runs/vp",
             "--config.data.data_dir=gs://my-bucket/tensorflow_datasets",
             "--config.mesh.data=-1", "--config.mesh.fsdp=4"]


def remote(argv: list[str]) -> list[str]:
    """The words of the --command=... a gcloud ssh line runs on the workers."""
    command = next(a for a in argv if a.startswith("--command="))
    return shlex.split(command[len("--command="):])


def test_tpu_vm_dry_run_creates_installs_trains_and_deletes():
    result = launch("tpu_vm.sh", *TPU, "--project=my-project", "--spot", "--delete",
                    "--dry-run", "--", *POD_TRAIN)
    lines = commands(result)
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = ["--zone=us-central2-b", "--project=my-project"]

    describe, create, tar, scp, install, train, delete = lines
    assert describe[:6] == gcloud + ["describe", "diffjax-v4"] and describe[6:8] == where
    assert create == gcloud + ["create", "diffjax-v4", *where, "--accelerator-type=v4-32",
                               "--version=tpu-ubuntu2204-base", "--spot"]
    assert tar[:2] == ["tar", "-czf"] and "--exclude=./.venv" in tar and tar[-1] == "."
    assert scp[:5] == gcloud + ["scp"] and "--worker=all" in scp

    for ssh in (install, train):
        assert ssh[:6] == gcloud + ["ssh", "diffjax-v4"] and "--worker=all" in ssh
    setup = remote(install)
    assert "~/diffjax-venv/bin/pip" in setup and "-e" in setup
    assert f"jax[tpu]=={JAX_PIN}" in setup
    assert "diffjax.evaluation.fetch_weights" in setup  # eval on the pod finds the weights

    words = remote(train)
    assert "DIFFJAX_DISTRIBUTED=auto" in words
    start = words.index("diffjax.main") + 1
    assert words[start:start + len(POD_TRAIN)] == POD_TRAIN
    assert "tee" in words  # a log on every worker as well as the stream

    assert delete == gcloud + ["delete", "diffjax-v4", *where, "--quiet"]


@pytest.mark.parametrize("accelerator, version", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5p-64", "v2-alpha-tpuv5"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v6e-8", "v2-alpha-tpuv6e"),
])
def test_tpu_vm_picks_the_runtime_of_each_generation(accelerator, version):
    result = launch("tpu_vm.sh", "--name=n", "--zone=z", f"--accelerator={accelerator}",
                    "--no-setup", "--dry-run", "--", "--config=c")
    create = commands(result)[1]
    assert f"--version={version}" in create and f"--accelerator-type={accelerator}" in create
    assert len(commands(result)) == 3  # describe, create, train: --no-setup installs nothing


def test_tpu_vm_git_source_clones_at_a_ref():
    result = launch("tpu_vm.sh", *TPU, "--source=git:https://example.com/diffjax.git@v0.1",
                    "--dry-run", "--", "--config=c")
    lines = commands(result)
    assert not any(line[0] == "tar" for line in lines)
    setup = remote(lines[2])
    assert ["git", "clone", "https://example.com/diffjax.git", "~/diffjax"] == \
        setup[setup.index("git"):setup.index("git") + 4]
    checkout = setup.index("checkout")
    assert setup[checkout + 1].rstrip(";") == "v0.1"


def test_tpu_vm_bucket_is_mounted_on_every_worker_before_training():
    lines = commands(launch("tpu_vm.sh", *TPU, "--bucket=gs://my-bucket", "--dry-run", "--",
                            "--workdir=/gcs/my-bucket/runs/vp"))
    install, train = lines[-2], lines[-1]
    assert "gcsfuse" in remote(install)  # installed with diffjax
    words = remote(train)
    assert words.index("gcsfuse") < words.index("diffjax.main")  # mounted (if not yet) first
    mount = words[words.index("gcsfuse") + 1:words.index("gcsfuse") + 4]
    assert mount == ["--implicit-dirs", "my-bucket", "/gcs/my-bucket;"]  # ';' ends the { } group


def test_tpu_vm_delete_alone_only_deletes():
    lines = commands(launch("tpu_vm.sh", "--name=n", "--zone=z", "--delete", "--dry-run"))
    assert lines == [["gcloud", "compute", "tpus", "tpu-vm", "delete", "n", "--zone=z", "--quiet"]]


@pytest.mark.parametrize("args, message", [
    (["--zone=z", "--accelerator=v4-8", "--", "x"], "--name=NAME is required"),
    (["--name=n", "--accelerator=v4-8", "--", "x"], "--zone=ZONE is required"),
    (["--name=n", "--zone=z", "--", "x"], "--accelerator=TYPE is required"),
    (["--name=n", "--zone=z", "--accelerator=v4-8", "--source=scp", "--", "x"], "--source"),
])
def test_tpu_vm_rejects_bad_options(args, message):
    result = launch("tpu_vm.sh", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


FAKE_GCLOUD = """#!/usr/bin/env bash
# Stands in for gcloud: logs each call; `describe` answers FAKE_STATE (fails when it is empty).
echo "$*" >> "$FAKE_DIR/gcloud.log"
if [[ "$4" == describe ]]; then
  [[ -n "${FAKE_STATE:-}" ]] || { echo "NOT_FOUND" >&2; exit 1; }
  printf '%s\\tprojects/p/locations/z/acceleratorTypes/v4-32\\n' "$FAKE_STATE"
fi
"""


@pytest.mark.parametrize("state, created", [("READY", False), ("", True)])
def test_tpu_vm_reuses_a_ready_vm_and_creates_a_missing_one(tmp_path, state, created):
    gcloud = executable(tmp_path / "gcloud", FAKE_GCLOUD)
    result = launch("tpu_vm.sh", *TPU, "--no-setup", "--", "--config=c",
                    env={"GCLOUD": gcloud, "FAKE_DIR": str(tmp_path), "FAKE_STATE": state})
    assert result.returncode == 0, result.stderr
    calls = [line.split()[3] for line in (tmp_path / "gcloud.log").read_text().splitlines()]
    assert calls == (["describe", "create", "ssh"] if created else ["describe", "ssh"])


def test_tpu_vm_refuses_a_preempted_vm_and_names_the_fix(tmp_path):
    gcloud = executable(tmp_path / "gcloud", FAKE_GCLOUD)
    result = launch("tpu_vm.sh", *TPU, "--", "--config=c",
                    env={"GCLOUD": gcloud, "FAKE_DIR": str(tmp_path), "FAKE_STATE": "PREEMPTED"})
    assert result.returncode == 2
    assert "is PREEMPTED" in result.stderr and "--delete" in result.stderr


# --- xpk.sh --------------------------------------------------------------------------------------

XPK = ["--cluster=my-cluster", "--workload=diffjax-dit", "--tpu-type=v5p-64"]


def xpk_command(argv: list[str]) -> list[str]:
    command = next(a for a in argv if a.startswith("--command="))
    return shlex.split(command[len("--command="):])


def test_xpk_multislice_adds_data_parallelism_over_dcn():
    (argv,) = commands(launch("xpk.sh", *XPK, "--num-slices=2", "--project=p", "--zone=z",
                              "--dry-run", "--", *POD_TRAIN))
    assert argv[:3] == ["xpk", "workload", "create"]
    for flag in ("--cluster=my-cluster", "--workload=diffjax-dit", "--tpu-type=v5p-64",
                 "--num-slices=2", "--project=p", "--zone=z", "--docker-image=python:3.11",
                 f"--script-dir={REPO}"):
        assert flag in argv, flag
    words = xpk_command(argv)
    assert words[:4] == ["pip", "install", "-q", "-e"] and f"jax[tpu]=={JAX_PIN}" in words
    assert "diffjax.evaluation.fetch_weights" in words
    main = words.index("diffjax.main")
    assert "DIFFJAX_DISTRIBUTED=auto" in words[:main]
    assert words[main + 1:] == [*POD_TRAIN, "--config.mesh.dcn_data=2"]


def test_xpk_registry_image_runs_as_built_and_keeps_given_dcn_sizes():
    (argv,) = commands(launch(
        "xpk.sh", *XPK, "--num-slices=4", "--docker-image=us-docker.pkg.dev/p/r/diffjax:1",
        "--dry-run", "--", "--config=c", "--config.mesh.dcn_data=2", "--config.mesh.dcn_fsdp=2"))
    assert not any(a.startswith("--script-dir") for a in argv)
    words = xpk_command(argv)
    assert "pip" not in words
    assert words[-3:] == ["--config=c", "--config.mesh.dcn_data=2", "--config.mesh.dcn_fsdp=2"]


def test_xpk_single_slice_sets_no_dcn():
    (argv,) = commands(launch("xpk.sh", *XPK, "--dry-run", "--", "--config=c"))
    assert not any("dcn" in word for word in xpk_command(argv))


@pytest.mark.parametrize("args, message", [
    (["--num-slices=4", "--", "--config=c", "--config.mesh.dcn_data=2"],
     "multiply to 2 but --num-slices=4"),
    (["--", "--config=c"], None),
])
def test_xpk_checks_dcn_sizes_against_slices(args, message):
    result = launch("xpk.sh", *XPK, "--dry-run", *args)
    if message:
        assert result.returncode == 2 and message in result.stderr, result.stderr
    else:
        assert result.returncode == 0


def test_xpk_rejects_a_bad_workload_name():
    result = launch("xpk.sh", "--cluster=c", "--workload=My_Run", "--tpu-type=v5p-8", "--",
                    "--config=c")
    assert result.returncode == 2 and "--workload=NAME" in result.stderr


# --- slurm.sbatch --------------------------------------------------------------------------------

def test_slurm_header_asks_for_gpus_and_one_task_per_gpu():
    header = [line for line in open(os.path.join(LAUNCH, "slurm.sbatch"))
              if line.startswith("#SBATCH")]
    assert any("--gpus-per-node=" in line for line in header)
    assert any("--ntasks-per-node=8" in line for line in header)


def test_slurm_dry_run_one_task_per_gpu():
    (argv,) = commands(launch("slurm.sbatch", "--", *POD_TRAIN,
                              env={"DRY_RUN": "1", "SLURM_JOB_NUM_NODES": "4",
                                   "SLURM_GPUS_ON_NODE": "8", "PYTHON": "python3"}))
    assert argv[:2] == ["env", "DIFFJAX_DISTRIBUTED=auto"]
    srun = argv[argv.index("srun"):]
    assert srun[:3] == ["srun", "--nodes=4", "--ntasks-per-node=8"]
    assert "--kill-on-bad-exit=1" in srun and "--label" in srun
    assert srun[srun.index("python3"):] == ["python3", "-m", "diffjax.main", *POD_TRAIN]


def test_slurm_dry_run_one_task_per_node_drives_every_local_gpu():
    (argv,) = commands(launch("slurm.sbatch", "--config=c",  # sbatch passes args without '--'
                              env={"DRY_RUN": "1", "TASKS_PER": "node", "SLURM_JOB_NUM_NODES": "2",
                                   "SLURM_GPUS_ON_NODE": "4", "PYTHON": "python3"}))
    assert "DIFFJAX_LOCAL_DEVICE_IDS=0,1,2,3" in argv
    assert "--ntasks-per-node=1" in argv and argv[-1] == "--config=c"


# --- the environment contract the launchers rely on ----------------------------------------------

# The coordination service's heartbeat timeout is set on purpose (diffjax/parallel/peers.py).
HEARTBEAT = {"heartbeat_timeout_seconds": 60}

@pytest.mark.parametrize("environment, expected", [
    ({}, None),
    ({"DIFFJAX_DISTRIBUTED": "auto"}, {"local_device_ids": None, **HEARTBEAT}),
    ({"DIFFJAX_DISTRIBUTED": "auto", "DIFFJAX_LOCAL_DEVICE_IDS": "0,1,2,3"},
     {"local_device_ids": [0, 1, 2, 3], **HEARTBEAT}),
    ({"SLURM_JOB_ID": "1", "SLURM_NTASKS": "16"}, {"local_device_ids": None, **HEARTBEAT}),
])
def test_cluster_detection_calls_jax_distributed(monkeypatch, environment, expected):
    import jax

    from diffjax.parallel import distributed

    for name in ("DIFFJAX_COORDINATOR_ADDRESS", "DIFFJAX_DISTRIBUTED", "DIFFJAX_LOCAL_DEVICE_IDS",
                 "SLURM_JOB_ID", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    distributed.initialize_from_environment()
    assert calls == ([] if expected is None else [expected])
