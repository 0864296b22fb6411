"""Import path kept from diffjax's first layout: the processes now live in `diffjax.processes`
(one per file). `SDES`/`get_sde` are the registry and builder under their old names.
"""

from diffjax.processes import (  # noqa: F401
    PROCESSES as SDES,
    CosineVP,
    DiscreteDDPM,
    EDMProcess,
    LinearProcess,
    LinearSDE,
    RectifiedFlow,
    SubVPSDE,
    VESDE,
    VPSDE,
    broadcast_to_data,
    get_process as get_sde,
)

__all__ = [
    "SDES", "CosineVP", "DiscreteDDPM", "EDMProcess", "LinearProcess", "LinearSDE",
    "RectifiedFlow", "SubVPSDE", "VESDE", "VPSDE", "broadcast_to_data", "get_sde",
]
