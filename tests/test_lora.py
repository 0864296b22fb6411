"""diffjax.lora against diffusers + PEFT: LoRA files in every layout, applied unmerged or fused,
and qwix-trained adapters written as files diffusers loads.

The reference is tests/fixtures/lora/ (tools/make_lora_fixtures.py): files in the diffusers/PEFT
and kohya-ss layouts (SD 1.x U-Net + text encoder, SDXL with sgm block names and two text
encoders, conv LoRAs) for the tiny random models of tests/fixtures/sd_unet and text/sd_tiny, and
the outputs diffusers computes (float64) after its own `load_lora_weights`. Each network compiles
once: adapters change parameter values, not shapes.
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from diffjax import lora
from diffjax.lora import files, layouts
from diffjax.models import sd_unet_weights
from diffjax.text import clip_weights

FIXTURES = os.path.join(REPO, "tests", "fixtures")
LORA = os.path.join(FIXTURES, "lora")
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def rel_l2(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@functools.lru_cache(maxsize=None)
def reference():
    return dict(np.load(os.path.join(LORA, "reference.npz")))


@functools.lru_cache(maxsize=None)
def unet(name):
    return sd_unet_weights.read_folder(os.path.join(FIXTURES, "sd_unet", name))


@functools.lru_cache(maxsize=None)
def text(sub):
    return clip_weights.read_folder(os.path.join(FIXTURES, "text", "sd_tiny"), sub)


@functools.lru_cache(maxsize=None)
def unet_forward(name):
    """params -> the U-Net's output on its fixture inputs (compiled once per variant)."""
    module = unet(name)[0]
    ref = np.load(os.path.join(FIXTURES, "sd_unet", f"reference_{name}.npz"))
    args = [ref[k].astype(np.float32) for k in ("sample", "t_float", "context")]
    extra = {k: ref[k].astype(np.float32) for k in ("text_embeds", "time_ids") if k in ref}

    def run(params):
        return module.apply({"params": params}, *args, **extra)

    compiled = jax.jit(run).lower(unet(name)[1]).compile(compiler_options=FAST_COMPILE)
    return lambda params: np.asarray(compiled(jax.tree.map(jnp.asarray, params)))


@functools.lru_cache(maxsize=None)
def text_forward(sub):
    """params -> (last_hidden_state, hidden_states[-2], text_embeds or None) on the token ids."""
    module, params, _ = text(sub)
    ids = jnp.asarray(reference()["token_ids"], jnp.int32)

    def run(p):
        out = module.apply({"params": p}, ids)
        return out.last_hidden_state, out.hidden_states[-2], out.text_embeds

    compiled = jax.jit(run).lower(params).compile(compiler_options=FAST_COMPILE)
    return lambda p: [None if a is None else np.asarray(a)
                      for a in compiled(jax.tree.map(jnp.asarray, p))]


def sd1_params():
    return {"unet": unet("sd1")[1], "text_encoder": text("text_encoder")[1]}


def sdxl_params():
    return {"unet": unet("sdxl")[1], "text_encoder": text("text_encoder")[1],
            "text_encoder_2": text("text_encoder_2")[1]}


def applied(params, adapters, component):
    return lora.apply_lora(params[component], adapters, component)


@pytest.mark.parametrize("kind", ["peft", "kohya"])
def test_sd1_files_match_diffusers(kind):
    ref, params = reference(), sd1_params()
    adapter = lora.load_lora(params, os.path.join(LORA, f"sd1_{kind}.safetensors"))
    assert set(adapter.components) == {"unet", "text_encoder"}
    out = unet_forward("sd1")(applied(params, adapter, "unet"))
    te = text_forward("text_encoder")(applied(params, adapter, "text_encoder"))[0]
    base = unet_forward("sd1")(params["unet"])
    errors = dict(unet=rel_l2(out, ref[f"sd1_{kind}_unet_f64"]),
                  text=rel_l2(te, ref[f"sd1_{kind}_te_f64"]),
                  unet_vs_base=rel_l2(base, ref[f"sd1_{kind}_unet_f64"]),
                  text_vs_base=rel_l2(ref["sd1_base_te_f64"], ref[f"sd1_{kind}_te_f64"]))
    print(f"sd1 {kind} float32 rel L2 vs diffusers float64:", errors)
    assert errors["unet"] < 2e-5 and errors["text"] < 2e-5, errors
    assert errors["unet_vs_base"] > 0.05 and errors["text_vs_base"] > 0.05, errors
    if kind == "peft":  # set_adapters(["peft"], adapter_weights=[0.6])
        scaled = unet_forward("sd1")(applied(params, adapter.with_scale(0.6), "unet"))
        assert rel_l2(scaled, ref["sd1_peft_scaled_unet_f64"]) < 2e-5


def test_several_adapters_with_their_own_scales():
    """diffusers' set_adapters(["peft", "kohya"], adapter_weights=[0.8, 0.5])."""
    ref, params = reference(), sd1_params()
    peft = lora.load_lora(params, os.path.join(LORA, "sd1_peft.safetensors"), scale=0.8)
    kohya = lora.load_lora(params, os.path.join(LORA, "sd1_kohya.safetensors"), scale=0.5)
    out = unet_forward("sd1")(applied(params, [peft, kohya], "unet"))
    te = text_forward("text_encoder")(applied(params, [peft, kohya], "text_encoder"))[0]
    errors = rel_l2(out, ref["sd1_both_unet_f64"]), rel_l2(te, ref["sd1_both_te_f64"])
    print("two adapters rel L2 (unet, text):", errors)
    assert max(errors) < 2e-5, errors

    # Scales are traced: one compiled function serves every scale.
    run = jax.jit(lambda p, adapters: lora.apply_lora(p, adapters, "unet"))
    first = run(params["unet"], [peft, kohya])
    second = run(params["unet"], [peft.with_scale(0.0), kohya.with_scale(0.0)])
    assert run._cache_size() == 1
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), second, params["unet"]))
    assert not jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), first,
                                         params["unet"]))


def test_sdxl_kohya_with_sgm_names_matches_diffusers():
    ref, params = reference(), sdxl_params()
    module = unet("sdxl")[0]
    adapter = lora.load_lora(params, os.path.join(LORA, "sdxl_kohya.safetensors"),
                             unet_config=module.config)
    assert set(adapter.components) == {"unet", "text_encoder", "text_encoder_2"}
    out = unet_forward("sdxl")(applied(params, adapter, "unet"))
    te1 = text_forward("text_encoder")(applied(params, adapter, "text_encoder"))[1]
    _, te2, embeds = text_forward("text_encoder_2")(applied(params, adapter, "text_encoder_2"))
    errors = dict(unet=rel_l2(out, ref["sdxl_kohya_unet_f64"]),
                  te1=rel_l2(te1, ref["sdxl_kohya_te1_f64"]),
                  te2=rel_l2(te2, ref["sdxl_kohya_te2_f64"]),
                  te2_embeds=rel_l2(embeds, ref["sdxl_kohya_te2_embeds_f64"]),
                  unet_vs_base=rel_l2(unet_forward("sdxl")(params["unet"]),
                                      ref["sdxl_kohya_unet_f64"]))
    print("sdxl kohya (sgm) float32 rel L2 vs diffusers float64:", errors)
    assert max(v for k, v in errors.items() if k != "unet_vs_base") < 2e-5, errors
    assert errors["unet_vs_base"] > 0.05


def test_sgm_names_cover_the_blocks_diffusers_converts():
    config = unet("sdxl")[0].config
    name = lambda n: layouts.sgm_name(n, config)  # noqa: E731
    assert name("conv_in") == "input_blocks.0.0"
    assert name("down_blocks.0.resnets.0.conv1") == "input_blocks.1.0.in_layers.2"
    assert name("down_blocks.0.downsamplers.0.conv") == "input_blocks.2.0.op"
    assert name("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == \
        "input_blocks.3.1.transformer_blocks.0.attn1.to_q"
    assert name("down_blocks.1.resnets.0.time_emb_proj") == "input_blocks.3.0.emb_layers.1"
    assert name("mid_block.resnets.1.conv2") == "middle_block.2.out_layers.3"
    assert name("up_blocks.0.upsamplers.0.conv") == "output_blocks.1.2.conv"
    assert name("up_blocks.2.resnets.1.conv_shortcut") == "output_blocks.5.0.skip_connection"
    assert name("add_embedding.linear_2") == "label_emb.0.2"


def test_fuse_and_unfuse():
    """diffusers' fuse_lora(lora_scale=0.7): the same fused weights and output; unfusing gives
    the original back to float32 rounding."""
    ref, params = reference(), sd1_params()
    adapter = lora.load_lora(params, os.path.join(LORA, "sd1_peft.safetensors"), scale=0.7)
    fused = lora.fuse_lora(params["unet"], [adapter], "unet")
    to_q = fused["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q"]
    conv1 = fused["down_blocks_0"]["resnets_1"]["conv1"]
    assert isinstance(to_q["kernel"], np.ndarray)
    np.testing.assert_allclose(to_q["kernel"].T, ref["fused_to_q"], rtol=0, atol=2e-6)
    np.testing.assert_allclose(conv1["kernel"].transpose(3, 2, 0, 1), ref["fused_conv1"],
                               rtol=0, atol=2e-6)
    assert rel_l2(unet_forward("sd1")(fused), ref["fused_unet_f64"]) < 2e-5
    restored = lora.unfuse_lora(fused, [adapter], "unet")
    worst = max(float(np.max(np.abs(a - b))) for a, b in
                zip(jax.tree.leaves(restored), jax.tree.leaves(params["unet"])))
    assert worst < 1e-6, worst
    untouched = params["unet"]["conv_norm_out"]["scale"]
    assert restored["conv_norm_out"]["scale"] is untouched


@pytest.mark.parametrize("layout", ["peft", "kohya", "kohya_sgm"])
def test_save_load_round_trip(tmp_path, layout):
    name = "sdxl" if layout == "kohya_sgm" else "sd1"
    params = sdxl_params() if name == "sdxl" else sd1_params()
    config = unet(name)[0].config
    source = "sdxl_kohya" if name == "sdxl" else "sd1_peft"
    adapter = lora.load_lora(params, os.path.join(LORA, f"{source}.safetensors"), scale=0.5,
                             unet_config=config)
    path = str(tmp_path / "out.safetensors")
    lora.save_lora(path, adapter, params, layout=layout, unet_config=config)
    keys = list(files.safetensors_files.read_safetensors(path))
    if layout == "kohya_sgm":
        assert any("input_blocks" in k for k in keys) and not any("down_blocks" in k
                                                                  for k in keys)
    again = lora.load_lora(params, path, unet_config=config)
    for component in adapter.layers:
        for path_, entry in adapter.layers[component].items():
            other = again.layers[component][path_]
            delta = np.tensordot(entry["down"], entry["up"], 1) * entry["factor"] * 0.5
            np.testing.assert_allclose(np.tensordot(other["down"], other["up"], 1) *
                                       other["factor"], delta, rtol=1e-6, atol=1e-7)


def _one_line(fn, match):
    with pytest.raises(ValueError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_files_that_do_not_fit_are_one_line(tmp_path):
    params = sd1_params()
    # SDXL's LoRA on SD 1.x: keys are read in sorted order, so the second text encoder's
    # come first; without them, the first U-Net key names a layer SD 1.x does not have.
    sdxl = os.path.join(LORA, "sdxl_kohya.safetensors")
    _one_line(lambda: lora.load_lora(params, sdxl),
              r"key 'lora_te2_.*' is for the text_encoder_2, whose parameters were not given")
    unet_only = {k: v for k, v in files.safetensors_files.read_safetensors(sdxl).items()
                 if k.startswith("lora_unet_")}
    files.safetensors_files.write_safetensors(str(tmp_path / "unet.safetensors"), unet_only)
    _one_line(lambda: lora.load_lora(params, str(tmp_path / "unet.safetensors")),
              "names no LoRA-able layer")
    tensors = dict(files.safetensors_files.read_safetensors(
        os.path.join(LORA, "sd1_peft.safetensors")))
    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight"
    tensors[key] = np.zeros((4, 5), np.float16)
    path = str(tmp_path / "bad.safetensors")
    files.safetensors_files.write_safetensors(path, tensors)
    _one_line(lambda: lora.load_lora(params, path),
              r"has shape \(4, 5\) but the unet's .*to_q is a linear 8 -> 8: expected \(4, 8\)")
    dora = {"unet.mid_block.resnets.0.conv1.lora_magnitude_vector": np.ones(8, np.float32)}
    files.safetensors_files.write_safetensors(path, dora)
    _one_line(lambda: lora.load_lora(params, path), "DoRA")
    _one_line(lambda: lora.load_lora({"unet": params["unet"]}, os.path.join(
        LORA, "sd1_peft.safetensors")), "does not start with a component")


# --- training adapters with qwix ------------------------------------------------------------

def test_a_lora_trained_by_diffjax_loads_in_diffusers():
    """tools/train_lora_fixture.py trained it with qwix; tools/make_lora_fixtures.py
    --check-diffjax loaded it with diffusers' load_lora_weights and recorded the comparison."""
    folder = os.path.join(LORA, "diffjax_trained")
    check = json.load(open(os.path.join(folder, "diffusers_check.json")))
    print("diffusers' check:", check)
    assert check["passed"] and check["rel_l2_float64"] < 1e-5
    assert check["lora_vs_base_rel_l2_float64"] > 0.1
    assert check["adapter_layers"] == 60 and check["r"] == 4 and check["lora_alpha"] == 8
    outputs = np.load(os.path.join(folder, "diffjax_outputs.npz"))
    params = {"unet": unet("sd1")[1]}
    adapter = lora.load_lora(params, os.path.join(folder, "pytorch_lora_weights.safetensors"))
    out = unet_forward("sd1")(applied(params, adapter, "unet"))
    # qwix adds x A B next to W x; apply_lora adds A B to W: equal to float32 rounding.
    assert rel_l2(out, outputs["lora"]) < 1e-5


def test_qwix_adapters_on_every_network():
    """qwix LoRA on the SD U-Net (remat), DiT (DenseGeneral) and NCSN++ (NIN): a zero B is the
    base network exactly; a trained-looking adapter equals its merged weights; LoRA dropout acts
    only in training (with a dropout RNG)."""
    import importlib.util

    import flax.linen as nn

    from diffjax.experiment import example_input
    from diffjax.models import build_model

    spec = importlib.util.spec_from_file_location("digits", os.path.join(REPO, "configs",
                                                                          "digits.py"))
    digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits)
    cases = []
    for variant, targets in (("test", "ncsnpp_attention"), ("test,dit", "dit_attention")):
        config = digits.get_config(variant)
        x, t, labels = example_input(config)
        x = jax.random.normal(jax.random.key(3), x.shape)
        cases.append((variant, build_model(config), (x, t + 500.0, labels), targets))
    module, _, _ = unet("sd1")
    ref = np.load(os.path.join(FIXTURES, "sd_unet", "reference_sd1.npz"))
    sd_input = (ref["sample"][:1, :8, :8].astype(np.float32), ref["t_float"][:1],
                ref["context"][:1].astype(np.float32))
    cases.append(("sd1", module.clone(remat=True), sd_input, "sd_attention"))
    for name, model, inputs, targets in cases:
        settings = lora.LoraSettings(rank=2, alpha=3.0, targets=targets, dropout=0.5)
        network = lora.lora_network(model, settings)
        kwargs = {} if name == "sd1" else {"train": False}
        variables = network.init(jax.random.key(0), *inputs, **kwargs)
        base, adapter = lora.split(nn.unbox(variables["params"]))
        if name != "sd1":  # DiT starts as exactly zero (adaLN-Zero): perturb every weight
            base = jax.tree_util.tree_map_with_path(lambda p, x: x + 0.1 * jax.random.normal(
                jax.random.key(len(jax.tree_util.keystr(p))), x.shape), base)
        assert lora.network.count(adapter) > 0, name
        plain = model.apply({"params": base}, *inputs, **kwargs)
        zero_b = network.apply({"params": lora.merge(base, adapter)}, *inputs, **kwargs)
        np.testing.assert_array_equal(np.asarray(zero_b), np.asarray(plain), err_msg=name)
        adapter = jax.tree_util.tree_map_with_path(
            lambda p, x: x + 0.3 * jax.random.normal(jax.random.key(len(str(p))), x.shape)
            if "lora_b" in jax.tree_util.keystr(p) else x, adapter)
        full = lora.merge(base, adapter)
        out = network.apply({"params": full}, *inputs, **kwargs)
        expected = model.apply({"params": _merge_qwix(base, adapter, settings.scale)}, *inputs,
                               **kwargs)
        error = rel_l2(out, expected)
        print(f"{name}: qwix LoRA vs merged weights rel L2 {error:.2e}")
        assert rel_l2(out, plain) > 1e-3 and error < 1e-5, (name, error)
        if name == "sd1":
            continue
        no_dropout = lora.lora_network(model, lora.LoraSettings(rank=2, alpha=3.0,
                                                                targets=targets))
        rngs = {"dropout": jax.random.key(1)}
        trained = [n.apply({"params": full}, *inputs, train=True, rngs=rngs)
                   for n in (network, no_dropout)]
        assert not np.allclose(trained[0], trained[1]), name  # LoRA dropout in training


def _merge_qwix(base, adapter, scale):
    """W + scale * A @ B for every adapted kernel (any kernel rank: A flattens the inputs)."""
    def walk(b, a):
        out = dict(b)
        for key, value in a.items():
            if isinstance(value, dict):
                out[key] = walk(b[key], value)
        if "kernel_lora_a" in a:
            kernel = b["kernel"]
            delta = a["kernel_lora_a"].reshape(-1, a["kernel_lora_a"].shape[-1]) @ a[
                "kernel_lora_b"]
            if kernel.ndim == 4 and a["kernel_lora_a"].ndim == 4:  # conv: (kh, kw, in, r)
                delta = jnp.tensordot(a["kernel_lora_a"], a["kernel_lora_b"], 1)
            out["kernel"] = kernel + scale * delta.reshape(kernel.shape)
        return out

    return walk(base, adapter)


def test_target_presets_and_errors():
    from diffjax.lora.targets import matches, target_regex

    sd = target_regex("sd_attention")
    assert matches(sd, "down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_out_0")
    assert not matches(sd, "down_blocks_0/attentions_0/proj_in")
    assert matches(target_regex("ncsnpp_attention"), "mid_attn/NIN_3")
    assert matches(target_regex("ncsnpp_attention"), "down_1_attn_0/NIN_0")
    assert not matches(target_regex("ncsnpp_attention"), "down_1_block_0/NIN_0")
    assert matches(target_regex("dit_attention,.*fc1"), "block_3/mlp/fc1")
    assert matches(target_regex(r"x{1,2}"), "xx")
    _one_line(lambda: target_regex("attn("), "neither a preset .* nor a valid regular expression")


def test_lora_state_scales_with_the_adapter(digits_config):
    """Optimizer moments, EMA and checkpoints hold the adapter only (the base is not loaded to
    build the experiment: only its shapes are)."""
    from diffjax.experiment import build_experiment
    from diffjax.state.train_state import count_params, state_bytes

    full = build_experiment(digits_config("test"))
    config = digits_config("lora,test")
    config.model.lora.base = "/nonexistent/base"
    adapted = build_experiment(config)
    spec = adapted.spec.abstract
    adapter = count_params(spec.params)
    assert all(str(path[-1].key).endswith(("_lora_a", "_lora_b"))
               for path, _ in jax.tree_util.tree_flatten_with_path(spec.params)[0])
    assert count_params(spec.ema_params) == adapter
    moments = count_params(spec.opt_state)
    assert 2 * adapter <= moments <= 2 * adapter + 4  # Adam's mu, nu (+ step counters)
    assert count_params(adapted.frozen.abstract) == count_params(full.spec.abstract.params)
    ratio = state_bytes(spec) / state_bytes(full.spec.abstract)
    assert abs(ratio - adapter / count_params(full.spec.abstract.params)) < 0.01, ratio
    with pytest.raises(FileNotFoundError, match="model.lora.base='/nonexistent/base' has no "
                                                "checkpoint"):
        adapted.frozen.load()


def test_a_base_with_other_weights_is_refused():
    from diffjax.storage.base_runs import BaseIdentity, params_sha256

    tree = {"a": np.arange(3, dtype=np.float32), "b": {"c": np.ones((2, 2), np.float32)}}
    digest = params_sha256(tree)
    assert digest == params_sha256(jax.tree.map(jnp.asarray, tree))
    other = params_sha256({"a": np.arange(3, dtype=np.float32) + 1e-6, "b": tree["b"]})
    identity = BaseIdentity("/runs/base", 6, digest, "lora")
    identity.check({"sha256": digest}, "checkpoint 6")
    _one_line(lambda: identity.check({"folder": "/runs/old", "step": 4, "sha256": other},
                                     "checkpoint 6 in /runs/lora"),
              r"checkpoint 6 in /runs/lora was trained on the base /runs/old \(step 4.*other "
              r"weights")
