"""Every file diffjax writes into a workdir goes through `diffjax.storage.filesystem`, so gs:// works.

The gs:// tests run diffjax's own writers (reports, sample chunks, grids, the config record, the
workdir lock) against a fake object store: etils' `mock_epath` routes every gs:// operation of
the path layer to a local folder, and would fail loudly if a writer bypassed it (a bypass would
try the network, or create a folder literally named "gs:"). Orbax checkpoints and TensorBoard
events go to gs:// through tensorstore and tf.io.gfile, whose own tests cover that.
"""

from __future__ import annotations

import contextlib
import json
import os
import re

import numpy as np
import pytest
from conftest import REPO


@contextlib.contextmanager
def fake_gcs(root):
    """gs://BUCKET/PATH -> ROOT/BUCKET/PATH for every operation of the path layer."""
    from unittest import mock

    from etils.epath import gpath, testing

    def local(path):
        path = os.fspath(path)
        return os.path.join(str(root), path[len("gs://"):]) if path.startswith("gs://") else path

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def two(fn, path, destination, *args, **kwargs):
        return fn(local(path), local(destination), *args, **kwargs)

    def listdir(fn, path):
        return fn(local(path))

    # With TensorFlow installed, epath sends gs:// to tf.io.gfile whatever its backend table
    # says; pretending TF is absent makes mock_epath's table the one that is used.
    with mock.patch.object(gpath, "_is_tf_installed", lambda: False), \
            testing.mock_epath(open=one, exists=one, isdir=one, listdir=listdir, makedirs=one,
                               mkdir=one, remove=one, rmtree=one, stat=one, glob=one, walk=one,
                               rename=two, replace=two, copy=two):
        yield


def test_the_path_layer_round_trips_on_a_fake_bucket(tmp_path):
    from diffjax.storage import filesystem as fs

    with fake_gcs(tmp_path):
        path = fs.join("gs://bucket/run", "eval", "6", "report.json")
        assert not fs.is_local(path) and fs.absolute("gs://bucket/run/") == "gs://bucket/run"
        fs.write_atomic(path, json.dumps({"fid": 1.5}))
        assert json.loads(fs.read_text(path)) == {"fid": 1.5}
        assert fs.listdir("gs://bucket/run/eval/6") == ["report.json"]
        fs.rename(path, "gs://bucket/run/eval/6/moved.json")
        assert fs.exists("gs://bucket/run/eval/6/moved.json") and not fs.exists(path)
        fs.remove("gs://bucket/run/eval")
        assert not fs.exists("gs://bucket/run/eval")
    assert (tmp_path / "bucket" / "run").is_dir()
    assert not os.path.exists("gs:")


def test_reports_chunks_grids_and_config_record_work_on_gs(tmp_path, digits_config):
    from diffjax.evaluation.reports import ReportStore
    from diffjax.outputs import images
    from diffjax.storage import filesystem as fs, workdir

    run = "gs://bucket/run"
    with fake_gcs(tmp_path):
        store = ReportStore(fs.join(run, "eval"))
        chunks = store.chunks(6, "setting", {"sampler": "pc"})
        chunk = {"images": np.zeros((4, 8, 8, 1), np.uint8), "nfe": np.int64(5)}
        chunks.save(0, chunk)
        (loaded,) = chunks.load_prefix([4, 4])
        np.testing.assert_array_equal(loaded["images"], chunk["images"])
        store.write(6, "setting", {"fid": 2.0})
        assert store.read(6, "setting") == {"fid": 2.0}
        images.save_png(store.grid_path(6, "setting"), np.zeros((16, 16, 1), np.uint8))
        workdir.record_config(run, digits_config("test"))
        assert workdir.recorded_config(run)["data"]["dataset"] == "digits"
        store.remove_orphans([3])
        assert not fs.exists(chunks.directory)
    assert (tmp_path / "bucket" / "run" / "eval" / "6" / "setting.png").exists()
    assert (tmp_path / "bucket" / "run" / "config.json").exists()


def test_the_workdir_lock_works_on_an_object_store(tmp_path, monkeypatch):
    from diffjax.storage import workdir_lock

    monkeypatch.setattr(workdir_lock, "_OBJECT_STORE_SETTLE_S", 0.0)
    with fake_gcs(tmp_path):
        with workdir_lock.WorkdirLock("gs://bucket/run"):
            with pytest.raises(workdir_lock.WorkdirBusyError, match="gs://bucket/run"):
                workdir_lock.WorkdirLock("gs://bucket/run").acquire()
        assert not (tmp_path / "bucket" / "run" / ".diffjax.lock").exists()


# Modules that may touch local files directly, and why.
LOCAL_ONLY = {
    "diffjax/storage/filesystem.py": "the path layer itself",
    "diffjax/storage/workdir_lock.py": "O_EXCL creation and /proc checks exist only on local disks",
    "diffjax/storage/workdir.py": "free-space and file-type checks of local disks",
    "diffjax/runtime/local_processes.py": "reads /proc",
    "diffjax/storage/torch_files.py": "reads a local .pt file given by the user",
    "diffjax/evaluation/inception_weights.py": "the weights cache in the home directory",
    "diffjax/evaluation/fetch_weights.py": "pip",
    "diffjax/parallel/peers.py": "reads the local checkpoint listing after a lost process",
    "diffjax/data/digits/digits_dataset_builder.py": "TFDS builds local datasets",
}
# In-memory buffers (np.savez(buffer), np.load(io.BytesIO(...))) are fine: their bytes go
# through the path layer.
FORBIDDEN = re.compile(r"(?<![\w.])open\(|os\.makedirs|os\.mkdir\(|os\.remove|os\.replace|"
                       r"os\.rename|shutil\.|tempfile\.|np\.savez?\((?!buffer)|"
                       r"np\.load\((?!io\.BytesIO)|\.save\(path")


def test_no_module_bypasses_the_path_layer():
    offenders = []
    for folder, _, names in os.walk(os.path.join(REPO, "diffjax")):
        for name in names:
            if not name.endswith(".py"):
                continue
            path = os.path.relpath(os.path.join(folder, name), REPO)
            if path in LOCAL_ONLY:
                continue
            for number, line in enumerate(open(os.path.join(REPO, path)), 1):
                code = line.split("#", 1)[0]
                if FORBIDDEN.search(code):
                    offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, "file operations outside diffjax.storage.filesystem:\n" + "\n".join(offenders)
