"""All paths from one project root (cookiecutter-data-science), so a notebook runs from any
working directory."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

#: Where runs whose config differs from params.yaml write by default (git- and DVC-ignored),
#: so they never overwrite the committed ``results/``.
SCRATCH = "scratch"
_WARNED: set[tuple[Path, Path]] = set()


def _checkout_of(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding ``dvc.yaml`` and ``src/pluralign``."""
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "src" / "pluralign").is_dir():
            return folder
    return None


def project_root() -> Path:
    """The repository root: ``$PLURALIGN_ROOT``, else the checkout holding the working
    directory, else the checkout the package is installed from.

    The working directory wins because one environment often serves several clones (a shared
    conda env, an editable install of one of them): results must land in the clone you stand
    in. When the package is imported from another checkout, a warning says so, since that
    clone's code, not this one's, is what runs.
    """
    env = os.environ.get("PLURALIGN_ROOT")
    if env:
        return Path(env).resolve()
    here = _checkout_of(Path.cwd().resolve())
    installed = _checkout_of(Path(__file__).resolve())
    if here is not None:
        if installed is not None and installed != here and (here, installed) not in _WARNED:
            _WARNED.add((here, installed))  # once per process, not at every path lookup
            warnings.warn(
                f"writing to the checkout you are in ({here}), but pluralign is imported from "
                f"another checkout ({installed}): its code, not this one's, runs. Install this "
                f"clone (pip install -e {here}) or set PLURALIGN_ROOT to silence this.",
                stacklevel=2,
            )
        return here
    if installed is not None:
        return installed
    raise FileNotFoundError(
        "cannot find the project root (a folder with dvc.yaml and src/pluralign) from the "
        f"working directory {Path.cwd()} or the package's location; set PLURALIGN_ROOT"
    )


def from_root(path: str | os.PathLike[str]) -> Path:
    """``path`` as given if absolute, else relative to the project root (never to the
    working directory: JupyterLab starts a notebook's kernel in ``notebooks/``)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


@dataclass(frozen=True)
class ProjectPaths:
    """Where a stage reads and writes; tests point ``root`` at a temporary folder.

    ``upstream`` is where other stages' models are read from when ``root`` has none (a run
    writing to ``scratch/`` still uses the project's trained ``models/``); default: the
    project root."""

    root: Path
    upstream: Path | None = None

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def model(self, name: str) -> Path:
        return self.models / name

    def upstream_model(self, name: str) -> Path:
        """Model folder ``name`` written by another stage: under ``root`` if there, else
        under ``upstream`` (the project root by default)."""
        own = self.model(name)
        if own.exists():
            return own
        return (self.upstream or project_root()) / "models" / name

    def checkpoints(self, stage: str) -> Path:
        """Resumable training state of a stage (not a DVC output; safe to delete)."""
        return self.root / "checkpoints" / stage

    def metrics(self, stage: str) -> Path:
        """The stage's headline numbers: what ``dvc metrics show`` and ``dvc exp show`` list."""
        return self.results / "metrics" / f"{stage}.json"

    def details(self, stage: str) -> Path:
        """Every number the stage reports (a superset of :meth:`metrics`); a DVC output."""
        return self.results / "details" / f"{stage}.json"

    def figure(self, name: str) -> Path:
        return self.results / "figures" / f"{name}.png"

    def table(self, name: str) -> Path:
        return self.results / "tables" / f"{name}.csv"

    def manifest(self, stage: str) -> Path:
        return self.results / "manifests" / f"{stage}.json"

    def executed_notebook(self, stage: str) -> Path:
        return self.results / "notebooks" / f"{stage}.ipynb"
