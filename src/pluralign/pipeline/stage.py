"""The few lines every notebook shares after its ``parameters`` cell.

A notebook calls :func:`start_stage` once with its stage name and config class: it loads
the typed config, seeds everything, sets the plot theme and returns where to write.
:meth:`Stage.finish` writes the metrics JSON and the run manifest atomically. Keeping this
here keeps notebooks thin and makes the stage contract (paths, manifest, seeding) testable.

Paths given to :func:`start_stage` are taken from the project root when relative, so a
notebook opened in JupyterLab (kernel started in ``notebooks/``) finds ``params.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pluralign.pipeline.assets import use_offline_hub
from pluralign.pipeline.config import ConfigError, StageConfig, load_stage_config, notebook_sections
from pluralign.pipeline.io import run_manifest, set_seed, write_json_atomic
from pluralign.pipeline.paths import ProjectPaths, from_root, project_root
from pluralign.pipeline.plotting import set_theme

C = TypeVar("C", bound=StageConfig)


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One running stage: its DVC name, typed config and output paths."""

    name: str
    config: C
    paths: ProjectPaths

    def finish(self, metrics: dict[str, Any], timings: dict[str, Any] | None = None) -> Path:
        """Write ``results/metrics/<stage>.json`` and ``results/manifests/<stage>.json``.

        ``metrics`` must be a function of the params alone (same params, same metrics); it
        may nest (DVC flattens nested JSON as ``a.b.c``). Wall-clock numbers such as
        tokens/s go to ``timings``, kept in the run manifest.
        """
        manifest = run_manifest(self.name, self.config, project_root())
        manifest["timings"] = timings or {}
        write_json_atomic(self.paths.manifest(self.name), manifest)
        return write_json_atomic(self.paths.metrics(self.name), metrics)


def start_stage(
    name: str,
    config_class: type[C],
    params_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    output_root: str | os.PathLike[str] | None = None,
) -> Stage[C]:
    """Load the stage's params section for ``profile``, seed, theme; paths under
    ``output_root`` (default: the project root)."""
    sections = notebook_sections()
    if name not in sections:
        raise ConfigError(f"{name}: not a stage of dvc.yaml (stages: {sorted(sections)})")
    config = load_stage_config(sections[name], config_class, params_file, profile)
    if config.profile == "cpu":
        use_offline_hub()
    set_seed(config.seed)
    set_theme()
    root = from_root(output_root) if output_root else project_root()
    return Stage(name=name, config=config, paths=ProjectPaths(root))
