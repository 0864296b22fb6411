"""Orbax checkpoints of the training state and the data iterator, in WORKDIR/checkpoints/<step>/.

Saves are asynchronous (training continues while the arrays are written) and atomic (Orbax writes
to a temporary folder and renames it when complete), so a run killed mid-save leaves the previous
checkpoint as the newest valid one. Restoring takes the abstract state with its shardings, so a
checkpoint written under one mesh restores under any other.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from diffjax.train_state import ShardedStateSpec, TrainState


class Checkpointer:
    def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    data=ocp.args.JsonSave(data_state)),
            force=True,
        )

    def restore(self, spec: ShardedStateSpec, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"No checkpoint in {self.directory}; train first (--mode=train) or pass the "
                f"--workdir of a training run."
            )
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(spec.abstract),
                                    data=ocp.args.JsonRestore()),
        )
        return restored["state"], restored["data"]

    def reached_preemption(self, step: int) -> bool:
        """True on every host once the cluster signalled preemption (TPU/multi-host)."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
