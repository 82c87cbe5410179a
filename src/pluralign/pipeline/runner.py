"""Run one numbered notebook with papermill: the command of every DVC stage.

    python -m pluralign.pipeline.runner notebooks/00_policy_pretrain.ipynb
    python -m pluralign.pipeline.runner notebooks/01_clone_theory.ipynb --set clone_k=8

Why a runner instead of calling papermill in ``dvc.yaml``: the cpu profile must be
offline *before* the kernel imports ``huggingface_hub`` (it reads ``HF_HUB_OFFLINE`` once,
at import); a bad param must fail before any kernel starts; and a run must replace its
outputs only once it finished. The notebook writes into ``<root>/.staging/<stage>/`` (named
in the kernel's ``$PLURALIGN_STAGE_INTO``; its ``output_root`` parameter stays the real
destination) and the runner moves every output into place at the end
(:mod:`pluralign.pipeline.outputs`); DVC
declares them ``persist: true``, so a failed run leaves the previous outputs as they were.
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
    Overrides,
    StageConfig,
    load_stage_config,
    notebook_sections,
    parse_overrides,
    read_params,
    resolve_profile,
)
from pluralign.pipeline.outputs import (
    STAGE_INTO,
    choose_output_root,
    declared_outputs,
    prepare_staging,
    promote,
    run_not_written,
    upstream_inputs,
)
from pluralign.pipeline.paths import ProjectPaths, project_root

# Notebook stream outputs keep every tqdm redraw: keep bars coarse in executed copies. Without
# ipywidgets, tqdm.auto falls back to text bars in a kernel and warns about it in every log.
KERNEL_ENV = {
    "TQDM_MININTERVAL": "20",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
    "PYTHONWARNINGS": "ignore:IProgress not found",
}


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
    overrides: Overrides = None,
) -> Path:
    """Execute ``notebook``; return the path of the executed copy under ``results/notebooks``.

    Outputs go to ``output_root``; by default the project root, or ``scratch/`` when the
    config (params file, profile, overrides) differs from ``params.yaml``."""
    import papermill

    root = project_root()
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: notebook not found")
    stage = notebook.stem
    params_path = Path(params_file).resolve() if params_file else root / "params.yaml"
    chosen = resolve_profile(read_params(params_path), profile)
    changes = parse_overrides(overrides)
    sections = notebook_sections(root / "dvc.yaml")
    if stage in sections:  # a bad param fails here, before any kernel starts
        load_stage_config(
            sections[stage], config_class(sections[stage]), params_path, chosen, changes
        )
        dest = choose_output_root(stage, params_path, chosen, changes, output_root)
    else:
        dest = Path(output_root).resolve() if output_root else root
    staging = prepare_staging(stage, dest, upstream_inputs(stage, root / "dvc.yaml"))
    executed = ProjectPaths(staging).executed_notebook(stage)
    executed.parent.mkdir(parents=True, exist_ok=True)

    os.environ.update(kernel_environment(chosen, root) | {STAGE_INTO: str(staging)})
    try:
        papermill.execute_notebook(
            str(notebook),
            str(executed),
            parameters={
                "params_file": str(params_path),
                "profile": chosen,
                "output_root": str(dest),  # the executed copy names where results go
                "overrides": changes,
            },
            cwd=str(root),
            progress_bar=False,
            # Stream the kernel's prints and (coarse) progress bars to the console.
            stdout_file=sys.stdout,
            stderr_file=sys.stderr,
        )
    except BaseException:
        print(
            f"{stage}: the run failed; the previous outputs in {dest} are untouched; this "
            f"run's partial files and executed notebook are in {staging}",
            file=sys.stderr,
        )
        raise
    declared = declared_outputs(stage, root / "dvc.yaml")
    promote(staging, dest, declared, run_not_written(staging, stage))
    return ProjectPaths(dest).executed_notebook(stage)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: want KEY=VALUE (e.g. ppo.kl_coef=0.1)")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", help="path of the notebook to execute")
    parser.add_argument("--params-file", help="params YAML (default: <root>/params.yaml)")
    parser.add_argument("--profile", choices=["cpu", "paper"], help="override params' profile")
    parser.add_argument(
        "--output-root",
        help="write models/ and results/ under this folder (default: the project root, or "
        "scratch/<stage>-<hash> when the config differs from params.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="change one key of the stage's params section (VALUE is YAML); repeatable",
    )
    args = parser.parse_args(argv)
    try:
        overrides = {k: parse_overrides(f"v: {v}")["v"] for k, v in args.overrides}
        executed = run_notebook(
            args.notebook, args.params_file, args.profile, args.output_root, overrides
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"executed notebook: {executed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
