"""Multi-host start-up: `jax.distributed.initialize` from flags, the environment or auto-detection.

Order of precedence: explicit settings (DIFFJAX_COORDINATOR_ADDRESS, DIFFJAX_NUM_PROCESSES,
DIFFJAX_PROCESS_ID, set by `launch/local.sh` or the --coordinator_address/... flags of main), then
JAX's own cluster detection (TPU VM metadata, SLURM, Open MPI, GKE), which `initialize()` with no
arguments performs. A single process on a workstation needs none of it.

With an explicit coordinator, process 0 runs JAX's coordination service in a helper process
(`coordinator.py`), so that the other processes survive process 0's death long enough to exit
with one line instead of JAX's abort.

DIFFJAX_DISTRIBUTED=auto (set by launch/tpu_vm.sh, xpk.sh, slurm.sbatch) asks for that detection
even where diffjax sees no sign of a cluster: a TPU VM slice names its workers only in the GCE
metadata server. DIFFJAX_LOCAL_DEVICE_IDS=0,1,... gives one process several local GPUs (SLURM
with one task per node); JAX's SLURM detection otherwise assumes one GPU per task.
"""

from __future__ import annotations

import contextlib
import logging
import os

import jax

from diffjax.parallel import peers
from diffjax.parallel.coordinator import CoordinatorProcess

_ENV_ADDRESS = "DIFFJAX_COORDINATOR_ADDRESS"
_ENV_NUM = "DIFFJAX_NUM_PROCESSES"
_ENV_ID = "DIFFJAX_PROCESS_ID"
_ENV_CPU_COLLECTIVES = "DIFFJAX_CPU_COLLECTIVES"
_ENV_AUTO = "DIFFJAX_DISTRIBUTED"
_ENV_LOCAL_DEVICES = "DIFFJAX_LOCAL_DEVICE_IDS"


def _on_cluster() -> bool:
    """True where JAX's auto-detection will find peers (TPU pod slice, SLURM job, ...)."""
    if os.environ.get(_ENV_AUTO) == "auto":
        return True
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if os.environ.get("TPU_WORKER_HOSTNAMES") and "," in os.environ["TPU_WORKER_HOSTNAMES"]:
        return True
    return os.environ.get("OMPI_COMM_WORLD_SIZE", "1") != "1"


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    if jax.distributed.is_initialized():
        return
    if coordinator_address:
        # CPU multi-process jobs (tests, launch/local.sh) need a CPU collectives backend.
        if os.environ.get(_ENV_CPU_COLLECTIVES):
            jax.config.update("jax_cpu_collectives_implementation",
                              os.environ[_ENV_CPU_COLLECTIVES])
        with _service_in_helper_process(process_id == 0):
            jax.distributed.initialize(coordinator_address=coordinator_address,
                                       num_processes=num_processes, process_id=process_id,
                                       heartbeat_timeout_seconds=peers.HEARTBEAT_TIMEOUT_S)
        if os.environ.get(_ENV_CPU_COLLECTIVES):
            # XLA:CPU cache keys differ between processes and only process 0 writes entries, so
            # on a rerun process 0 loads its programs in seconds while the others compile for
            # minutes, and gloo abandons a collective after 30 s of such skew. Compiling
            # everywhere keeps the processes in step.
            jax.config.update("jax_enable_compilation_cache", False)
    elif _on_cluster():
        local = os.environ.get(_ENV_LOCAL_DEVICES)
        jax.distributed.initialize(
            local_device_ids=[int(i) for i in local.split(",")] if local else None,
            heartbeat_timeout_seconds=peers.HEARTBEAT_TIMEOUT_S)
    else:
        return
    peers.register()
    logging.info("jax.distributed: process %d of %d.", jax.process_index(), jax.process_count())


class _JaxlibWithHelperService:
    """jaxlib's module as `jax.distributed` sees it, except that the coordination service it
    starts runs in a helper process. (JAX 0.10.2's State.initialize calls
    `_jax.get_distributed_runtime_service` when process_id == 0 and `.shutdown()` on the result
    after the shutdown barrier; both keep working.)"""

    def __init__(self, jaxlib_module):
        self._jaxlib = jaxlib_module

    def __getattr__(self, name):
        return getattr(self._jaxlib, name)

    @staticmethod
    def get_distributed_runtime_service(address, num_nodes, **options):
        return CoordinatorProcess(address, num_nodes, **options)


@contextlib.contextmanager
def _service_in_helper_process(enabled: bool):
    from jax._src import distributed as jax_distributed

    jaxlib_module = getattr(jax_distributed, "_jax", None)
    if not enabled or jaxlib_module is None:  # another JAX: its own service, as before
        yield
        return
    jax_distributed._jax = _JaxlibWithHelperService(jaxlib_module)
    try:
        yield
    finally:
        jax_distributed._jax = jaxlib_module


def initialize_from_environment() -> None:
    address = os.environ.get(_ENV_ADDRESS)
    initialize(
        coordinator_address=address,
        num_processes=int(os.environ[_ENV_NUM]) if address else None,
        process_id=int(os.environ[_ENV_ID]) if address else None,
    )


def broadcast_from_chief(value: int) -> int:
    """Process 0's integer on every process, so that all of them take the same branch."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    import numpy as np

    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
