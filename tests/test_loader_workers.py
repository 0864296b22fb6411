"""Grain worker processes, device prefetch, generic records: the stream and resume stay exact."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffjax.data import DevicePrefetch, TrainLoader
from diffjax.data.pipeline import array_fields


def digits_config(**overrides):
    config = dict(dataset="digits", data_dir="", split="train", image_size=8, num_channels=1,
                  num_workers=0)
    return ml_collections.ConfigDict({**config, **overrides})


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for name in w:
            np.testing.assert_array_equal(np.asarray(g[name]), np.asarray(w[name]))


@pytest.fixture(scope="module")
def threaded_stream():
    """Batches 0..57 (> 1 epoch of 1617 / 32) of the threaded loader, the reference stream."""
    with TrainLoader(digits_config(), global_batch_size=32, seed=3) as loader:
        return take(loader, 58)


def test_workers_give_the_threaded_stream_and_resume_exactly(threaded_stream):
    # 2 workers, 52 batches: each worker makes whole batches across the epoch boundary (50.5).
    with TrainLoader(digits_config(num_workers=2), global_batch_size=32, seed=3) as loader:
        assert loader.num_workers == 2
        assert_same_batches(take(loader, 52), threaded_stream[:52])
        state = loader.get_state()
        assert state == {"next_index": 52}
        loader.set_state({"next_index": 5})  # restarts the workers at batch 5
        assert_same_batches(take(loader, 2), threaded_stream[5:7])
    # The state does not depend on the number of workers: threads resume a workers' state.
    with TrainLoader(digits_config(), global_batch_size=32, seed=3) as resumed:
        resumed.set_state(state)
        assert_same_batches(take(resumed, 3), threaded_stream[52:55])


def test_set_state_mid_stream_restarts_at_that_batch(threaded_stream):
    with TrainLoader(digits_config(), global_batch_size=32, seed=3) as loader:
        take(loader, 4)
        loader.set_state({"next_index": 50})  # older checkpoints hold Grain's same format
        assert_same_batches(take(loader, 2), threaded_stream[50:52])
        assert loader.get_state() == {"next_index": 52}


def test_device_prefetch_counts_only_batches_handed_out(threaded_stream):
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    loader = TrainLoader(digits_config(), global_batch_size=32, seed=3)
    with DevicePrefetch(loader, sharding, size=3) as prefetch:
        got = take(prefetch, 5)
        assert isinstance(got[0]["image"], jax.Array) and got[0]["image"].sharding == sharding
        assert_same_batches(got, threaded_stream[:5])
        assert loader.get_state() == {"next_index": 7}  # two more already in flight
        state = prefetch.get_state()
        assert state == {"next_index": 5}
        prefetch.set_state({"next_index": 2})
        assert_same_batches(take(prefetch, 2), threaded_stream[2:4])
    resumed = DevicePrefetch(TrainLoader(digits_config(), global_batch_size=32, seed=3),
                             sharding, size=2)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 2), threaded_stream[5:7])
    resumed.close()
    with pytest.raises(ValueError, match="data.prefetch"):
        DevicePrefetch(loader, sharding, size=0)


class LatentSource:
    """In-memory records shaped like a latent dataset: no "image", float16 mean/std, an id."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.mean = rng.normal(size=(n, 4, 4, 4)).astype(np.float16)
        self.std = np.abs(rng.normal(size=(n, 4, 4, 4))).astype(np.float16)

    def __len__(self):
        return len(self.mean)

    def __getitem__(self, i):
        return {"mean": self.mean[i], "std": self.std[i], "label": np.int64(i % 10),
                "id": f"record-{i}"}

    def __getitems__(self, indices):
        return [self[i] for i in indices]


def test_records_other_than_images_pass_through_unchanged():
    source = LatentSource(40)
    assert array_fields(source[0]) == ("label", "mean", "std")  # the string id is left out
    config = ml_collections.ConfigDict({"num_workers": 0})
    with TrainLoader(config, global_batch_size=8, seed=1, source=source) as loader:
        batch = next(loader)
        assert sorted(batch) == ["label", "mean", "std"]
        assert batch["mean"].dtype == np.float16 and batch["mean"].shape == (8, 4, 4, 4)
        assert batch["label"].dtype == np.int32
        order = np.asarray([int(np.argmax((source.mean == m).all(axis=(1, 2, 3))))
                            for m in batch["mean"]])
        np.testing.assert_array_equal(batch["label"], order % 10)
        np.testing.assert_array_equal(batch["std"], source.std[order])
    with TrainLoader(config, global_batch_size=8, seed=1, source=source,
                     fields=("mean",)) as only_mean:
        assert sorted(next(only_mean)) == ["label", "mean"]  # batches always carry a label
