"""A notebook runs the way JupyterLab runs it: kernel in notebooks/, no injected parameters.

JupyterLab (and ``jupyter nbconvert --execute``) start the kernel with the notebook's folder
as working directory and run the ``parameters`` cell as written, so ``params_file =
"params.yaml"`` must be found from the project root, not from ``notebooks/``. The project
root here is a temporary copy (``PLURALIGN_ROOT``) with tiny params, so nothing in the
repository is overwritten.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
from helpers import GUARD, ROOT, TINY_PARAMS, write_params
from nbclient import NotebookClient


def test_a_notebook_runs_from_notebooks_without_papermill(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    write_params(root / "params.yaml", TINY_PARAMS)
    notebook = root / "notebooks" / "01_clone_theory.ipynb"
    shutil.copy(ROOT / "notebooks" / notebook.name, notebook)
    log = tmp_path / "netguard.log"
    monkeypatch.setenv("PLURALIGN_ROOT", str(root))
    monkeypatch.setenv("PYTHONPATH", str(GUARD))
    monkeypatch.setenv("NETGUARD_LOG", str(log))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(notebook, as_version=4)
    assert 'params_file = "params.yaml"' in nb.cells[1].source  # relative, as committed
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
    ).execute()

    metrics = json.loads((root / "results" / "metrics" / "01_clone_theory.json").read_text())
    assert metrics["claim1_mle_order_flipped"] in (0, 1)
    assert (root / "results" / "figures" / "01_clone_theory_example.png").stat().st_size > 1000
    assert not (root / "notebooks" / "results").exists()  # nothing written relative to the cwd
    assert not log.exists() or log.read_text() == ""
