"""Latent datasets: DiT's preprocessing, the ArrayRecord writer (resume, processes), the reader.

Encodes a few dozen 8x8 digits with a tiny random-init AutoencoderKL (downsampling 2).
"""

import os

import grain
import jax
import numpy as np
import pytest
from conftest import REPO

from diffjax.config.schema import base_config
from diffjax.data.pipeline import DataError
from diffjax.latents import (LatentSource, build_autoencoder, check_latent_metadata,
                             diffusers_weights, finalize, make_plan, preprocessing,
                             read_latent_batch, read_metadata, records, sample_model_latents,
                             write_shards)
from diffjax.latents.vae import VAE
from diffjax.storage import filesystem

NUM_EXAMPLES = 30
SHARD = 8  # 4 shards: 8, 8, 8, 6 examples
BATCH = 3  # batches do not divide shards: the writer pads and drops


class ListSource:
    """A random-access source like TFDS's: records {"image", "label"}."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": self.labels[i]}

    def __getitems__(self, keys):
        return [self[i] for i in keys]


def digits_config():
    config = base_config()
    config.data.num_channels = 1
    a = config.autoencoder
    a.block_out_channels, a.layers_per_block, a.latent_channels = (8, 16), 1, 4
    a.norm_num_groups = 4
    return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images[:NUM_EXAMPLES] * 255 / 16).astype(np.uint8)[..., None]
    source = ListSource(images, digits.target[:NUM_EXAMPLES].astype(np.int64))
    config = digits_config()
    module = build_autoencoder(config)
    rng = np.random.default_rng(0)  # numpy: compiling flax's init costs tens of seconds on a CPU
    params = jax.tree.map(
        lambda leaf: (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]) or 4)
                      ).astype(np.float32), diffusers_weights.abstract_params(module))
    vae = VAE(module, params, scale=0.5, shift=0.1, batch_size=BATCH * 2)
    plan = make_plan(config, vae, "train", len(source), examples_per_shard=SHARD)
    root = tmp_path_factory.mktemp("latents")
    clean = str(root / "clean")
    written = write_shards(clean, source, vae.encode, plan, batch_size=BATCH)
    metadata = finalize(clean)
    return dict(source=source, config=config, vae=vae, plan=plan, root=root, clean=clean,
                written=written, metadata=metadata)


def shard_bytes(directory):
    return {name: filesystem.read_bytes(os.path.join(directory, name))
            for name in filesystem.listdir(directory) if name.endswith(".array_record")}


def test_center_crop_matches_dit():
    reference = np.load(os.path.join(REPO, "tests", "fixtures", "vae_center_crop.npz"))
    cases = sorted(int(k.split("_")[1]) for k in reference if k.startswith("input_"))
    assert len(cases) == 6
    for k in cases:
        out = preprocessing.center_crop(reference[f"input_{k}"], int(reference[f"size_{k}"]))
        np.testing.assert_array_equal(out, reference[f"output_{k}"], err_msg=f"case {k}")


def test_views_and_range():
    images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1) * 7
    x = preprocessing.prepare_batch(list(images), 4, 2)
    assert x.shape == (4, 4, 4, 1) and x.dtype == np.float32
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6)  # noqa: E731
    close(x[0], images[0] / 127.5 - 1)
    close(x[1], images[0, :, ::-1] / 127.5 - 1)  # its mirror comes next
    close(x[2], images[1] / 127.5 - 1)
    assert preprocessing.to_vae_range(np.array([0, 255], np.uint8)).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="data.latent_views=3"):
        preprocessing.views(images, 3)


def test_sample_model_latents_is_a_pure_function_of_the_rng():
    mean = np.random.default_rng(0).normal(size=(2, 4, 4, 4)).astype(np.float16)
    std = np.full((2, 4, 4, 4), 0.5, np.float16)
    rng = jax.random.key(7)
    z = sample_model_latents(rng, mean, std, scale=0.18215, shift=0.1)
    assert z.dtype == np.float32
    noise = jax.random.normal(rng, mean.shape, np.float32)
    expected = (mean.astype(np.float32) + 0.5 * np.asarray(noise) - 0.1) * 0.18215
    np.testing.assert_allclose(z, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(z, sample_model_latents(rng, mean, std, scale=0.18215,
                                                          shift=0.1))


def test_round_trip_records_views_labels(setup):
    source, vae, metadata = setup["source"], setup["vae"], setup["metadata"]
    assert setup["written"] == [0, 1, 2, 3]
    assert metadata["num_records"] == 2 * NUM_EXAMPLES
    assert metadata["latent_shape"] == [4, 4, 4]
    assert (metadata["scale"], metadata["shift"]) == (0.5, 0.1)
    assert metadata["vae_fingerprint"] == vae.fingerprint
    assert metadata["shards"] == [records.shard_name(k, 4) for k in range(4)]
    latents = LatentSource(setup["clean"])
    assert len(latents) == 2 * NUM_EXAMPLES
    x = preprocessing.prepare_batch(list(source.images), 8, 2)
    mean, std = (np.asarray(a) for a in vae.encode(x))
    for r in (0, 1, 17, 2 * NUM_EXAMPLES - 1):
        record = latents[r]
        assert (record["index"], record["view"]) == (r // 2, r % 2)
        assert record["label"] == source.labels[r // 2]
        assert record["mean"].dtype == np.float16 and record["mean"].shape == (4, 4, 4)
        # float16 storage: rounding error at most 2^-11 of each value (normal range).
        np.testing.assert_allclose(record["mean"], mean[r], rtol=2.0**-11, atol=1e-6)
        np.testing.assert_allclose(record["std"], std[r], rtol=2.0**-11, atol=1e-6)
    batch = read_latent_batch(latents, np.array([5, 0, 59]))
    assert batch["mean"].shape == (3, 4, 4, 4) and batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"], source.labels[[2, 0, 29]])
    # The statistics describe posterior samples: Var(z) = Var(mean) + E[std^2].
    stored = read_latent_batch(latents, np.arange(len(latents)))
    m, s = stored["mean"].astype(np.float64), stored["std"].astype(np.float64)
    np.testing.assert_allclose(metadata["latent_stats"]["std"],
                               np.sqrt(m.var() + np.mean(s**2)), rtol=1e-6)


def test_grain_reads_the_source(setup):
    latents = LatentSource(setup["clean"])
    dataset = grain.MapDataset.source(latents)
    np.testing.assert_array_equal(dataset[3]["mean"], latents[3]["mean"])
    batches = (grain.MapDataset.range(len(latents)).shuffle(seed=0).batch(8)
               .map(lambda indices: read_latent_batch(latents, indices)))
    first = batches[0]
    assert first["mean"].shape == (8, 4, 4, 4) and first["std"].shape == (8, 4, 4, 4)


def test_processes_write_the_same_files(setup):
    directory = str(setup["root"] / "two_processes")
    for process in (0, 1):
        written = write_shards(directory, setup["source"], setup["vae"].encode, setup["plan"],
                               batch_size=BATCH, process_index=process, process_count=2)
        assert written == [process, process + 2]
    assert finalize(directory) == setup["metadata"]
    assert shard_bytes(directory) == shard_bytes(setup["clean"])


def test_interrupted_write_resumes(setup):
    directory = str(setup["root"] / "interrupted")
    calls = {"n": 0}

    def crashing_encode(x):
        calls["n"] += 1
        if calls["n"] == 5:  # shard 0 takes 3 batches: this dies inside shard 1
            raise KeyboardInterrupt("preempted")
        return setup["vae"].encode(x)

    with pytest.raises(KeyboardInterrupt):
        write_shards(directory, setup["source"], crashing_encode, setup["plan"],
                     batch_size=BATCH)
    names = filesystem.listdir(directory)
    assert records.shard_name(0, 4) in names and records.shard_name(1, 4) not in names
    assert any(n.endswith(".incomplete") for n in names)  # half-written, under another name
    with pytest.raises(DataError, match="incomplete .*--mode=encode_latents"):
        read_metadata(directory)
    with pytest.raises(DataError, match="3 of 4 shards .* not written"):
        finalize(directory)
    written = write_shards(directory, setup["source"], setup["vae"].encode, setup["plan"],
                           batch_size=BATCH)
    assert written == [1, 2, 3]
    assert not any(n.endswith(".incomplete") for n in filesystem.listdir(directory))
    assert finalize(directory) == setup["metadata"]
    assert shard_bytes(directory) == shard_bytes(setup["clean"])
    assert write_shards(directory, setup["source"], setup["vae"].encode, setup["plan"]) == []


def test_resume_refuses_another_configuration(setup):
    import dataclasses

    other = dataclasses.replace(setup["plan"], storage_dtype="float32")
    with pytest.raises(DataError, match="storage_dtype: 'float16' there, 'float32' now.*"
                                        "latent_dir"):
        write_shards(setup["clean"], setup["source"], setup["vae"].encode, other)


def test_metadata_check_names_the_key(setup):
    metadata, vae = setup["metadata"], setup["vae"]
    config = digits_config()
    config.data.latent_dir = setup["clean"]
    check_latent_metadata(metadata, config, vae=vae)
    config.autoencoder.scale = 0.5
    check_latent_metadata(metadata, config, vae=vae)

    def fails(match, **changes):
        bad = digits_config()
        for key, value in changes.items():
            section, field = key.split("__")
            setattr(getattr(bad, section), field, value)
        with pytest.raises(DataError, match=match) as info:
            check_latent_metadata(metadata, bad)
        assert "\n" not in str(info.value)

    fails("--config.data.image_size=8", data__image_size=16)
    fails("--config.data.dataset=digits", data__dataset="cifar10")
    fails("--config.autoencoder.latent_channels=4", autoencoder__latent_channels=8)
    fails("--config.autoencoder.block_out_channels", autoencoder__block_out_channels=(8, 8, 16))
    fails("--config.autoencoder.scale=0.5", autoencoder__scale=0.18215)
    fails("--config.autoencoder.shift=0.1", autoencoder__shift=0.0)
    other = VAE(vae.module, jax.tree.map(lambda p: p + 1, vae.params), scale=0.5, shift=0.1)
    with pytest.raises(DataError, match="another VAE"):
        check_latent_metadata(metadata, config, vae=other)
    with pytest.raises(DataError, match="does not hold a latent dataset"):
        LatentSource(str(setup["root"] / "nothing"))
