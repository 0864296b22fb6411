"""Where scalars and images go: TensorBoard always, Weights & Biases when asked.

`create_writer(workdir, config)` returns one clu MetricWriter for process 0 (every other process
gets a writer that drops everything). TensorBoard event files go to WORKDIR (any tf.io.gfile path,
gs:// included). With `--config.training.wandb_project=NAME` a W&B run is opened as well (the
`wandb` package is an optional extra: `pip install "diffjax[wandb]"`); W&B is off by default and
nothing in diffjax talks to the network otherwise. The console gets one concise progress line per
log interval from the training loop, not every scalar, so each number has one source.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import numpy as np
from clu import metric_writers
from clu.metric_writers import interface

from diffjax.storage.workdir import config_to_dict


class NullWriter(interface.MetricWriter):
    """For processes other than 0: every write is dropped."""

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_scalars(self, step, scalars):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class WandbWriter(NullWriter):
    """Scalars, images and the config to a W&B run (everything else is TensorBoard's)."""

    def __init__(self, config, workdir: str):
        try:
            self._wandb = importlib.import_module("wandb")
        except ImportError:
            raise ValueError("config.training.wandb_project is set but the wandb package is not "
                             "installed; pip install \"diffjax[wandb]\" or set "
                             "--config.training.wandb_project=''") from None
        t = config.training
        self._run = self._wandb.init(
            project=t.wandb_project, entity=t.wandb_entity or None,
            name=t.wandb_run_name or None, mode=t.wandb_mode, dir=workdir,
            config=config_to_dict(config), resume="allow",
            id=t.wandb_run_name or None)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        self._run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]):
        logged = {}
        for name, batch in images.items():
            batch = np.asarray(batch)
            logged[name] = [self._wandb.Image(image[..., 0] if image.shape[-1] == 1 else image)
                            for image in batch]
        self._run.log(logged, step=int(step))

    def write_hparams(self, hparams: Mapping[str, Any]):
        self._run.config.update(dict(hparams), allow_val_change=True)

    def close(self):
        self._run.finish()


def create_writer(workdir: str, config, *, is_chief: bool,
                  subdir: str | None = None) -> interface.MetricWriter:
    """TensorBoard (+ W&B) for process 0, a NullWriter elsewhere."""
    if not is_chief:
        return NullWriter()
    logdir = workdir if subdir is None else f"{workdir.rstrip('/')}/{subdir}"
    writers: list[interface.MetricWriter] = [metric_writers.SummaryWriter(logdir)]
    if config.training.get("wandb_project"):
        writers.append(WandbWriter(config, workdir))
    return metric_writers.AsyncMultiWriter(writers)
