"""Reliability: one writer per workdir, damaged checkpoints, config checked before compute,
disk and path faults (issue #10). Kill tests live in test_cli.py, multi-host loss in
test_multihost.py.

Most cases run `train()` in-process on copies of one trained workdir (configs/digits.py:test,
checkpoints at steps 3 and 6), so each costs a restore and a few steps, not a fresh process.
Disk faults use a small tmpfs in a private mount namespace (`unshare -rm`) where the machine
allows it; an in-process fault injection covers the same code path everywhere.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, run_cli

TEST_CONFIG = "--config=configs/digits.py:test"


def params_of(state) -> dict:
    import jax

    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(state.params)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_config):
    """A finished 6-step run (checkpoints 3 and 6) and its final parameters."""
    from diffjax.training.loop import train

    workdir = tmp_path_factory.mktemp("trained")
    summary = train(digits_config("test"), str(workdir))
    return workdir, params_of(summary["state"])


@pytest.fixture(scope="module")
def digits_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_config",
                                                  os.path.join(REPO, "configs", "digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config


def copy_of(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained[0], workdir)
    return workdir


# --- one writer per workdir -------------------------------------------------------------------

def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    from diffjax.storage.workdir_lock import WorkdirBusyError, WorkdirLock

    with WorkdirLock(str(tmp_path)):
        with pytest.raises(WorkdirBusyError) as error:
            WorkdirLock(str(tmp_path)).acquire()
        message = str(error.value)
        assert f"pid {os.getpid()}" in message and socket.gethostname() in message
        assert "--workdir" in message and "\n" not in message
    assert not (tmp_path / ".diffjax.lock").exists()  # released on exit


def _write_lock(path, **fields):
    record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": None,
              "started": time.time(), "heartbeat": time.time(), "purpose": "training",
              "token": "other", "command": "test"}
    record.update(fields)
    path.write_text(json.dumps(record))


def test_stale_locks_of_dead_processes_are_reclaimed_with_a_message(tmp_path, caplog):
    from diffjax.storage.workdir_lock import WorkdirLock

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path / ".diffjax.lock", pid=dead.pid)
    with caplog.at_level(logging.WARNING):
        with WorkdirLock(str(tmp_path)) as lock:
            assert lock.held
    assert f"process {dead.pid} no longer exists" in caplog.text


def test_locks_of_other_hosts_expire_by_heartbeat(tmp_path):
    from diffjax.storage.workdir_lock import STALE_AFTER_S, WorkdirBusyError, WorkdirLock

    path = tmp_path / ".diffjax.lock"
    _write_lock(path, host="another-host", pid=1)
    with pytest.raises(WorkdirBusyError, match="another-host"):
        WorkdirLock(str(tmp_path)).acquire()
    _write_lock(path, host="another-host", pid=1, heartbeat=time.time() - STALE_AFTER_S - 5)
    with WorkdirLock(str(tmp_path)) as lock:
        assert lock.held


def test_a_recycled_pid_does_not_keep_a_lock(tmp_path):
    from diffjax.storage.workdir_lock import WorkdirLock

    # This process is alive, but the record says it started at another time: a recycled pid.
    _write_lock(tmp_path / ".diffjax.lock", pid=os.getpid(), process_start="1")
    with WorkdirLock(str(tmp_path)) as lock:
        assert lock.held


def test_the_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
    from diffjax.storage import workdir_lock

    monkeypatch.setattr(workdir_lock, "HEARTBEAT_S", 0.05)
    with workdir_lock.WorkdirLock(str(tmp_path)):
        first = json.loads((tmp_path / ".diffjax.lock").read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / ".diffjax.lock").read_text())["heartbeat"] > first


def test_two_cli_runs_one_workdir_the_second_ends_at_once(trained, tmp_path):
    """A live training job holds the lock: a second `train` fails in one line, before it
    validates or compiles anything; `sample` (read-only) runs beside it."""
    workdir = copy_of(trained, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        _write_lock(workdir / ".diffjax.lock", pid=holder.pid, process_start=None)
        start = time.time()
        result = run_cli(TEST_CONFIG, f"--workdir={workdir}", "--config.seed=3", check=False)
        assert result.returncode == 1
        (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
        assert "WorkdirBusyError" in line and f"pid {holder.pid}" in line
        assert "Traceback" not in result.stderr and "Compiled" not in result.stderr
        assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
        assert time.time() - start < 60
        sampled = run_cli(TEST_CONFIG, f"--workdir={workdir}", "--mode=sample")
        assert "Samples of step 6" in sampled.stdout
    finally:
        holder.kill()
        holder.wait()


# --- damaged checkpoints ---------------------------------------------------------------------

def _array_files(step_dir):
    return glob.glob(str(step_dir / "state" / "ocdbt.process_0" / "d" / "*"))


DAMAGE = {
    "truncated array files": lambda d: [open(f, "r+b").truncate(10) for f in _array_files(d)],
    "random bytes in array files": lambda d: [open(f, "r+b").write(os.urandom(64))
                                              for f in _array_files(d)],
    "deleted ocdbt.process_0": lambda d: shutil.rmtree(d / "state" / "ocdbt.process_0"),
    "deleted _METADATA": lambda d: os.remove(d / "state" / "_METADATA"),
    "emptied manifest": lambda d: open(d / "state" / "manifest.ocdbt", "w").close(),
    "deleted data-iterator state": lambda d: shutil.rmtree(d / "data"),
    "garbage data-iterator state": lambda d: (d / "data" / "metadata").write_text("{garb"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_is_moved_aside_and_training_resumes_from_the_older(
        trained, digits_config, tmp_path, caplog, damage):
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    DAMAGE[damage](workdir / "checkpoints" / "6")
    with caplog.at_level(logging.WARNING):
        summary = train(digits_config("test"), str(workdir))
    (warning,) = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
    assert "Checkpoint 6" in warning and "checkpoints.damaged" in warning
    (moved,) = os.listdir(workdir / "checkpoints.damaged")
    assert moved.startswith("6-")  # kept, never deleted
    assert summary["step"] == 6
    # Resumed from step 3 and retrained steps 4-6: the same parameters as the intact run.
    for name, value in params_of(summary["state"]).items():
        np.testing.assert_array_equal(value, trained[1][name], err_msg=name)


def _numpy_sums(array: np.ndarray) -> str:
    """The digest's definition on the host: position-weighted sums of the bits mod 2^32."""
    words = np.ascontiguousarray(array).reshape(-1)
    if words.dtype != np.bool_:
        words = words.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[
            words.dtype.itemsize])
    words = words.astype(np.uint64)
    words ^= words >> np.uint64(16)
    mask = np.uint64(2**32 - 1)
    weight = np.uint64(2) * np.arange(words.size, dtype=np.uint64) + np.uint64(1)
    weighted = (words * weight) & mask
    a = int(np.sum(weighted) % 2**32)
    b = int(np.sum((weighted * weight) & mask) % 2**32)
    return f"{a:08x}{b:08x}"


def test_array_digests_are_position_weighted_sums_of_the_bits():
    import jax.numpy as jnp

    from diffjax.storage.digests import leaf_digests

    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(3, 5, 7)).astype(np.float32), np.int32(-1),
              rng.normal(size=(4, 6)).astype(jnp.bfloat16), np.array([True, False, True]),
              rng.integers(-5, 5, (9,)).astype(np.int8)]
    assert leaf_digests([jnp.asarray(a) for a in arrays]) == [_numpy_sums(a) for a in arrays]
    # Any one word changed, or two elements swapped, changes the digest.
    changed, swapped, signs = arrays[0].copy(), arrays[0].copy(), arrays[0].copy()
    changed.reshape(-1)[50] = np.nextafter(changed.reshape(-1)[50], np.float32(np.inf))
    swapped.reshape(-1)[[3, 4]] = swapped.reshape(-1)[[4, 3]]
    signs.reshape(-1)[[7, 90]] *= -1  # two sign bits: cancels in a plain linear sum mod 2^32
    original, *others = leaf_digests([jnp.asarray(a) for a in (arrays[0], changed, swapped,
                                                                  signs)])
    assert original not in others


def _data_files(step_dir):
    """OCDBT's array data files of a checkpoint (zstd frames), by name."""
    return sorted(f for f in _array_files(step_dir)
                  if open(f, "rb").read(4) == b"\x28\xb5\x2f\xfd")


def _corrupt_where_it_still_decodes(step_dir, spec):
    """Writes 4096 seeded garbage bytes into the middle of an OCDBT data file at a place where
    Orbax alone reads the checkpoint without error but with other values; returns what changed.

    Orbax's zstd frames carry no checksum, so such places exist in every checkpoint, but whether
    a given offset fails to decode or decodes silently depends on the compressed bytes there:
    Orbax itself (without diffjax's digests) is the oracle that picks one.
    """
    import jax
    import orbax.checkpoint as ocp

    def orbax_alone():
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(step_dir / "state", spec.abstract)
        return {jax.tree_util.keystr(k): np.asarray(v)
                for k, v in jax.tree_util.tree_leaves_with_path(state)}

    intact = orbax_alone()
    for seed in range(3):
        garbage = np.random.default_rng(seed).bytes(4096)
        for path in _data_files(step_dir):
            size = os.path.getsize(path)
            for offset in (size // 2 - 2048, size // 4 - 2048, 3 * size // 4 - 2048):
                if offset < 0:
                    continue
                with open(path, "r+b") as f:
                    f.seek(offset)
                    original = f.read(4096)
                    f.seek(offset)
                    f.write(garbage)
                try:
                    restored = orbax_alone()
                except Exception:  # noqa: BLE001 - a decoding error: damage Orbax reports
                    restored = intact
                changed = [name for name in intact
                           if not np.array_equal(intact[name], restored[name], equal_nan=True)]
                if changed:
                    return {"file": os.path.basename(path), "offset": offset, "leaf": changed[0],
                            "finite": bool(np.all(np.isfinite(restored[changed[0]])))}
                with open(path, "r+b") as f:
                    f.seek(offset)
                    f.write(original)
    pytest.fail(f"no garbage write in {step_dir} decodes without error; the test needs one")


def test_array_bytes_that_decode_to_other_values_are_damage(trained, digits_config, tmp_path,
                                                            caplog):
    """Issue #24: garbage in an OCDBT data file that zstd still decodes used to restore silently
    (other values, NaN among them). The digests recorded at save time catch it: the checkpoint is
    damaged like any other, moved aside, and training resumes from the older one."""
    from diffjax.experiment import build_experiment
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    spec = build_experiment(digits_config("test")).spec
    corruption = _corrupt_where_it_still_decodes(workdir / "checkpoints" / "6", spec)
    print(f"\nsilent corruption: {corruption}")
    with caplog.at_level(logging.WARNING):
        summary = train(digits_config("test"), str(workdir))
    (warning,) = [r.getMessage() for r in caplog.records if "is unreadable" in r.getMessage()]
    assert "Checkpoint 6" in warning and "digests recorded" in warning, warning
    assert "checkpoints.damaged" in warning and "\n" not in warning
    (moved,) = os.listdir(workdir / "checkpoints.damaged")
    assert moved.startswith("6-")
    assert summary["step"] == 6
    for name, value in params_of(summary["state"]).items():
        np.testing.assert_array_equal(value, trained[1][name], err_msg=name)


def test_a_checkpoint_without_digests_restores_unverified_with_one_line(trained, digits_config,
                                                                        tmp_path, caplog):
    """Checkpoints written before digests existed have no `digests` item: they restore as
    before, and the log says once that they are unverified."""
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    for step in ("3", "6"):
        shutil.rmtree(workdir / "checkpoints" / step / "digests")
    config = digits_config("test")
    with caplog.at_level(logging.WARNING):
        summary = train(config, str(workdir))
    lines = [r.getMessage() for r in caplog.records if "no array digests" in r.getMessage()]
    assert len(lines) == 1 and "Checkpoint 6" in lines[0] and "unverified" in lines[0], lines
    assert not (workdir / "checkpoints.damaged").exists()
    for name, value in params_of(summary["state"]).items():
        np.testing.assert_array_equal(value, trained[1][name], err_msg=name)


def test_a_killed_runs_partial_save_is_cleared_by_the_next_training_run_only(trained,
                                                                          digits_config, tmp_path):
    from diffjax.storage.checkpoints import Checkpointer
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    partial = workdir / "checkpoints" / "9.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "_sharding").write_bytes(b"half")
    # A reader (eval, sample) may see a live save of the training job: it leaves it alone.
    Checkpointer(str(workdir), max_to_keep=None, async_save=False, create=False).close()
    assert partial.exists()
    assert train(digits_config("test"), str(workdir))["step"] == 6
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]


def test_no_readable_checkpoint_stops_with_the_folder_and_the_fix(trained, digits_config,
                                                                    tmp_path):
    from diffjax.storage.checkpoints import CheckpointError
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    for step in ("3", "6"):
        os.remove(workdir / "checkpoints" / step / "state" / "_METADATA")
    with pytest.raises(CheckpointError, match="no readable checkpoint in .*checkpoints.*"
                                              "Delete .* or pass another --workdir"):
        train(digits_config("test"), str(workdir))
    assert sorted(x.split("-")[0] for x in os.listdir(workdir / "checkpoints.damaged")) == \
        ["3", "6"]


def test_a_checkpoint_of_another_config_names_the_parameter_and_the_keys(trained,
                                                                          digits_config,
                                                                          tmp_path):
    from diffjax.storage.checkpoints import CheckpointMismatchError
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    config = digits_config("test")
    config.model.unet.nf = 16
    with pytest.raises(CheckpointMismatchError) as error:
        train(config, str(workdir))
    message = str(error.value)
    assert "checkpoint 6" in message and "params/" in message and "shape" in message
    assert "config.model.unet.nf (8 -> 16)" in message
    assert "strict" not in message
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]  # nothing moved


def test_a_config_of_another_model_is_refused_when_training_resumes(trained, digits_config,
                                                                   tmp_path):
    """Same shapes, another model: VP weights resumed as EDM would train on nonsense."""
    from diffjax.storage.workdir import RunMismatchError
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    record = (workdir / "config.json").read_text()
    config = digits_config("test,edm")
    config.training.num_train_steps = 9
    with pytest.raises(RunMismatchError) as error:
        train(config, str(workdir))
    message = str(error.value)
    assert "config.sde.name ('vp' -> 'edm')" in message and "\n" not in message
    assert "config.model.parameterization ('eps' -> 'edm')" in message
    assert (workdir / "config.json").read_text() == record  # the record is not overwritten
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]


def test_a_finished_run_returns_without_compiling(trained, digits_config, tmp_path, caplog):
    """A notebook rerun of `train` on a finished run: no data pipeline, no compilation."""
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    with caplog.at_level(logging.INFO):
        summary = train(digits_config("test"), str(workdir))
    assert summary["step"] == 6 and "nothing to train" in caplog.text
    assert "Compiled the train step" not in caplog.text
    assert summary["samples"].endswith("step_00000006.png")
    for name, value in params_of(summary["state"]).items():
        np.testing.assert_array_equal(value, trained[1][name], err_msg=name)


def test_a_checkpoint_of_another_network_outside_training_is_one_line(trained, digits_config):
    """Sampling, likelihoods and Python loads restore with `restore_params`; a first stage named
    by autoencoder.pretrained is restored the same way. Both say what differs, in one line."""
    from diffjax.experiment import build_experiment, load_first_stage, restore_params
    from diffjax.storage.checkpoints import Checkpointer, CheckpointMismatchError

    config = digits_config("test")
    config.model.unet.nf = 16
    checkpointer = Checkpointer(str(trained[0]), async_save=False, max_to_keep=None,
                                create=False)
    try:
        with pytest.raises(CheckpointMismatchError) as error:
            restore_params(build_experiment(config), checkpointer, 6, True)
    finally:
        checkpointer.close()
    message = str(error.value)
    assert "checkpoint 6" in message and "params/" in message
    assert "config.model.unet.nf (8 -> 16)" in message and "strict" not in message

    latent = digits_config("test,latent")
    latent.autoencoder.pretrained = str(trained[0])  # a diffusion run, not a first stage
    with pytest.raises(CheckpointMismatchError) as error:
        load_first_stage(latent)
    message = str(error.value)
    assert len(message) < 600 and "\n" not in message and "strict" not in message
    assert f"autoencoder.pretrained={trained[0]} must be a first-stage run" in message


def test_resume_writes_the_resolved_config(trained):
    recorded = json.loads((trained[0] / "config.json").read_text())
    assert recorded["model"]["unet"]["nf"] == 8 and recorded["training"]["num_train_steps"] == 6


# --- the config, checked before compute -------------------------------------------------------

@pytest.mark.parametrize("override, expected", [
    ("--config.sampling.method=nonsense", "Unknown sampling.method='nonsense'"),
    ("--config.training.num_train_steps=-5", "config.training.num_train_steps=-5 must be >= 1"),
    ("--config.mesh.data=3", "needs 3 devices but 1 are available"),
    ("--config.training.batch_size=10", "config.training.batch_size=10"),
    ("--config.sampling.time_grid=warped", "Unknown sampling.time_grid='warped'"),
    ("--config.data.image_size=12", "does not match 'digits'"),
    ("--config.data.dataset=cifar100x", "closest: cifar100"),
    ("--config.eval.checkpoints=newest", "is not a checkpoint selection"),
])
def test_bad_configs_fail_before_data_or_compilation(tmp_path, override, expected):
    extra = ["--config.training.microbatches=3"] if "batch_size" in override else []
    result = run_cli(TEST_CONFIG, f"--workdir={tmp_path}", override, *extra, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert expected in line, line
    assert "Traceback" not in result.stderr and "Compiled" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()
    assert len(line) < 600  # no TFDS catalogue dump


@pytest.mark.parametrize("mode, key, value, expected", [
    ("sample", "labels", "grid", "sampling.labels='grid' is set, but this model is unconditional"),
    ("sample", "guidance_scale", 3.0, "sampling.guidance_scale=3.0 is set"),
    ("eval", "guidance_scale", 1.5, "sampling.guidance_scale=1.5 is set"),
])
def test_conditioning_an_unconditional_model_is_refused(digits_config, mode, key, value,
                                                         expected):
    from diffjax.modes import preflight

    config = digits_config("test")
    config.sampling[key] = value
    with pytest.raises(preflight.ConfigError, match=expected):
        preflight.validate(config, mode)
    config = digits_config("test")
    config.eval.sweep = "sampling.guidance_scale=1,2"
    with pytest.raises(preflight.ConfigError, match="guidance_scale=2"):
        preflight.validate(config, "eval")


def test_a_conditional_model_on_data_without_labels_is_an_error(digits_config, monkeypatch):
    from diffjax import data as data_lib
    from diffjax.modes import preflight

    class Unlabelled:
        class info:
            splits = {"train": None}
            features = {}

    monkeypatch.setattr(data_lib, "dataset_builder", lambda data_config: Unlabelled)
    config = digits_config("test,cond")
    with pytest.raises(preflight.ConfigError, match="needs class labels.*has none"):
        preflight.check_data(config, "train")


# --- disk and path faults ----------------------------------------------------------------------

def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "not_a_folder"
    target.write_text("x")
    result = run_cli(TEST_CONFIG, f"--workdir={target}", check=False)
    assert result.returncode == 1
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert "is a file, not a folder" in line and "Traceback" not in result.stderr


def test_a_data_dir_that_is_a_file_names_the_key(digits_config, tmp_path):
    from diffjax.data import DataError, dataset_builder

    target = tmp_path / "tfds"
    target.write_text("x")
    for data_dir, problem in ((target, "is a file, not a folder"),
                              (target / "sub", "is inside the file")):
        config = digits_config("test")
        config.data.data_dir = str(data_dir)
        with pytest.raises(DataError) as error:
            dataset_builder(config.data)
        message = str(error.value)
        assert message.startswith(f"data.data_dir='{data_dir}' {problem}")
        assert "--config.data.data_dir" in message and "\n" not in message


def test_a_failed_save_keeps_older_checkpoints_and_is_one_line(trained, digits_config,
                                                                tmp_path, monkeypatch):
    """Fault injection in-process: Orbax's save raises ENOSPC for the step-9 checkpoint."""
    import orbax.checkpoint as ocp

    from diffjax.storage.checkpoints import CheckpointSaveError
    from diffjax.training.loop import train

    workdir = copy_of(trained, tmp_path)
    original = ocp.CheckpointManager.save

    def full_disk(self, step, *args, **kwargs):
        if step == 9:
            os.makedirs(os.path.join(self.directory, "9.orbax-checkpoint-tmp-1"), exist_ok=True)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
    config = digits_config("test")
    config.training.num_train_steps = 9
    with pytest.raises(CheckpointSaveError) as error:
        train(config, str(workdir))
    message = str(error.value)
    assert "could not write checkpoint 9" in message and "No space left on device" in message
    assert "newest complete checkpoint is step 6" in message and "\n" not in message
    # The older checkpoints are untouched and the partial save is gone ...
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    # ... and 6 is intact: the next run resumes from it.
    config.training.num_train_steps = 6
    monkeypatch.setattr(ocp.CheckpointManager, "save", original)
    assert train(config, str(workdir))["step"] == 6


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _unshare_works(), reason="no private mount namespaces "
                                  "here (unshare -rm); the in-process fault injection covers "
                                  "the save path")


def _in_tmpfs(script: str, size: str, tmp_path) -> subprocess.CompletedProcess:
    """Runs `script` (bash) with $DISK a fresh tmpfs of `size`, in a private mount namespace."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = f"mount -t tmpfs -o size={size} tmpfs {disk} && export DISK={disk} || exit 99\n{script}"
    return subprocess.run(["unshare", "-rm", "bash", "-c", command], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})


@needs_mounts
def test_a_disk_too_small_for_a_checkpoint_fails_before_compute(tmp_path):
    result = _in_tmpfs(f'"$PYTHON" -m diffjax.main {TEST_CONFIG} --workdir=$DISK/run '
                       f'--config.model.unet.nf=64', "1m", tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert "free but one checkpoint of this state needs about" in line
    assert "Compiled" not in result.stderr and "Traceback" not in result.stderr


# Another writer fills the disk once checkpoint 3 is complete, leaving less than one checkpoint
# (which takes 1.4-2.3 MB here, mostly Orbax metadata) but more than diffjax's estimate of one
# (1.1 x the state's 0.8 MB): the room check before each save passes and the write itself fails.
# (Sizing the disk for exactly one checkpoint instead is flaky: OCDBT's data files vary in size.)
_FILL_AFTER_CHECKPOINT_3 = """
"$PYTHON" -m diffjax.main {config} --workdir=$DISK/run --config.training.num_train_steps=30 \
    --config.training.max_checkpoints_to_keep=100 &
run=$!
while [ ! -d $DISK/run/checkpoints/3 ] && kill -0 $run 2>/dev/null; do sleep 0.02; done
free=$(df --output=avail -B1 $DISK | tail -1)
fallocate -l $((free - 1024 * 1024)) $DISK/other_writer
wait $run
echo "rc=$?"
ls $DISK/run/checkpoints
"""


@needs_mounts
def test_a_disk_that_fills_during_training_ends_in_one_line_keeping_the_older_checkpoint(
        tmp_path):
    result = _in_tmpfs(_FILL_AFTER_CHECKPOINT_3.format(config=TEST_CONFIG), "16m", tmp_path)
    assert "rc=1" in result.stdout, (result.stdout, result.stderr[-3000:])
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    # A save already under way when the disk filled may still complete: the newest complete
    # checkpoint is 3 or a later one, and the message names the one that is there.
    complete = sorted(int(n) for n in result.stdout.split("rc=1", 1)[1].split())
    assert complete[0] == 3 and complete == list(range(3, complete[-1] + 1, 3)), complete
    assert f"could not write checkpoint {complete[-1] + 3}" in line, line
    assert f"newest complete checkpoint is step {complete[-1]}" in line, line
    assert "No space left on device" in line, line
    assert result.stderr.count("Traceback") == 0, result.stderr[-3000:]


@needs_mounts
def test_an_unwritable_data_dir_is_one_line_naming_the_key(tmp_path):
    """digits is prepared on first use: a read-only data.data_dir fails before TFDS starts."""
    script = (f'mount -o remount,ro $DISK && "$PYTHON" -m diffjax.main {TEST_CONFIG} '
              f'--workdir={tmp_path}/run --mode=fid_stats --config.data.data_dir=$DISK/tfds; '
              f'echo "rc=$?"')
    result = _in_tmpfs(script, "1m", tmp_path)
    assert "rc=1" in result.stdout, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert "data.data_dir=" in line and "is not writable" in line, line
    assert "--config.data.data_dir" in line
    assert "Downloading and preparing" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@needs_mounts
def test_a_read_only_workdir_fails_before_compute_for_train_and_sample(trained, tmp_path):
    source = trained[0]
    script = (f'cp -r {source} $DISK/run && mount -o remount,ro $DISK && '
              f'"$PYTHON" -m diffjax.main {TEST_CONFIG} --workdir=$DISK/run '
              f'--config.training.num_train_steps=9; echo "train rc=$?"; '
              f'"$PYTHON" -m diffjax.main {TEST_CONFIG} --workdir=$DISK/run --mode=sample; '
              f'echo "sample rc=$?"')
    result = _in_tmpfs(script, "16m", tmp_path)
    assert "train rc=1" in result.stdout and "sample rc=1" in result.stdout, result.stderr[-3000:]
    lines = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert len(lines) == 2 and all("is not writable" in x for x in lines)
    assert "Read-only file system" in lines[0]
    assert "Traceback" not in result.stderr and "Compiled" not in result.stderr


@needs_mounts
def test_read_only_modes_check_their_output_folder_before_compute(trained, tmp_path):
    """Issue #24: --mode=eval on a read-only workdir ended in TensorFlow's 47-line
    PermissionDeniedError; likelihood and fid_stats computed for minutes, then failed on the
    write. Each now names the folder it writes and the fix in one line, before computing."""
    source = trained[0]
    modes = {"eval": "--config.eval.reference_split='test[:40]'",
             "likelihood": "--config.eval.likelihood_max_examples=8",
             "fid_stats": "--config.eval.reference_split='test[:40]' "
                          "--config.eval.stats_dir=$DISK/stats"}
    script = f'cp -r {source} $DISK/run && mkdir $DISK/stats && mount -o remount,ro $DISK\n'
    for mode, extra in modes.items():
        script += (f'"$PYTHON" -m diffjax.main {TEST_CONFIG} --workdir=$DISK/run --mode={mode} '
                   f'{extra}; echo "{mode} rc=$?"\n')
    result = _in_tmpfs(script, "16m", tmp_path)
    for mode in modes:
        assert f"{mode} rc=1" in result.stdout, (mode, result.stdout, result.stderr[-3000:])
    lines = [x for x in result.stderr.splitlines() if x.startswith("diffjax: error")]
    assert len(lines) == 3, lines
    disk = str(tmp_path / "disk")
    assert f"the evaluation folder {disk}/run/eval is not writable (Read-only file system); " \
           f"make it writable, or copy the run" in lines[0], lines[0]
    assert f"the evaluation folder {disk}/run/eval is not writable" in lines[1], lines[1]
    assert f"the FID statistics folder {disk}/stats is not writable" in lines[2] and \
        "--config.eval.stats_dir" in lines[2], lines[2]
    assert "Traceback" not in result.stderr and "PermissionDenied" not in result.stderr
    assert "Inception features" not in result.stderr and "Likelihood of" not in result.stderr
