"""Which layers get a LoRA: regular expressions over Flax module paths, and named presets.

A path is the module's names joined by "/" (`down_blocks_0/attentions_0/transformer_blocks_0/
attn1/to_q`, `block_3/attn/qkv`, `down_0_attn_1/NIN_2`); a target matches a layer when the
expression matches its whole path (`re.fullmatch`, as qwix matches `module_path`). Every weight
product in a matched module gets an adapter: Dense, Conv, DiT's DenseGeneral, NCSN++'s NIN.

`model.lora.targets` is a preset name, a regular expression, or several of either joined by
commas (a comma inside a regular expression's `{m,n}` is kept).
"""

from __future__ import annotations

import re

_SD_ATTENTION = r".*/attn[12]/(to_q|to_k|to_v|to_out_0)"
_DIT_ATTENTION = r".*/attn/(qkv|out)"  # DiT's timm Attention: qkv and proj (diffjax: out)
_NCSNPP_ATTENTION = r"(.*_)?attn(_\d+)?/NIN_[0-3]"  # AttnBlockpp's q, k, v and output NINs
_TEXT_ATTENTION = r".*/self_attn/(q_proj|k_proj|v_proj|out_proj)"  # CLIP / BERT-style

PRESETS: dict[str, str] = {
    # diffusers' default for Stable Diffusion LoRA training (train_text_to_image_lora.py).
    "sd_attention": _SD_ATTENTION,
    "dit_attention": _DIT_ATTENTION,
    "ncsnpp_attention": _NCSNPP_ATTENTION,
    "text_attention": _TEXT_ATTENTION,
    # The attention projections of whichever network this is.
    "attention": "|".join((_SD_ATTENTION, _DIT_ATTENTION, _NCSNPP_ATTENTION, _TEXT_ATTENTION)),
    # Every Dense / Conv / DenseGeneral / NIN weight.
    "all": r".*",
}


def _split(targets: str) -> list[str]:
    """Comma-separated parts, keeping commas inside {m,n} quantifiers."""
    parts, depth, current = [], 0, ""
    for char in targets:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [p.strip() for p in parts + [current] if p.strip()]


def target_regex(targets: str) -> str:
    """One regular expression for `model.lora.targets` (presets expanded)."""
    parts = _split(str(targets or ""))
    if not parts:
        raise ValueError(f"model.lora.targets is empty; use a preset ({', '.join(PRESETS)}) or "
                         f"a regular expression over module paths.")
    expressions = []
    for part in parts:
        expression = PRESETS.get(part, part)
        try:
            re.compile(expression)
        except re.error as e:
            raise ValueError(f"model.lora.targets part {part!r} is neither a preset "
                             f"({', '.join(PRESETS)}) nor a valid regular expression ({e}).") \
                from None
        expressions.append(expression)
    return expressions[0] if len(expressions) == 1 else "|".join(
        f"(?:{e})" for e in expressions)


def matches(regex: str, path: tuple[str, ...] | str) -> bool:
    name = path if isinstance(path, str) else "/".join(path)
    return re.fullmatch(regex, name) is not None
