"""Does a text model draw what its prompts ask? Measured by a digit classifier or CLIP score.

- Digits (`digits`, `digits_captioned`): `eval.prompt_num_samples` samples from prompts that
  name a digit (`eval.prompts`, else the digits' own set: templates the captions use, "seen",
  and paraphrases they never use such as "number five", "unseen"; see
  diffjax/data/digits/captions.py), each classified by a classifier trained on the real 8x8
  training digits (scikit-learn's SVC on the pixels); the score is the share classified as the
  named digit, overall and per group, reported beside the classifier's own accuracy on the
  held-out test digits (the ceiling the score can reach).
- Any dataset, with `eval.clip_model` (a transformers CLIPModel folder): the CLIP score of the
  FID samples against the captions they were drawn from, as torchmetrics defines it
  (diffjax.text.clip_vision.CLIPScorer), and of the prompt samples against their prompts.

The prompt samples use their own noise (fold_in(key(seed), PROMPT_SALT), batch by batch), the
same for every checkpoint, so scores of checkpoints compare.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import numpy as np

from diffjax import data as data_lib
from diffjax.data.digits import captions as digit_captions
from diffjax.sampling.generate import draw_batch
from diffjax.sampling.prompts import PromptEncoder, read_prompts

PROMPT_SALT = 0x5A6  # distinct from grids (0x5A3), --mode=sample (0x5A4) and FID (0x5A5)
DIGIT_DATASETS = ("digits", "digits_captioned")


def is_digits(config) -> bool:
    return config.data.dataset in DIGIT_DATASETS and not config.data.get("image_folder", "")


@functools.lru_cache(maxsize=2)
def digit_classifier(data_dir: str = "") -> tuple[Any, float]:
    """(SVC fitted on the digits train split, its accuracy on the test split)."""
    from ml_collections import ConfigDict
    from sklearn.svm import SVC

    def split(name):
        config = ConfigDict({"dataset": "digits", "data_dir": data_dir, "image_size": 8,
                             "num_channels": 1})
        batches = list(data_lib.iterate_split(config, name, 2048))
        images = np.concatenate([b["image"] for b in batches])
        return images.reshape(len(images), -1) / 255.0, np.concatenate(
            [b["label"] for b in batches])

    train_x, train_y = split("train")
    test_x, test_y = split("test")
    model = SVC(C=10.0, gamma="scale").fit(train_x, train_y)
    return model, float((model.predict(test_x) == test_y).mean())


def eval_prompts(config) -> list[tuple[str, int | None, str]]:
    """(prompt, the digit it names or None, group) of the prompt-following evaluation."""
    given = read_prompts(config.eval.get("prompts", ""), "eval.prompts", allow_empty=True)
    if given:
        return [(p, digit_captions.named_digit(p), "given") for p in given]
    if is_digits(config):
        return digit_captions.naming_prompts()
    return []


def prompt_samples(config, generate: Callable, params, batch_size: int,
                   encoded: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 samples, prompt index per sample): eval.prompt_num_samples images, the encoded
    prompts cycled."""
    count = int(config.eval.prompt_num_samples)
    index = np.arange(count) % len(encoded["mask"])
    base = jax.random.fold_in(jax.random.key(config.seed), PROMPT_SALT)
    parts = []
    for batch, begin in enumerate(range(0, count, batch_size)):
        rows = index[begin:begin + batch_size]
        cond = {k: np.resize(v[rows], (batch_size, *v.shape[1:])) for k, v in encoded.items()}
        pixels, _, _ = draw_batch(config, generate, params, jax.random.fold_in(base, batch),
                                  batch_size, labels=cond)
        parts.append(pixels[:len(rows)])
    return np.concatenate(parts), index


def digit_scores(config, pixels: np.ndarray, digits: np.ndarray, groups: np.ndarray
                 ) -> dict[str, Any]:
    """The share of samples the classifier reads as the digit their prompt names."""
    classifier, test_accuracy = digit_classifier(str(config.data.data_dir or ""))
    named = digits >= 0
    predicted = classifier.predict(pixels.reshape(len(pixels), -1) / 255.0)
    correct = predicted == digits
    scores = {"prompt_accuracy": float(correct[named].mean()) if named.any() else None,
              "prompt_samples": int(named.sum()),
              "classifier_test_accuracy": test_accuracy,
              "classifier": "sklearn SVC(C=10, gamma='scale') on the 8x8 digits train split"}
    for group in sorted(set(groups[named])):
        members = named & (groups == group)
        scores[f"prompt_accuracy_{group}"] = float(correct[members].mean())
    return scores


class PromptFollowing:
    """The prompts of the evaluation, encoded once by the run's text encoder (outside any mesh
    context), and the metrics of a checkpoint's samples from them."""

    def __init__(self, config, clip_scorer=None):
        self.config, self.clip_scorer = config, clip_scorer
        self.table = eval_prompts(config)
        self.active = bool(self.table) and (clip_scorer is not None or is_digits(config))
        self.prompts = [p for p, _, _ in self.table]
        self.encoded = PromptEncoder(config)(self.prompts) if self.active else None

    def sample(self, generate: Callable, params, batch_size: int
               ) -> tuple[np.ndarray, np.ndarray] | None:
        """(prompt samples, prompt index per sample), or None when there is nothing to measure.
        Runs inside the model's mesh context."""
        if not self.active:
            return None
        return prompt_samples(self.config, generate, params, batch_size, self.encoded)

    def score(self, pixels: np.ndarray, index: np.ndarray) -> dict[str, Any]:
        """The metrics of the samples (outside any mesh context: sklearn, the CLIP model)."""
        config = self.config
        metrics: dict[str, Any] = {"prompt_set": "given" if config.eval.get("prompts", "")
                                   else "digits naming prompts"}
        if is_digits(config):
            digits = np.asarray([-1 if self.table[i][1] is None else self.table[i][1]
                                 for i in index])
            groups = np.asarray([self.table[i][2] for i in index])
            metrics.update(digit_scores(config, pixels, digits, groups))
        if self.clip_scorer is not None:
            metrics["clip_score_prompts"] = self.clip_scorer.score(
                pixels, [self.prompts[i] for i in index])
        return metrics
