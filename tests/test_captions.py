"""Captioned data: the image-folder and TFDS routes, bad input as one line (or a counted skip),
the digits' captions, and the text cache written and read through the latent dataset format.

The text encoder is the tiny random BERT of tests/fixtures/text/bert_tiny (8 tokens here)."""

import json
import os

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from diffjax.config.schema import base_config
from diffjax.data import captions
from diffjax.data.digits import captions as digit_captions
from diffjax.data.pipeline import DataError
from diffjax.latents import (LatentSource, finalize, make_plan, read_metadata, text_cache,
                             write_shards)
from diffjax.text import load_text_encoder

BERT = os.path.join(REPO, "tests", "fixtures", "text", "bert_tiny")


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("bert", BERT, max_length=8)


def image_folder(root, names, size=8):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(root / name)
    return root


def test_metadata_jsonl_with_several_captions_per_image(tmp_path):
    folder = image_folder(tmp_path / "f", ["a.png", "sub/b.png"])
    (folder / "metadata.jsonl").write_text(
        json.dumps({"file_name": "a.png", "text": "a cat"}) + "\n" +
        json.dumps({"file_name": "sub/b.png", "text": ["a dog", "a puppy"]}) + "\n")
    source = captions.FolderCaptions(str(folder), num_channels=1)
    records = [source[i] for i in range(len(source))]
    assert [r["captions"] for r in records] == [["a cat"], ["a dog", "a puppy"]]
    assert records[0]["image"].shape == (8, 8, 1) and records[0]["image"].dtype == np.uint8
    assert list(captions.select_examples(source, skip=False).kept) == [0, 1]


def test_txt_captions_beside_images(tmp_path):
    folder = image_folder(tmp_path / "f", ["x.png"])
    (folder / "x.txt").write_text("first caption\n\nsecond caption\n")
    record = captions.FolderCaptions(str(folder), num_channels=3)[0]
    assert record["captions"] == ["first caption", "second caption"]
    assert record["image"].shape == (8, 8, 3)


def bad_folder(tmp_path):
    folder = image_folder(tmp_path / "bad", ["good.png", "nocap.png", "broken.png", "latin.png",
                                             "long.png"])
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "good.txt").write_text("a cat")
    (folder / "broken.txt").write_text("a broken image")
    (folder / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (folder / "long.txt").write_text("a very long caption with far too many words in it")
    return folder


@pytest.mark.parametrize("skip_others, expected", [
    (("broken", "latin", "long"), "nocap.png has no caption"),
    (("nocap", "latin", "long"), "broken.png cannot be decoded as an image"),
    (("nocap", "broken", "long"), "latin.txt is not UTF-8"),
    (("nocap", "broken", "latin"), "tokens, more than the 8 the text encoder reads"),
])
def test_each_bad_example_is_one_line_naming_the_file_and_the_fix(tmp_path, encoder,
                                                                  skip_others, expected):
    folder = bad_folder(tmp_path)
    for name in skip_others:
        os.remove(folder / f"{name}.png")
    source = captions.FolderCaptions(str(folder), num_channels=1)
    with pytest.raises(DataError) as error:
        captions.select_examples(source, skip=False,
                                 check_text=text_cache.length_checker(encoder))
    message = str(error.value)
    assert expected in message and "\n" not in message, message
    assert "skip_bad_examples" in message


def test_skipping_counts_every_bad_example(tmp_path, encoder, caplog):
    source = captions.FolderCaptions(str(bad_folder(tmp_path)), num_channels=1)
    selection = captions.select_examples(source, skip=True,
                                         check_text=text_cache.length_checker(encoder))
    assert [source.names[i] for i in selection.kept] == ["good.png"]
    assert len(selection.skipped) == 4
    assert "Skipped 4 of 5 examples" in caplog.text


def test_empty_folder_and_bad_metadata_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        captions.FolderCaptions(str(tmp_path / "empty"), 1)
    folder = image_folder(tmp_path / "m", ["a.png"])
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="metadata.jsonl line 2 is not JSON"):
        captions.FolderCaptions(str(folder), 1)
    (folder / "metadata.jsonl").write_text('{"file_name": "z.png", "text": "ok"}\n')
    with pytest.raises(DataError, match="not images in"):
        captions.FolderCaptions(str(folder), 1)


def test_tfds_caption_features():
    record = {"captions": {"text": np.asarray([b"a cat", "a dog".encode()], dtype=object)}}
    assert captions.captions_from_feature(record, "captions/text", "coco#0") == \
        ["a cat", "a dog"]
    assert captions.captions_from_feature({"caption": b"one"}, "caption", "x#1") == ["one"]
    with pytest.raises(DataError, match="has no feature 'captions/txt'"):
        captions.captions_from_feature(record, "captions/txt", "coco#0")
    with pytest.raises(DataError, match="coco#3: a caption is not UTF-8"):
        captions.captions_from_feature({"c": b"caf\xe9"}, "c", "coco#3")


def test_digit_captions_follow_the_pixels():
    image = np.zeros((2, 8, 8), np.float32)
    for row in range(8):  # a stroke leaning right: further right at the top
        image[0, row, 7 - row // 2 - 2] = 1.0
        image[1, row, row // 2 + 2] = 1.0
    _, slant = digit_captions.measure(image)
    assert slant[0] > 0 > slant[1]
    texts = digit_captions.caption_images((np.ones((6, 8, 8, 1)) * 40).astype(np.uint8),
                                          np.asarray([7] * 6), np.arange(6))
    assert all(len(t) == digit_captions.CAPTIONS_PER_IMAGE == len(set(t)) for t in texts)
    assert all("seven" in c or "7" in c for t in texts for c in t)
    assert not any("number" in c for t in texts for c in t)  # paraphrases stay unseen
    assert digit_captions.named_digit("number five") == 5
    assert digit_captions.named_digit("the digit 3, slanted to the right") == 3
    assert digit_captions.named_digit("a cat") is None
    assert digit_captions.named_digit("3 or 4") is None


class ListSource:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __getitems__(self, keys):
        return [self.records[i] for i in keys]


def text_config():
    config = base_config()
    config.data.text_encoder, config.data.text_encoder_folder = "bert", BERT
    config.data.text_max_length, config.data.captions_per_image = 8, 3
    config.data.cache_pixels, config.data.latent_views = True, 1
    return config


def test_text_cache_round_trip_and_resume_refusal(tmp_path, encoder):
    rng = np.random.default_rng(1)
    records = [{"image": (rng.random((8, 8, 1)) * 255).astype(np.uint8), "label": i,
                "captions": [f"cat {i}", "a dog", "a bird", "extra"][: 1 + i % 4]}
               for i in range(5)]
    config = text_config()
    directory = str(tmp_path / "cache")
    with config.unlocked():
        config.data.latent_dir = directory
    text = text_cache.text_plan(config, encoder, source="list", skipped=0)
    plan = make_plan(config, None, "train", 5, examples_per_shard=2, text=text)

    def text_fn(texts):
        return text_cache.encode_captions(encoder, texts, 3)

    write_shards(directory, ListSource(records), None, plan, batch_size=2, text_fn=text_fn)
    text_cache.write_null(directory, encoder)
    metadata = finalize(directory)
    assert metadata["text"]["encoder"]["fingerprint"] == encoder.fingerprint
    source = LatentSource(directory)
    row = source[4]
    np.testing.assert_array_equal(row["image"], records[4]["image"])
    assert row["captions"] == ["cat 4"] and row["num_captions"] == 1
    states, pooled, mask = encoder.encode(["cat 4"])
    np.testing.assert_allclose(row["text_states"][0], np.asarray(states[0]), atol=2e-3,
                               rtol=2e-3)  # float16 storage
    np.testing.assert_array_equal(row["text_mask"][0], mask[0])
    assert not row["text_mask"][1:].any()  # unused caption rows are zeros
    assert source[3]["num_captions"] == 3 and source[3]["captions"] == records[3]["captions"][:3]
    null = text_cache.null_conditioning(config)
    assert null["states"].shape == (8, 32) and null["mask"].sum() == 2  # [CLS] [SEP]
    with config.unlocked():
        config.training.caption_null = "zeros"
    assert not text_cache.null_conditioning(config)["states"].any()

    other = text_cache.text_plan(config, encoder, source="list", skipped=0)
    other["encoder"] = {**other["encoder"], "fingerprint": "0" * 16}
    changed = make_plan(config, None, "train", 5, examples_per_shard=2, text=other)
    with pytest.raises(DataError, match="another configuration .text"):
        write_shards(directory, ListSource(records), None, changed, batch_size=2,
                     text_fn=text_fn)
    text_cache.check_text(read_metadata(directory), config, encoder=encoder)
    with config.unlocked():
        config.data.text_max_length = 6
    with pytest.raises(DataError, match="text_max_length=8"):
        text_cache.check_text(read_metadata(directory), config)
