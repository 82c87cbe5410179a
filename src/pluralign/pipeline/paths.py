"""All paths from one project root (cookiecutter-data-science), so a notebook runs from any
working directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def project_root() -> Path:
    """The repository root: ``$PLURALIGN_ROOT``, else the folder holding ``dvc.yaml``.

    Notebooks run with their own working directory, so every path is built from here
    (cookiecutter-data-science: "all paths from one project root").
    """
    env = os.environ.get("PLURALIGN_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "dvc.yaml").is_file() and (folder / "src" / "pluralign").is_dir():
                return folder
    raise FileNotFoundError(
        "cannot find the project root (a folder with dvc.yaml and src/pluralign); "
        "set PLURALIGN_ROOT"
    )


def from_root(path: str | os.PathLike[str]) -> Path:
    """``path`` as given if absolute, else relative to the project root (never to the
    working directory: JupyterLab starts a notebook's kernel in ``notebooks/``)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


@dataclass(frozen=True)
class ProjectPaths:
    """Where a stage reads and writes; tests point ``root`` at a temporary folder."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def model(self, name: str) -> Path:
        return self.models / name

    def checkpoints(self, stage: str) -> Path:
        """Resumable training state of a stage (not a DVC output; safe to delete)."""
        return self.root / "checkpoints" / stage

    def metrics(self, stage: str) -> Path:
        return self.results / "metrics" / f"{stage}.json"

    def figure(self, name: str) -> Path:
        return self.results / "figures" / f"{name}.png"

    def table(self, name: str) -> Path:
        return self.results / "tables" / f"{name}.csv"

    def manifest(self, stage: str) -> Path:
        return self.results / "manifests" / f"{stage}.json"

    def executed_notebook(self, stage: str) -> Path:
        return self.results / "notebooks" / f"{stage}.ipynb"
