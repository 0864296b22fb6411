"""The network a config builds, seen by a converter, and the checkpoint a conversion writes.

`Target` holds the experiment of the config, the shape of every parameter (without allocating
any) and the order in which the network calls its submodules. That order is what lets the
score_sde converter map `all_modules.<i>` (score_sde's flat module list, in forward order) onto
diffjax's names, and it orders parameters as torch registers them, so the first mismatch named
in an error is the first one in the checkpoint.

`write_checkpoint` stores converted weights as an ordinary training checkpoint in
WORKDIR/checkpoints/<step>/: parameters, EMA parameters, a fresh optimizer state and the data
stream at its start, so `--mode=sample/eval/likelihood` restore it unchanged and `--mode=train`
fine-tunes from it.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.experiment import Experiment, build_experiment, example_input
from diffjax.state.train_state import TrainState
from diffjax.storage import filesystem
from diffjax.storage.checkpoints import Checkpointer

Path = tuple[str, ...]
LEAF_ORDER = {"kernel": 0, "scale": 0, "frequencies": 0, "embedding": 0, "pos_embed": 0, "bias": 1}


def _flatten(tree, prefix: Path = ()) -> dict[Path, tuple[int, ...]]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, prefix + (str(key),)))
        return flat
    return {prefix: tuple(tree.shape)}


def _unflatten(flat: dict[Path, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


class CallRecorder:
    """Records (path, class name) of every submodule in the order a network first calls it,
    while the network is traced inside `with recorder:`."""

    def __init__(self):
        self.calls: list[tuple[Path, str]] = []
        self._seen: set[Path] = set()
        self._context = None

    def _record(self, next_fun, args, kwargs, context):
        path = tuple(context.module.scope.path) if context.module.scope else ()
        if context.method_name == "__call__" and path and path not in self._seen:
            self._seen.add(path)
            self.calls.append((path, type(context.module).__name__))
        return next_fun(*args, **kwargs)

    def __enter__(self):
        self._context = nn.intercept_methods(self._record)
        self._context.__enter__()
        return self

    def __exit__(self, *exc):
        return self._context.__exit__(*exc)


def module_calls(model: nn.Module, inputs: tuple) -> list[tuple[Path, str]]:
    """(path, class name) of every submodule, in the order the network first calls it."""
    if getattr(model, "remat", False):
        model = model.clone(remat=False)  # same parameters; lifted classes would hide names
    with CallRecorder() as recorder:
        jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, *inputs, train=False))
    return recorder.calls


@dataclasses.dataclass
class Target:
    experiment: Experiment
    shapes: dict[Path, tuple[int, ...]]  # every parameter, ordered as the network creates it
    calls: list[tuple[Path, str]]

    @property
    def config(self):
        return self.experiment.config

    def owner_class(self, path: Path) -> str:
        return dict(self.calls).get(path[:-1], "")

    def top_level(self) -> list[tuple[str, str]]:
        """Names and classes of the network's top-level submodules, in call order."""
        return [(path[0], cls) for path, cls in self.calls if len(path) == 1]


def build_target(config, task: str = "diffusion") -> Target:
    # The state's shapes come from tracing the network once; record its calls on the way.
    with CallRecorder() as recorder:
        experiment = build_experiment(config, task=task)
    calls = recorder.calls
    if getattr(experiment.model, "remat", False):
        calls = module_calls(experiment.model, example_input(config))
    shapes = _flatten(experiment.spec.abstract.params)
    order = {path: i for i, (path, _) in enumerate(calls)}
    ordered = sorted(shapes, key=lambda p: (order.get(p[:-1], -1), LEAF_ORDER.get(p[-1], 2), p))
    return Target(experiment, {p: shapes[p] for p in ordered}, calls)


def fresh_data_state() -> dict:
    """The position of a training data stream that has not started (diffjax.data's loader)."""
    import grain

    return iter(grain.MapDataset.range(1).to_iter_dataset()).get_state()


def check_empty(workdir: str) -> None:
    directory = filesystem.join(filesystem.absolute(workdir), "checkpoints")
    if filesystem.listdir(directory):
        raise ValueError(f"{directory} already holds checkpoints; convert into an empty "
                         f"--workdir (or delete them).")


def write_checkpoint(target: Target, params: dict[Path, np.ndarray],
                     ema_params: dict[Path, np.ndarray], step: int, workdir: str) -> str:
    """Saves the converted state; returns the checkpoint directory."""
    experiment = target.experiment
    missing = [p for p in target.shapes if p not in params or p not in ema_params]
    if missing:  # the rules cover every parameter; anything else is a converter bug
        raise AssertionError(f"converter produced no value for {missing[0]}")
    optimizer = experiment.optimizer

    def build(params, ema_params):
        return TrainState(step=jnp.asarray(step, jnp.int32), params=params, ema_params=ema_params,
                          opt_state=optimizer.init(params),
                          first_nonfinite_step=jnp.full((), -1, jnp.int32))

    with experiment.activate():
        state = jax.jit(build, out_shardings=experiment.spec.shardings)(
            _unflatten({p: params[p] for p in target.shapes}),
            _unflatten({p: ema_params[p] for p in target.shapes}))
    checkpointer = Checkpointer(workdir, max_to_keep=None, async_save=False)
    try:
        checkpointer.save(step, state, fresh_data_state())
        checkpointer.wait()
    finally:
        checkpointer.close()
    return filesystem.join(checkpointer.directory, str(step))
