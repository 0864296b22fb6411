"""Diffusion processes by name: every objective as a linear Gaussian process (see `base.py`).

`config.sde.name` selects one (the section keeps its historical name `sde`); the fields of that
section whose names match the process's dataclass fields configure it.

    name     process                                     network sees (diffjax.diffusion.parameterization)
    vp       VP SDE, beta linear (score_sde)              999 t
    subvp    sub-VP SDE (score_sde)                       999 t
    ve       VE SDE, sigma geometric (score_sde)          log sigma
    cosine   cosine VP, continuous (DPM-Solver's)         999 t
    ddpm     discrete DDPM, N steps (Ho et al., DiT)      the integer step n
    flow     rectified flow / flow matching (SiT, SD3)    1 - t (SiT's time)
    edm      sigma(t) = t (Karras et al.)                 ln(sigma) / 4 (EDM's c_noise)
"""

from __future__ import annotations

import dataclasses

from diffjax.diffusion.processes.base import (LinearProcess, LinearSDE, as_time, broadcast_to_data,
                                              float_dtype)
from diffjax.diffusion.processes.cosine import CosineVP
from diffjax.diffusion.processes.ddpm import DiscreteDDPM
from diffjax.diffusion.processes.edm import EDMProcess
from diffjax.diffusion.processes.flow import RectifiedFlow
from diffjax.diffusion.processes.subvp import SubVPSDE
from diffjax.diffusion.processes.ve import VESDE
from diffjax.diffusion.processes.vp import VPSDE

PROCESSES: dict[str, type[LinearProcess]] = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "cosine": CosineVP,
    "ddpm": DiscreteDDPM,
    "flow": RectifiedFlow,
    "edm": EDMProcess,
}


def get_process(sde_config) -> LinearProcess:
    """Builds the process named by `sde_config.name` from the matching fields of that section.

    Fields left None in the config (e.g. sigma_min/sigma_max) take the process's own default.
    """
    try:
        cls = PROCESSES[sde_config.name]
    except KeyError:
        raise ValueError(
            f"Unknown sde.name={sde_config.name!r}; choose one of {sorted(PROCESSES)}."
        ) from None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in sde_config.items():
        if key in fields and value is not None:
            default = fields[key].default
            cast = float if default is None else type(default)  # None: an optional float
            kwargs[key] = value if isinstance(value, str) else cast(value)
    return cls(**kwargs)


__all__ = [
    "PROCESSES", "CosineVP", "DiscreteDDPM", "EDMProcess", "LinearProcess", "LinearSDE",
    "RectifiedFlow", "SubVPSDE", "VESDE", "VPSDE", "as_time", "broadcast_to_data", "float_dtype",
    "get_process",
]
