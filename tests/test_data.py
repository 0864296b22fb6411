"""The embedded digits TFDS builder and the deterministic, checkpointable Grain loader."""

import numpy as np
import pytest

import ml_collections

from diffjax.data import DataError, TrainLoader, dataset_builder, iterate_split
from diffjax.data.digits.digits_dataset_builder import load_digit_images
from diffjax.data.pixels import from_model_range, log_density_offset_bits, to_model_range


def digits_config(**overrides):
    config = dict(dataset="digits", data_dir="", split="train", image_size=8, num_channels=1)
    return ml_collections.ConfigDict({**config, **overrides})


def test_builder_is_a_real_tfds_dataset():
    builder = dataset_builder(digits_config())
    assert builder.info.splits["train"].num_examples == 1617
    assert builder.info.splits["test"].num_examples == 180
    assert builder.info.features["label"].num_classes == 10
    images, labels = load_digit_images()
    test_images = np.concatenate([b["image"] for b in iterate_split(digits_config(), "test", 64)])
    np.testing.assert_array_equal(test_images, images[::10])  # every 10th image is `test`
    assert test_images.max() == 255 and test_images.dtype == np.uint8


def test_loader_is_deterministic_and_resumes_exactly():
    first = TrainLoader(digits_config(), global_batch_size=32, seed=3)
    batches = [next(first) for _ in range(70)]  # > 1 epoch of 1617 / 32
    state = first.get_state()
    following = next(first)
    again = TrainLoader(digits_config(), global_batch_size=32, seed=3)
    np.testing.assert_array_equal(next(again)["image"], batches[0]["image"])
    resumed = TrainLoader(digits_config(), global_batch_size=32, seed=3)
    resumed.set_state(state)
    np.testing.assert_array_equal(next(resumed)["image"], following["image"])
    # Epochs are reshuffled: epoch 2 does not repeat epoch 1's order.
    assert not np.array_equal(batches[0]["label"], batches[51]["label"])


def test_processes_read_disjoint_slices_of_the_same_global_batch():
    whole = TrainLoader(digits_config(), global_batch_size=24, seed=0)
    parts = [TrainLoader(digits_config(), global_batch_size=24, seed=0, process_index=i,
                         process_count=3) for i in range(3)]
    for _ in range(5):
        expected = next(whole)
        got = [next(p) for p in parts]
        np.testing.assert_array_equal(np.concatenate([g["image"] for g in got]), expected["image"])
        np.testing.assert_array_equal(np.concatenate([g["label"] for g in got]), expected["label"])


def test_errors_name_the_fix():
    with pytest.raises(DataError, match="image_size=8"):
        TrainLoader(digits_config(image_size=32), global_batch_size=8, seed=0)
    with pytest.raises(DataError, match="multiple of 3"):
        TrainLoader(digits_config(), global_batch_size=8, seed=0, process_count=3)
    with pytest.raises(DataError, match="not a TFDS dataset"):
        dataset_builder(digits_config(dataset="no_such_dataset_xyz"))
    with pytest.raises(DataError, match="Split 'validation'"):
        next(iterate_split(digits_config(), "validation", 8))


def test_unprepared_catalog_dataset_says_how_to_build_it(tmp_path):
    with pytest.raises(DataError, match="tfds build mnist --file_format=array_record"):
        dataset_builder(digits_config(dataset="mnist", data_dir=str(tmp_path)))


def test_pixel_ranges_round_trip():
    import jax

    images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
    for centered in (True, False):
        x = to_model_range(images, jax.random.key(0), centered=centered, dequantize=True,
                           random_flip=False)
        low, high = (-1.0, 1.0) if centered else (0.0, 1.0)
        assert float(x.min()) >= low and float(x.max()) < high
        np.testing.assert_array_equal(from_model_range(x, centered=centered, dequantize=True), images)
    assert log_density_offset_bits(centered=False) == 8.0
    assert log_density_offset_bits(centered=True) == 7.0
