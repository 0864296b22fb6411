"""diffjax's CLIP text encoders against transformers' CLIPTextModel / WithProjection.

The reference is tests/fixtures/text/ (tools/make_text_fixtures.py): tiny random-weight
encoders in the three key layouts a folder can have (transformers 5's unprefixed CLIPTextModel;
a `text_model.`-prefixed CLIPTextModelWithProjection stored as model.fp16.safetensors; a legacy
eos_token_id=2 encoder with a position_ids buffer) and their outputs computed by transformers in
float64 and float32.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from safetensors.numpy import load_file, save_file

from diffjax.storage import model_folders as folders
from diffjax.text import clip, clip_weights, load_text_encoder, sdxl_context

FIXTURES = os.path.join(REPO, "tests", "fixtures", "text")
REF = dict(np.load(os.path.join(FIXTURES, "reference.npz")))
SD = os.path.join(FIXTURES, "sd_tiny")
MODELS = {  # fixture prefix -> (folder, subfolder)
    "te1": (SD, "text_encoder"),
    "te2": (SD, "text_encoder_2"),
    "legacy": (os.path.join(FIXTURES, "clip_legacy"), "text_encoder"),
}
F64_BOUND = 1e-5  # measured ~1e-8 (jax.nn.dot_product_attention's softmax is float32)
F32_BOUND = 2e-6  # measured ~3e-7 against transformers in float32


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.fixture(scope="module")
def loaded():
    return {name: clip_weights.read_folder(*where) for name, where in MODELS.items()}


def _outputs(module, params, ids, mask, dtype):
    module = dataclasses.replace(module, dtype=dtype)
    params = jax.tree.map(lambda x: np.asarray(x, dtype), params)

    @jax.jit
    def run(params, ids, mask):
        plain = module.apply({"params": params}, ids)
        masked = module.apply({"params": params}, ids, mask)
        return plain, masked, clip.clip_skip_context(module, params, plain, 1)

    return run(params, ids, mask)


def _check(prefix, output, suffix, bound):
    assert len(output.hidden_states) == REF[f"{prefix}_hidden_states_{suffix}"].shape[0]
    for i, state in enumerate(output.hidden_states):
        assert rel_l2(state, REF[f"{prefix}_hidden_states_{suffix}"][i]) < bound, i
    assert rel_l2(output.last_hidden_state, REF[f"{prefix}_last_hidden_state_{suffix}"]) < bound
    assert rel_l2(output.pooler_output, REF[f"{prefix}_pooler_output_{suffix}"]) < bound
    if f"{prefix}_text_embeds_{suffix}" in REF:
        assert rel_l2(output.text_embeds, REF[f"{prefix}_text_embeds_{suffix}"]) < bound
    else:
        assert output.text_embeds is None


@pytest.mark.parametrize("prefix", MODELS)
def test_every_output_matches_transformers_in_float64(loaded, prefix):
    module, params, _ = loaded[prefix]
    with jax.enable_x64(True):
        plain, masked, skipped = _outputs(module, params, REF[f"{prefix}_input_ids"],
                                          REF[f"{prefix}_attention_mask"], jnp.float64)
        assert plain.last_hidden_state.dtype == jnp.float64
        _check(prefix, plain, "f64", F64_BOUND)
        # The padding mask combined with the causal one, as transformers' create_causal_mask.
        assert rel_l2(masked.last_hidden_state,
                      REF[f"{prefix}_masked_last_hidden_state_f64"]) < F64_BOUND
        assert rel_l2(masked.last_hidden_state, plain.last_hidden_state) > 1e-3
        # diffusers' clip_skip=1: hidden_states[-2] through the final LayerNorm.
        assert rel_l2(skipped, REF[f"{prefix}_clip_skip1_f64"]) < F64_BOUND


@pytest.mark.parametrize("prefix", MODELS)
def test_every_output_matches_transformers_in_float32(loaded, prefix):
    module, params, _ = loaded[prefix]
    plain, _, _ = _outputs(module, params, REF[f"{prefix}_input_ids"],
                           REF[f"{prefix}_attention_mask"], jnp.float32)
    assert plain.last_hidden_state.dtype == jnp.float32
    _check(prefix, plain, "f32", F32_BOUND)


def test_pooling_positions():
    ids = np.array([[5, 7, 2, 9, 9], [5, 9, 3, 9, 1]])
    np.testing.assert_array_equal(clip.pooling_positions(ids, 9), [3, 1])
    # Legacy configs (eos_token_id 2) pool at argmax(ids): the first highest id.
    np.testing.assert_array_equal(clip.pooling_positions(ids, 2), [3, 1])
    np.testing.assert_array_equal(clip.pooling_positions(ids, 8), [0, 0])  # none: 0, as torch


def test_layouts_and_heads_as_loaded(loaded):
    (te1, p1, c1), (te2, p2, c2), (legacy, p3, _) = (loaded[k] for k in MODELS)
    assert not te1.with_projection and "text_projection" not in p1
    assert te2.with_projection and p2["text_projection"]["kernel"].shape == (32, 24)
    assert (te1.config.hidden_act, te2.config.hidden_act) == ("quick_gelu", "gelu")
    assert legacy.config.eos_token_id == clip.LEGACY_EOS_TOKEN_ID
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(p2))  # read from float16
    assert c2["architectures"] == ["CLIPTextModelWithProjection"]


def test_stable_diffusion_prompts_end_to_end():
    """Tokenizer folder + encoder folder through the TextEncoder interface, as SD uses them."""
    sd1 = load_text_encoder("clip", SD)
    context, pooled, mask = sd1.encode(list(REF["sd_prompts"]))
    assert context.shape == (2, 77, 32) and pooled.shape == (2, 32) and mask.shape == (2, 77)
    np.testing.assert_array_equal(sd1.tokenize(list(REF["sd_prompts"])).input_ids,
                                  REF["sd_te1_input_ids"])
    assert rel_l2(context, REF["sd_te1_last_hidden_state"]) < F32_BOUND
    assert rel_l2(pooled, REF["sd_te1_pooler_output"]) < F32_BOUND
    sdxl2 = load_text_encoder("clip", SD, subfolder="text_encoder_2",
                              tokenizer_subfolder="tokenizer_2")
    tokens = sdxl2.tokenize(list(REF["sd_prompts"]))
    np.testing.assert_array_equal(tokens.input_ids, REF["sd_te2_input_ids"])
    output = jax.jit(lambda p, i: sdxl2.module.apply({"params": p}, i))(sdxl2.params,
                                                                        tokens.input_ids)
    assert rel_l2(sdxl_context(output), REF["sd_te2_penultimate"]) < F32_BOUND
    _, text_embeds, _ = sdxl2.encode(list(REF["sd_prompts"]))
    assert rel_l2(text_embeds, REF["sd_te2_text_embeds"]) < F32_BOUND


def test_bfloat16_compute_stays_close(loaded):
    module, params, _ = loaded["te1"]
    module = dataclasses.replace(module, dtype=jnp.bfloat16)
    output = jax.jit(lambda p, i: module.apply({"params": p}, i))(params, REF["te1_input_ids"])
    assert output.last_hidden_state.dtype == jnp.float32
    assert rel_l2(output.last_hidden_state, REF["te1_last_hidden_state_f64"]) < 3e-2


def test_published_parameter_counts():
    """transformers' counts for the published text encoders' config.json, via eval_shape."""
    sd15 = {  # stable-diffusion-v1-5 text_encoder/config.json (openai/clip-vit-large-patch14)
        "architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
        "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
        "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    sd21 = {  # stable-diffusion-2-1 text_encoder/config.json (OpenCLIP ViT-H, 23 layers kept)
        "architectures": ["CLIPTextModel"], "hidden_act": "gelu", "hidden_size": 1024,
        "intermediate_size": 4096, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
        "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512,
        "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    sdxl2 = {  # stable-diffusion-xl-base-1.0 text_encoder_2/config.json (OpenCLIP bigG)
        "architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
        "hidden_size": 1280, "intermediate_size": 5120, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77, "num_attention_heads": 20, "num_hidden_layers": 32,
        "projection_dim": 1280, "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1}
    for config, with_projection, count in ((sd15, False, 123_060_480),
                                           (sd21, False, 340_387_840),
                                           (sdxl2, True, 694_659_840)):
        module = clip.CLIPTextModel(clip.CLIPTextConfig.from_json(config), with_projection)
        assert folders.count_parameters(clip.abstract_params(module)) == count


def test_clip_model_config_with_nested_text_config(tmp_path, loaded):
    """A CLIPModel folder: text_config nested, top-level projection_dim, the vision half
    skipped."""
    folder = tmp_path / "clip_model"
    folder.mkdir()
    text_config = json.load(open(os.path.join(SD, "text_encoder_2", "config.json")))
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 24,
              "text_config": {**text_config, "projection_dim": 512}, "vision_config": {}}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = load_file(os.path.join(SD, "text_encoder_2", "model.fp16.safetensors"))
    tensors.update({"vision_model.post_layernorm.weight": np.ones(4, np.float32),
                    "visual_projection.weight": np.ones((24, 4), np.float32),
                    "logit_scale": np.ones((), np.float32)})
    save_file(tensors, str(folder / "model.safetensors"))
    module, params, _ = clip_weights.read_folder(str(folder))
    assert module.with_projection and module.config.projection_dim == 24
    expected = loaded["te2"][1]
    jax.tree.map(np.testing.assert_array_equal, params, expected)


def _copy(tmp_path, name="text_encoder"):
    folder = tmp_path / name
    shutil.copytree(os.path.join(SD, "text_encoder"), folder)
    return folder


def test_missing_key_names_the_tensor_and_file(tmp_path):
    folder = _copy(tmp_path)
    path = str(folder / "model.safetensors")
    tensors = load_file(path)
    del tensors["encoder.layers.1.self_attn.q_proj.bias"]
    save_file(tensors, path)
    with pytest.raises(ValueError) as error:
        clip_weights.read_folder(str(folder))
    message = str(error.value)
    assert "'encoder.layers.1.self_attn.q_proj.bias'" in message and path in message
    assert "missing" in message and "\n" not in message


def test_mismatched_and_extra_keys(tmp_path):
    folder = _copy(tmp_path)
    path = str(folder / "model.safetensors")
    tensors = load_file(path)
    tensors["final_layer_norm.weight"] = np.ones(31, np.float32)
    save_file(tensors, path)
    with pytest.raises(ValueError, match=r"'final_layer_norm.weight' has shape \(31,\) but "
                                         r"config.json implies \(32,\)"):
        clip_weights.read_folder(str(folder))
    tensors = load_file(os.path.join(SD, "text_encoder", "model.safetensors"))
    tensors["encoder.layers.7.mlp.fc1.weight"] = np.ones((64, 32), np.float32)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="'encoder.layers.7.mlp.fc1.weight'.*no place"):
        clip_weights.read_folder(str(folder))


def test_projection_promised_by_config_but_absent(tmp_path):
    folder = _copy(tmp_path)
    config = json.load(open(folder / "config.json"))
    config["architectures"] = ["CLIPTextModelWithProjection"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'text_projection.weight' .* is missing"):
        clip_weights.read_folder(str(folder))


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_weights.read_folder(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        clip_weights.read_folder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"hidden_act": "relu"}))
    with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
        clip_weights.read_folder(str(tmp_path))


def test_clip_skip_bounds(loaded):
    module, params, _ = loaded["legacy"]  # 2 layers: hidden_states has 3 entries
    states = tuple(np.full((1, 2, 16), i, np.float32) for i in range(3))
    output = clip.CLIPTextOutput(states[-1], states[-1][:, 0], states)
    with pytest.raises(ValueError, match="clip_skip=3 reaches past"):
        clip.clip_skip_context(module, params, output, 3)
    np.testing.assert_array_equal(sdxl_context(output, 1), output.hidden_states[0])
