"""notebooks/quickstart.ipynb runs top to bottom (on the tiny config) and shows a sample grid,
training with `diffjax.train` and sampling through `diffjax.load` (no internals);
notebooks/stable_diffusion.ipynb runs the three tiny Stable Diffusion folders."""

import os

import nbformat
from nbclient import NotebookClient

from conftest import REPO


def execute(monkeypatch, name: str):
    # The kernel imports this checkout's diffjax (not whichever one the environment installed).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [REPO, os.environ.get(
        "PYTHONPATH")])))
    path = os.path.join(REPO, "notebooks", name)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    return notebook, outputs, text


def test_quickstart_notebook_executes(monkeypatch):
    monkeypatch.setenv("DIFFJAX_NOTEBOOK_VARIANT", "test")
    path = os.path.join(REPO, "notebooks", "quickstart.ipynb")
    notebook = nbformat.read(path, as_version=4)
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "diffjax.train(" in source and "diffjax.load(workdir)" in source
    assert "build_experiment" not in source and "make_generate_fn" not in source
    _, outputs, text = execute(monkeypatch, "quickstart.ipynb")
    assert any("image/png" in o.get("data", {}) for o in outputs), "no sample grid displayed"
    assert "network evaluations" in text
    assert "OpenCV is not installed" not in text  # TFDS's advice, dropped at its source


def test_stable_diffusion_notebook_runs_the_three_tiny_folders(monkeypatch):
    monkeypatch.delenv("DIFFJAX_SD_FOLDERS", raising=False)
    _, outputs, text = execute(monkeypatch, "stable_diffusion.ipynb")
    for pipeline in ("StableDiffusionPipeline (DDIMScheduler)",
                     "StableDiffusionPipeline (EulerDiscreteScheduler)",
                     "StableDiffusionXLPipeline (EulerDiscreteScheduler)"):
        assert pipeline in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
