"""Distillation teachers: a trained diffjax run, named by `model.teacher=WORKDIR`.

The teacher is rebuilt from the run's own record, so it keeps its process, parameterisation and
network even where the student's config differs: WORKDIR/config.json (over diffjax's current
schema: keys added since the run keep their defaults) and the EMA parameters of its newest
checkpoint, restored by the ordinary checkpoint code under the student's mesh. The student starts
from those weights (`initial_params`), so its network must be the teacher's; a mismatch names the
first parameter that differs.

The teacher's parameters are an argument of the compiled train step (`Objective.constants`),
not constants folded into it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp

from diffjax.config.schema import base_config
from diffjax.experiment import Experiment, build_experiment, newest_ema_params, open_checkpoints
from diffjax.storage import filesystem as fs, workdir as workdir_lib
from diffjax.storage.checkpoints import first_difference, flat_shapes


@dataclasses.dataclass
class Teacher:
    config: Any
    experiment: Experiment
    params: Any  # EMA parameters, sharded as the teacher's training state
    step: int

    @property
    def abstract_params(self):
        return self.experiment.spec.abstract.ema_params

    @property
    def shardings(self):
        return self.experiment.spec.shardings.ema_params


def _merge(node, values: dict, path: str = "") -> None:
    for key, value in values.items():
        if key not in node:
            logging.info("Teacher config key %s%s is not in this diffjax's schema; ignored.",
                         path, key)
            continue
        if hasattr(node[key], "keys"):
            if isinstance(value, dict):
                _merge(node[key], value, f"{path}{key}.")
            continue
        if isinstance(node[key], tuple) and isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        node[key] = value


def teacher_config(config):
    """The teacher run's config, with the student's mesh (it runs inside the student's step)."""
    run = fs.absolute(config.model.teacher)
    recorded = workdir_lib.recorded_config(run)
    if recorded is None:
        raise FileNotFoundError(
            f"model.teacher={config.model.teacher!r} has no {workdir_lib.CONFIG_FILE}: name the "
            f"--workdir of a finished diffjax training run (e.g. the one `make quickstart` "
            f"trains).")
    teacher = base_config()
    recorded = {k: v for k, v in recorded.items() if k != "mesh"}
    _merge(teacher, recorded)
    teacher.mesh = config.mesh.copy_and_resolve_references()
    teacher.model.teacher = ""
    teacher.training.objective = "diffusion"
    teacher.lock()
    return teacher


def teacher_experiment(config, devices=None) -> tuple[Any, Experiment]:
    teacher = teacher_config(config)
    if teacher.data.latent_dir or config.data.latent_dir:
        raise ValueError("model.teacher: distilling latent-diffusion runs is not supported; "
                         "distil a pixel-space run.")
    return teacher, build_experiment(teacher, devices)


def load_teacher(config, devices=None) -> Teacher:
    """The teacher of `config` with its newest checkpoint's EMA parameters."""
    teacher, experiment = teacher_experiment(config, devices)
    params, step = newest_ema_params(
        experiment, open_checkpoints(config.model.teacher),
        f"model.teacher={config.model.teacher!r} has no checkpoint; train it first.")
    logging.info("Teacher %s: step %d, %s, %s output.", config.model.teacher, step,
                 teacher.sde.name, teacher.model.parameterization)
    return Teacher(teacher, experiment, params, step)


def initial_params(student_params, teacher_params):
    """The student's initial parameters: the teacher's network, plus the student's own extra
    heads (sCM's log-variance) as initialised."""
    nested = isinstance(student_params, dict) and set(student_params) == {"net", "head"}
    network = student_params["net"] if nested else student_params
    difference = first_difference(flat_shapes(network), flat_shapes(teacher_params))
    if difference:
        raise ValueError(f"model.teacher: the student's network differs from the teacher's: "
                         f"{difference}. The student starts from the teacher's weights, so "
                         f"model.name and model.unet/model.dit must be the teacher's.")
    # Copies: the student's state is donated to the step, the teacher's arrays are not.
    teacher_params = jax.tree.map(lambda t, s: jnp.copy(jax.device_put(t, s.sharding)),
                                  teacher_params, network)
    return {**student_params, "net": teacher_params} if nested else teacher_params
