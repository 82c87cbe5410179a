"""The few lines every notebook shares after its ``parameters`` cell.

A notebook calls :func:`start_stage` once with its stage name and config class: it checks
the notebook's parameters, loads the typed config, seeds everything, sets the plot theme and
returns where to write. :meth:`Stage.finish` writes the metrics, the details and the run
manifest atomically. Keeping this here keeps notebooks thin and makes the stage contract
(paths, manifest, seeding) testable.

Paths given to :func:`start_stage` are taken from the project root when relative, so a
notebook opened in JupyterLab (kernel started in ``notebooks/``) finds ``params.yaml``.
"""

from __future__ import annotations

import ast
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pluralign.pipeline.assets import use_offline_hub
from pluralign.pipeline.config import (
    ConfigError,
    Overrides,
    StageConfig,
    load_stage_config,
    notebook_sections,
    parse_overrides,
)
from pluralign.pipeline.io import (
    METRIC_DIGITS,
    round_metrics,
    run_manifest,
    set_seed,
    split_headline,
    write_json_atomic,
)
from pluralign.pipeline.outputs import STAGE_INTO, choose_output_root
from pluralign.pipeline.paths import ProjectPaths, project_root
from pluralign.pipeline.plotting import set_theme

C = TypeVar("C", bound=StageConfig)

#: The names a notebook's ``parameters`` cell defines; papermill may set these and no other.
NOTEBOOK_PARAMETERS = ("params_file", "profile", "output_root", "overrides")
#: At most this many headline metrics per stage, so DVC's tables fit a terminal.
MAX_HEADLINE = 15


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One running stage: its DVC name, typed config, output paths and overrides."""

    name: str
    config: C
    paths: ProjectPaths
    overrides: dict[str, Any]

    def finish(
        self,
        metrics: dict[str, Any],
        timings: dict[str, Any] | None = None,
        *,
        headline: tuple[str, ...],
        not_written: Mapping[str, str] | None = None,
    ) -> Path:
        """Write the stage's details, metrics and manifest; return the metrics path.

        ``results/details/<stage>.json`` gets every number; ``results/metrics/<stage>.json``
        (what DVC lists) only the ``headline`` keys (flattened, at most ``MAX_HEADLINE``).
        Both are rounded to ``METRIC_DIGITS`` significant digits, so a rerun on the same
        machine kind writes the same bytes. ``metrics`` must be a function of the params
        alone and may nest (flattened as ``a.b.c``); wall-clock numbers go to ``timings``,
        kept in the run manifest (``results/manifests/<stage>.json``).

        ``not_written`` maps an output ``dvc.yaml`` declares to why this run does not produce
        it (notebook 05's Llama proxy on the paper profile): the runner then removes the
        previous run's copy instead of failing, so no stale file passes for this run's.
        """
        if len(headline) > MAX_HEADLINE:
            raise ValueError(
                f"{self.name}: {len(headline)} headline metrics, at most {MAX_HEADLINE}: DVC "
                "lists each as a column; keep the rest in the details"
            )
        details = round_metrics(metrics)
        top, missing = split_headline(details, headline)
        if missing:  # e.g. a claim that is only stated with power: visible, not fatal
            warnings.warn(
                f"{self.name}: headline metrics this run did not report: {missing}", stacklevel=2
            )
        manifest = run_manifest(self.name, self.config, project_root())
        manifest |= {
            "overrides": self.overrides,
            "metric_digits": METRIC_DIGITS,
            "not_written": dict(not_written or {}),
            "timings": timings or {},
        }
        write_json_atomic(self.paths.manifest(self.name), manifest)
        write_json_atomic(self.paths.details(self.name), details)
        return write_json_atomic(self.paths.metrics(self.name), top)


def injected_parameters() -> list[str]:
    """Names papermill injected into this kernel (its ``# Parameters`` cells), if any.

    papermill only *warns* about a parameter the notebook does not define, then runs the
    defaults: a typo'd ``-p clone_k 8`` would silently rewrite the committed results. The
    injected cell is in IPython's input history, so the stage can check it."""
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    if shell is None:
        return []
    names: list[str] = []
    for source in shell.user_ns.get("In", []):
        if not source.lstrip().startswith("# Parameters"):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        names += [
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        ]
    return names


def check_parameters(stage: str, section: str, names: list[str]) -> None:
    """Refuse injected names that are not notebook parameters, pointing to ``overrides``."""
    unknown = sorted(set(names) - set(NOTEBOOK_PARAMETERS))
    if unknown:
        example = ", ".join(f"{n}: ..." for n in unknown)
        raise ConfigError(
            f"{stage}: unknown notebook parameter(s) {unknown} (parameters: "
            f"{', '.join(NOTEBOOK_PARAMETERS)}). To change keys of params section {section!r}, "
            f"pass them as overrides: papermill ... -p overrides '{{{example}}}'"
        )


def start_stage(
    name: str,
    config_class: type[C],
    params_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    output_root: str | os.PathLike[str] | None = None,
    overrides: Overrides = None,
) -> Stage[C]:
    """Check the notebook's parameters, load the stage's params section for ``profile`` with
    ``overrides``, seed, theme; return the paths to write under.

    ``output_root`` defaults to the project root when the resolved config is the one
    ``params.yaml`` gives, and to ``scratch/<stage>-<hash>/`` otherwise, so that a run with
    another config never overwrites the committed results."""
    sections = notebook_sections()
    if name not in sections:
        raise ConfigError(f"{name}: not a stage of dvc.yaml (stages: {sorted(sections)})")
    check_parameters(name, sections[name], injected_parameters())
    config = load_stage_config(sections[name], config_class, params_file, profile, overrides)
    root = choose_output_root(name, params_file, profile, overrides, output_root)
    staging = os.environ.get(STAGE_INTO)  # under the runner: write there, it promotes
    if config.profile == "cpu":
        use_offline_hub()
    set_seed(config.seed)
    set_theme()
    paths = ProjectPaths(Path(staging) if staging else root, upstream=project_root())
    return Stage(name=name, config=config, paths=paths, overrides=parse_overrides(overrides))
