"""Run one numbered notebook with papermill: the command of every DVC stage.

    python -m pluralign.pipeline.runner notebooks/00_policy_pretrain.ipynb

Why a runner instead of calling papermill in ``dvc.yaml``: the cpu profile must be
offline *before* the kernel imports ``huggingface_hub`` (it reads ``HF_HUB_OFFLINE`` once,
at import), the output folder must exist (DVC deletes outs before a stage runs), and the
executed copy must appear atomically so a failed run never looks like a finished one.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from pluralign.pipeline.assets import OFFLINE_ENV
from pluralign.pipeline.config import (
    ConfigError,
    StageConfig,
    load_stage_config,
    notebook_sections,
    read_params,
    resolve_profile,
)
from pluralign.pipeline.paths import ProjectPaths, project_root

# Notebook stream outputs keep every tqdm redraw: keep bars coarse in executed copies.
KERNEL_ENV = {"TQDM_MININTERVAL": "20", "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg"}


def kernel_environment(profile: str, root: Path) -> dict[str, str]:
    """Environment variables the kernel must start with for ``profile``."""
    env = {**KERNEL_ENV, "PLURALIGN_ROOT": str(root)}
    if profile == "cpu":
        env.update(OFFLINE_ENV)
    return env


def config_class(section: str) -> type[StageConfig]:
    """``pluralign.experiments.<section>.Config``, found by name: the runner is an entry
    point, so it may look up the experiment layer (library code passes the class instead)."""
    try:
        module = importlib.import_module(f"pluralign.experiments.{section}")
    except ModuleNotFoundError as err:
        if err.name != f"pluralign.experiments.{section}":
            raise
        raise ConfigError(f"{section}: no module pluralign.experiments.{section}") from None
    cls = getattr(module, "Config", None)
    if not (isinstance(cls, type) and issubclass(cls, StageConfig)):
        raise ConfigError(f"{module.__name__}: has no StageConfig subclass named Config")
    return cls


def run_notebook(
    notebook: str | os.PathLike[str],
    params_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    output_root: str | os.PathLike[str] | None = None,
) -> Path:
    """Execute ``notebook``; return the path of the executed copy under ``results/notebooks``."""
    import papermill

    root = project_root()
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: notebook not found")
    params_path = Path(params_file).resolve() if params_file else root / "params.yaml"
    chosen = resolve_profile(read_params(params_path), profile)
    sections = notebook_sections(root / "dvc.yaml")
    if notebook.stem in sections:  # a bad param fails here, before any kernel starts
        section = sections[notebook.stem]
        load_stage_config(section, config_class(section), params_path, chosen)
    out_root = Path(output_root).resolve() if output_root else root
    executed = ProjectPaths(out_root).executed_notebook(notebook.stem)
    executed.parent.mkdir(parents=True, exist_ok=True)
    partial = executed.with_name(f".{executed.stem}.running.ipynb")

    os.environ.update(kernel_environment(chosen, root))
    papermill.execute_notebook(
        str(notebook),
        str(partial),
        parameters={
            "params_file": str(params_path),
            "profile": chosen,
            "output_root": str(out_root),
        },
        cwd=str(root),
        progress_bar=False,
        # Stream the kernel's prints and (coarse, TQDM_MININTERVAL) progress bars to the console.
        stdout_file=sys.stdout,
        stderr_file=sys.stderr,
    )
    os.replace(partial, executed)
    return executed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", help="path of the notebook to execute")
    parser.add_argument("--params-file", help="params YAML (default: <root>/params.yaml)")
    parser.add_argument("--profile", choices=["cpu", "paper"], help="override params' profile")
    parser.add_argument("--output-root", help="write models/ and results/ under this folder")
    args = parser.parse_args(argv)
    try:
        executed = run_notebook(args.notebook, args.params_file, args.profile, args.output_root)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"executed notebook: {executed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
