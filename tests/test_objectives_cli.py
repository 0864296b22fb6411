"""The digits variants of each objective: configs keep the schema, and each trains end to end."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import run_cli
from test_configs import flat_keys, load

from diffjax.config.schema import base_config

VARIANTS = ["edm", "flow", "ddpm", "sde=cosine", "edm,cond,dit", "flow,cond", "ddpm,dit",
            "test,ddpm,cond,dit"]


@pytest.mark.parametrize("arg", VARIANTS)
def test_variant_configs_keep_the_schema_and_build(arg):
    from diffjax.experiment import build_experiment

    config = load("digits.py").get_config(arg)
    assert flat_keys(config) == flat_keys(base_config())
    config.mesh.data = 1
    import jax

    experiment = build_experiment(config, jax.devices()[:1])
    name = next(part for part in arg.split(",") if part not in ("test", "cond", "dit"))
    name = name.replace("sde=", "")
    assert experiment.sde.name == name


def test_conflicting_objectives_are_rejected():
    digits = load("digits.py")
    for arg in ("edm,flow", "sde=ve,ddpm", "sde=flow"):
        with pytest.raises(ValueError, match="one of sde=vp"):
            digits.get_config(arg)


@pytest.mark.parametrize("arg", ["test,edm,cond", "test,flow,dit", "test,ddpm"])
def test_objective_trains_and_samples_from_the_cli(tmp_path, arg):
    result = run_cli(f"--config=configs/digits.py:{arg}", f"--workdir={tmp_path}")
    assert "Trained to step 6" in result.stdout
    losses = [float(v) for v in re.findall(r"\bloss[= ]([-\d.e+]+|nan|inf)", result.stderr)]
    assert losses and all(np.isfinite(losses)), losses
    assert os.path.exists(tmp_path / "samples" / "step_00000006.png")
