"""What a tokenizer hands the network: fixed-length ids and their attention mask, on the host."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenizedText:
    """input_ids (B, L) int32, padded with the tokenizer's pad id; attention_mask (B, L) int32,
    1 on real tokens (start and end tokens included) and 0 on padding."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])
