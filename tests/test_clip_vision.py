"""diffjax's CLIPModel (vision tower, projections) and CLIP score against transformers.

The reference is tests/fixtures/text/clip_model_tiny/ (tools/make_clip_model_fixture.py): a
tiny CLIPModel with every parameter random, its image and text features in float64, the
CLIPImageProcessor outputs (PIL backend) and torchmetrics' CLIP score formula.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from diffjax.text import clip_vision

FOLDER = os.path.join(REPO, "tests", "fixtures", "text", "clip_model_tiny")
REF = dict(np.load(os.path.join(FOLDER, "reference.npz")))


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture(scope="module")
def model():
    return clip_vision.read_clip_model(FOLDER)


def test_both_towers_match_transformers_in_float64(model):
    module, params, scale = model
    assert scale == pytest.approx(2.3)
    with jax.enable_x64(True):
        import dataclasses

        module64 = dataclasses.replace(module, dtype=jnp.float64)
        params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
        image = module64.apply({"params": params64}, np.asarray(REF["pixel_values"], np.float64),
                               method=clip_vision.CLIPModel.image_embeds)
        last, _ = module64.apply({"params": params64},
                                 np.asarray(REF["pixel_values"], np.float64),
                                 method=lambda m, x: m.vision_model(x))
        text = module64.apply({"params": params64}, REF["input_ids"], REF["attention_mask"],
                              method=clip_vision.CLIPModel.text_embeds)
    # Measured ~1e-8: jax.nn.dot_product_attention's softmax runs in float32.
    assert rel_l2(last, REF["vision_last_f64"]) < 1e-5
    assert rel_l2(image, REF["image_embeds_f64"]) < 1e-5
    assert rel_l2(text, REF["text_embeds_f64"]) < 1e-5


def test_preprocessing_is_the_pil_clip_image_processor():
    for name in ("grey", "color"):
        ours = clip_vision.preprocess(REF[f"images_uint8_{name}"][None], 32)[0]
        np.testing.assert_allclose(ours, REF[f"processed_pil_{name}"], atol=1e-5, err_msg=name)
    # transformers 5's default (torchvision) resize differs; the fixture records by how much.
    gap = np.abs(REF["processed_torchvision_color"] - REF["processed_pil_color"]).max()
    assert gap > 1e-3


def test_clip_score_is_torchmetrics_formula():
    scorer = clip_vision.CLIPScorer(FOLDER, batch_size=4)
    images = [REF["images_uint8_grey"], REF["images_uint8_color"]]
    captions = [str(c) for c in REF["captions"]]
    pairs = np.concatenate([scorer.pair_scores(image[None], [caption])
                            for image, caption in zip(images, captions)])
    np.testing.assert_allclose(pairs, REF["pair_scores"], atol=1e-3)
    assert scorer.score(images[0][None], captions[:1]) == pytest.approx(
        max(float(REF["pair_scores"][0]), 0.0), abs=1e-3)


def test_a_text_only_folder_is_refused_in_one_line(tmp_path):
    import shutil

    shutil.copytree(os.path.join(REPO, "tests", "fixtures", "text", "sd_tiny", "text_encoder"),
                    tmp_path / "te")
    with pytest.raises(ValueError, match="not a CLIPModel config"):
        clip_vision.read_clip_model(str(tmp_path / "te"))
