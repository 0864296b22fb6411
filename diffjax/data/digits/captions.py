"""Captions of the 8x8 digits, written from each image's label and MEASURED properties.

Two properties are measured on the pixels (ink in [0, 1]):
- stroke weight: the total ink, ranked within the digit's class into thirds: "thin", "medium",
  "thick" (a thick 1 and a thick 8 differ in ink, so thresholds are per class);
- slant: the ink-weighted regression of column on row, -cov(col, row) / var(row), so that a top
  further right than the bottom is positive; ranked within the class into "slanted to the
  left", "upright", "slanted to the right".

Each image gets `CAPTIONS_PER_IMAGE` different templates out of `TEMPLATES` (drawn from the
image's index, so the dataset is reproducible), so the same image has paraphrased captions and
the same template describes many images. The words "number" and "numeral" never appear:
`PARAPHRASES` (what evaluation also prompts with) are templates the model never saw.
"""

from __future__ import annotations

import re

import numpy as np

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WEIGHTS = ("thin", "medium", "thick")
SLANTS = ("slanted to the left", "upright", "slanted to the right")
LEANS = ("a left-leaning", "an upright", "a right-leaning")
CAPTIONS_PER_IMAGE = 4

TEMPLATES = (
    "a {weight} handwritten {word}",
    "the digit {n}, {slant}",
    "a handwritten {word}, {slant}",
    "{word}, drawn with {weight} strokes",
    "{lean} {n}",
    "the digit {word}",
    "a {weight} {word}, {slant}",
)
# Prompts that name a digit in words no caption uses (evaluation's unseen paraphrases).
PARAPHRASES = ("number {word}", "the numeral {n}", "a picture of the number {word}")
# Training-style prompts (templates without the measured properties).
SEEN = ("the digit {word}", "the digit {n}")


def measure(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ink, slant) per image of uint8 [N, 8, 8, 1] (or float [N, 8, 8] in [0, 1])."""
    ink = np.asarray(images, np.float64).reshape(len(images), 8, 8)
    if np.asarray(images).dtype == np.uint8:
        ink = ink / 255.0
    rows, cols = np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij")
    total = ink.sum((1, 2)) + 1e-9
    mean_r = (ink * rows).sum((1, 2)) / total
    mean_c = (ink * cols).sum((1, 2)) / total
    cov = (ink * (rows - mean_r[:, None, None]) * (cols - mean_c[:, None, None])).sum((1, 2))
    var_r = (ink * (rows - mean_r[:, None, None]) ** 2).sum((1, 2)) + 1e-9
    return total, -cov / var_r


def terciles(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0, 1, 2: the third of its own class each value falls in (by rank, ties by index)."""
    out = np.zeros(len(values), np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = members[np.argsort(values[members], kind="stable")]
        out[order] = (np.arange(len(order)) * 3) // len(order)
    return out


def caption_images(images: np.ndarray, labels: np.ndarray, indices: np.ndarray
                   ) -> list[list[str]]:
    """CAPTIONS_PER_IMAGE captions per image; properties are ranked among `images` (the whole
    dataset, so that a caption does not depend on the split)."""
    ink, slant = measure(images)
    weight, lean = terciles(ink, labels), terciles(slant, labels)
    captions = []
    for i, (label, index) in enumerate(zip(labels, indices)):
        rng = np.random.default_rng(int(index))
        chosen = rng.choice(len(TEMPLATES), CAPTIONS_PER_IMAGE, replace=False)
        values = dict(word=DIGIT_WORDS[int(label)], n=int(label), weight=WEIGHTS[weight[i]],
                      slant=SLANTS[lean[i]], lean=LEANS[lean[i]])
        captions.append([TEMPLATES[t].format(**values) for t in sorted(chosen)])
    return captions


def naming_prompts(templates=PARAPHRASES + SEEN) -> list[tuple[str, int, str]]:
    """(prompt, digit, group) for every digit and template: group "unseen" or "seen". Ordered
    so that any 10 consecutive prompts name every digit once and the templates rotate (k ->
    digit k mod 10, template (k + k // 10) mod T: every pair once when T = 5), so that a short
    evaluation still sees all digits and both groups."""
    count = len(templates) * 10
    pairs = [(k % 10, (k + k // 10) % len(templates)) for k in range(count)]
    if len(set(pairs)) != count:  # the rotation covers every pair only for T coprime to 10
        pairs = [(d, t) for t in range(len(templates)) for d in range(10)]
    return [(templates[t].format(word=DIGIT_WORDS[d], n=d), d,
             "unseen" if templates[t] in PARAPHRASES else "seen") for d, t in pairs]


_WORD = re.compile(r"\b(" + "|".join(DIGIT_WORDS) + r")\b")
_NUMERAL = re.compile(r"(?<![\d.])(\d)(?![\d.])")


def named_digit(prompt: str) -> int | None:
    """The one digit a prompt names (a word zero..nine or a single numeral), else None."""
    found = {DIGIT_WORDS.index(w) for w in _WORD.findall(prompt.lower())}
    found |= {int(n) for n in _NUMERAL.findall(prompt)}
    return found.pop() if len(found) == 1 else None
