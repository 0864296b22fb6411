"""The package layout stays true: `ls diffjax/` shows the architecture and imports run one way.

Imports are read with `ast` (every import statement, inside functions too), so a lazy import that
goes the wrong way counts like a top-level one.

    entry points   diffjax (the notebook surface), diffjax.main, any __main__
    modes          the CLI's modes and their pre-flight validation
    workflows      training, sampling, evaluation, convert, pipelines
    experiment     what a config builds: the network, process, state, first stage
    foundations    models, text, lora, latents, diffusion, data, parallel, storage, state, outputs,
                   config
    runtime        XLA flags, logs, console, preemption, this host's processes, the CLI's errors
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "diffjax"

LAYERS = (
    ("diffjax", "main"),
    ("modes",),
    ("training", "sampling", "evaluation", "convert", "pipelines"),
    ("experiment",),
    ("models", "text", "lora", "latents", "diffusion", "data", "parallel", "storage", "state",
     "outputs", "config"),
    ("runtime",),
)
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}
LOOSE_MODULES_ALLOWED = 4
FORBIDDEN_BELOW_MODES = ("modes", "training", "evaluation")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """The diffjax modules `name` imports (a `from pkg import submodule` names the submodule)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {m for m in found if m.split(".")[0] == "diffjax" and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def unit_of(module: str) -> str:
    """The architectural unit: the top-level package, or the loose module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "diffjax"


def _is_entry_point(module: str) -> bool:
    return module in ("diffjax", "diffjax.main") or module.endswith(".__main__")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_at_most_four_loose_modules():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= LOOSE_MODULES_ALLOWED, loose


def test_every_unit_has_a_layer():
    units = {unit_of(m) for m in MODULES}
    assert units <= set(LAYER_OF), sorted(units - set(LAYER_OF))


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for name, path in MODULES.items():
        if path.name == "__init__.py" and name.count(".") == 1:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "import" in doc.lower(), f"{name}'s docstring does not say what it imports"


def test_no_import_cycle_between_modules():
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_packages():
    units: dict[str, set[str]] = {}
    for module, deps in GRAPH.items():
        units.setdefault(unit_of(module), set()).update(
            unit_of(d) for d in deps if unit_of(d) != unit_of(module))
    assert _cycles(units) == []


def test_imports_run_one_way():
    wrong = [f"{module} imports {dep}" for module, deps in sorted(GRAPH.items())
             if not _is_entry_point(module) for dep in sorted(deps)
             if LAYER_OF[unit_of(dep)] < LAYER_OF[unit_of(module)]]
    assert wrong == []


@pytest.mark.parametrize("forbidden", FORBIDDEN_BELOW_MODES)
def test_nothing_below_the_modes_imports(forbidden):
    below = [m for m in GRAPH if not _is_entry_point(m)
             and LAYER_OF[unit_of(m)] > LAYER_OF["modes"] and unit_of(m) != forbidden]
    wrong = [f"{m} imports {d}" for m in below for d in GRAPH[m] if unit_of(d) == forbidden]
    assert wrong == []


def test_the_rules_catch_a_wrong_import(tmp_path):
    """The parser sees lazy imports, relative imports and submodules named in `from` lists."""
    source = ("def f():\n    from diffjax.modes import preflight\n"
              "from ..training import loop\nfrom diffjax import storage\n")
    path = tmp_path / "fake.py"
    path.write_text(source)
    found = _imports("diffjax.storage.fake", path)
    assert {"diffjax.modes.preflight", "diffjax.training.loop"} <= found
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
