"""CLIP's BPE tokenizer from a folder's `tokenizer/` files, offline, cleaned like the ORIGINAL CLIP.

Files: `vocab.json` + `merges.txt` (or, lacking them, the BPE model inside `tokenizer.json`),
`tokenizer_config.json` / `special_tokens_map.json` for the special tokens and
`model_max_length` (77 when absent). The pad token is the folder's: SD 1.x pads with
<|endoftext|>, SD 2.x and SDXL's `tokenizer_2` with "!" (id 0).

Text is cleaned as OpenAI's `simple_tokenizer.py` (and open_clip's SimpleTokenizer) do:
`ftfy.fix_text`, `html.unescape` twice, whitespace runs collapsed to one space (`str.split`, as
open_clip; OpenAI's `regex` whitespace class differs only in not splitting at U+001C..U+001F),
stripped, lowercased; then split with CLIP's regex (contractions, letter runs, single digits,
symbol runs), each piece byte-level encoded and merged with the BPE ranks (`tokenizers` runs the
merges). transformers differs: its slow CLIPTokenizer (transformers 4, with ftfy installed) ran
ftfy + whitespace + lowercase but no HTML unescape, so `&amp;` stayed "&amp;"; its fast
tokenizer (the only one in transformers 5) normalises with NFC + whitespace + lowercase only,
so `&amp;`, curly quotes and mojibake all tokenize differently there (the fixture records it).

A prompt becomes <|startoftext|> + tokens + <|endoftext|>, truncated to `model_max_length`
(75 text tokens; the end token is kept, as the original's `tokens[-1] = eot` does; a logged
warning says how many tokens and what text were dropped) and padded with the pad token.
`attention_mask` is 1 on the start, text and end tokens, 0 on padding.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from typing import Sequence

import numpy as np

from diffjax.storage import filesystem
from diffjax.storage import model_folders as folders
from diffjax.text.tokenized import TokenizedText

log = logging.getLogger(__name__)

HOW_TO_GET = ("a diffusers pipeline's tokenizer/ (or tokenizer_2/) folder with vocab.json and "
              "merges.txt, e.g. from huggingface-cli download "
              "stable-diffusion-v1-5/stable-diffusion-v1-5 --include 'tokenizer/*'")
# The original's split (simple_tokenizer.py), less its special-token alternatives: special
# tokens are matched as added tokens before it runs.
SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
DEFAULT_MAX_LENGTH = 77
END_OF_WORD = "</w>"


def clean(text: str) -> str:
    """OpenAI CLIP's cleaning: ftfy, HTML unescaped twice, whitespace collapsed, lowercased."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def transformers_normalize(text: str) -> str:
    """transformers 5's fast CLIPTokenizer (what diffusers' pipelines run): NFC, whitespace runs
    to one space, lowercased; no ftfy, no HTML unescape."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).lower()


# `cleaning=` of CLIPTokenizer: "clip" is the original CLIP's (the default); "transformers"
# reproduces diffusers' images for prompts with HTML entities, curly quotes or mojibake.
CLEANINGS = {"clip": clean, "transformers": transformers_normalize}


def resolve_folder(folder: str, subfolder: str = "tokenizer") -> str:
    """`folder` when it holds vocab.json or tokenizer.json, else `folder/subfolder`."""
    for marker in ("vocab.json", "tokenizer.json"):
        for candidate in (folder, filesystem.join(folder, subfolder)):
            if folder and filesystem.is_file(filesystem.join(candidate, marker)):
                return candidate
    return folders.resolve_folder(folder, subfolder, "vocab.json", "CLIP tokenizer",
                                  f"pass {HOW_TO_GET}")


def _special_tokens(folder: str) -> tuple[dict[str, str], int]:
    """Special tokens and model_max_length: tokenizer_config.json, then special_tokens_map.json
    over it (the order transformers applied them)."""
    tokens = dict(DEFAULTS)
    max_length = DEFAULT_MAX_LENGTH
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = filesystem.join(folder, name)
        if not filesystem.is_file(path):
            continue
        entries = folders.read_json(path, HOW_TO_GET)
        for key in DEFAULTS:
            text = folders.token_text(entries.get(key))
            tokens[key] = text if text is not None else tokens[key]
        length = entries.get("model_max_length")
        if isinstance(length, int) and 0 < length < 1_000_000:
            max_length = length
    return tokens, max_length


def configured_max_length(folder: str, subfolder: str = "tokenizer") -> int:
    """model_max_length from the tokenizer's config files alone (no vocabulary needed): what
    a compile plan or a network's input shape needs before any weights are downloaded."""
    for candidate in (folder, filesystem.join(folder, subfolder)):
        if any(filesystem.is_file(filesystem.join(candidate, name))
               for name in ("tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                            "tokenizer.json")):
            return _special_tokens(candidate)[1]
    return DEFAULT_MAX_LENGTH


def _vocabulary(folder: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab_path, merges_path = (filesystem.join(folder, n) for n in ("vocab.json", "merges.txt"))
    if filesystem.is_file(vocab_path) and filesystem.is_file(merges_path):
        vocab = folders.read_json(vocab_path, HOW_TO_GET)
        lines = filesystem.read_text(merges_path).splitlines()
        merges = [tuple(line.split()) for line in lines
                  if line.strip() and not line.startswith("#version")]
    elif filesystem.is_file(filesystem.join(folder, "tokenizer.json")):
        model = folders.read_json(filesystem.join(folder, "tokenizer.json"),
                                  HOW_TO_GET).get("model", {})
        if model.get("type") != "BPE":
            raise ValueError(f"{folder}/tokenizer.json holds a {model.get('type')} model, not "
                             f"CLIP's BPE; pass {HOW_TO_GET}.")
        vocab = model["vocab"]
        merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    else:
        raise FileNotFoundError(f"{folder} has no vocab.json + merges.txt (nor tokenizer.json); "
                                f"pass {HOW_TO_GET}.")
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise ValueError(f"{merges_path}: merge {' '.join(bad)!r} is not a pair; pass "
                         f"{HOW_TO_GET}.")
    return vocab, merges


class CLIPTokenizer:
    """`tokenizer(prompts) -> TokenizedText` (input_ids, attention_mask: (B, max_length) int32).

    `folder` is the tokenizer folder itself or a pipeline root (then `subfolder` is used).
    """

    def __init__(self, folder: str, subfolder: str = "tokenizer", cleaning: str = "clip"):
        if cleaning not in CLEANINGS:
            raise ValueError(f"cleaning={cleaning!r}; choose one of {sorted(CLEANINGS)}.")
        self.clean = CLEANINGS[cleaning]
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        self.folder = resolve_folder(folder, subfolder)
        vocab, merges = _vocabulary(self.folder)
        tokens, self.max_length = _special_tokens(self.folder)
        missing = [t for t in tokens.values() if t not in vocab]
        if missing:
            raise ValueError(f"{self.folder}/vocab.json has no {missing[0]!r}, a special token "
                             f"its tokenizer_config.json names; pass {HOW_TO_GET}.")
        self.bos_id, self.eos_id, self.pad_id = (vocab[tokens[k]] for k in
                                                 ("bos_token", "eos_token", "pad_token"))
        self.pad_token = tokens["pad_token"]
        bpe = models.BPE(vocab=vocab, merges=merges, unk_token=tokens["unk_token"],
                         continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD,
                         fuse_unk=False)
        self._tokenizer = Tokenizer(bpe)
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
            # The split above is CLIP's; GPT-2's regex must not split the pieces again.
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        self._tokenizer.decoder = decoders.ByteLevel()
        self._tokenizer.add_special_tokens(
            [AddedToken(tokens[k], special=True, normalized=False)
             for k in ("bos_token", "eos_token")])

    def text_tokens(self, prompts: Sequence[str]) -> list[list[int]]:
        """The BPE ids of each cleaned prompt, without start/end tokens or truncation."""
        encodings = self._tokenizer.encode_batch([self.clean(p) for p in prompts],
                                                 add_special_tokens=False)
        return [e.ids for e in encodings]

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Tokens of each prompt with the start and end tokens, before truncation."""
        return [len(ids) + 2 for ids in self.text_tokens(prompts)]

    def decode(self, ids: Sequence[int]) -> str:
        text = self._tokenizer.decode(list(ids), skip_special_tokens=False)
        return text.replace(END_OF_WORD, " ").strip()

    def __call__(self, prompts: str | Sequence[str]) -> TokenizedText:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        room = self.max_length - 2
        ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), self.max_length), np.int32)
        for row, text_ids in enumerate(self.text_tokens(prompts)):
            if len(text_ids) > room:
                log.warning(
                    "Prompt %d has %d tokens; CLIP reads %d, so the last %d were dropped: %r",
                    row, len(text_ids) + 2, self.max_length, len(text_ids) - room,
                    self.decode(text_ids[room:]))
                text_ids = text_ids[:room]
            row_ids = [self.bos_id, *text_ids, self.eos_id]
            ids[row, :len(row_ids)] = row_ids
            mask[row, :len(row_ids)] = 1
        return TokenizedText(ids, mask)

