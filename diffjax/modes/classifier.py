"""`--mode=train_classifier`: trains the noise-conditional classifier of classifier guidance into
WORKDIR/classifier (or classifier.pretrained).

The `classifier` section's network learns p(y | x_t) on the data set's labels, with x_t drawn by
the configured process (`sde` section) exactly as the diffusion loss draws it
(`diffjax.diffusion.classifier_guidance.classifier_loss`), by the same loop as every other
model: sharded, checkpointed, resumable, its loss and accuracy in TensorBoard. The classifier
section's train_steps, train_batch_size and lr replace the training ones. Sampling with
--config.sampling.classifier_scale=s then adds s * grad log p(y | x_t) to the score.
"""

from __future__ import annotations

from typing import Any

from diffjax.experiment import classifier_training_config, resolve_classifier_path


def train_classifier(config, workdir: str) -> dict[str, Any]:
    from diffjax.training.loop import train

    config = resolve_classifier_path(config, workdir)
    return train(classifier_training_config(config), config.classifier.pretrained,
                 task="classifier")
