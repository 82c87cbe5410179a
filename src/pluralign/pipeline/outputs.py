"""Where a run writes, so that results are never overwritten, lost or misplaced.

Two rules:

* **A run whose config differs from ``params.yaml`` writes to ``scratch/``**, not to the
  committed ``results/``, unless the user names an output root. "Differs" compares what the
  stage would resolve (its params sections for the profile, plus any overrides) with what
  ``params.yaml`` resolves; ``dvc exp run -S`` edits ``params.yaml`` itself, so DVC
  experiments still write ``results/``, which DVC tracks per experiment.
* **A run replaces its outputs only when it finished.** The runner executes the notebook
  with ``$PLURALIGN_STAGE_INTO`` naming a staging folder (``<root>/.staging/<stage>``), where
  :func:`pluralign.pipeline.stage.start_stage` writes, and moves each output into place at
  the end, one rename each; DVC declares the outputs ``persist: true`` so it does not delete
  them first. A bad param, a crash or a kill leaves the previous outputs as they were.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pluralign.pipeline.config import (
    DEFAULT_PARAMS_FILE,
    ConfigError,
    Overrides,
    deep_merge,
    parse_overrides,
    profile_section,
    read_params,
    resolve_profile,
    stage_param_sections,
)
from pluralign.pipeline.io import config_fingerprint, flatten, remove_path, swap_dir
from pluralign.pipeline.paths import SCRATCH, from_root, project_root

STAGING = ".staging"
#: Set by the runner in the kernel's environment: the folder the stage writes into, while the
#: notebook's ``output_root`` parameter (and so the executed copy) names the real destination.
STAGE_INTO = "PLURALIGN_STAGE_INTO"


# --------------------------------------------------------------------------- default root


def resolved_run(
    stage: str,
    params_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    overrides: Overrides = None,
) -> dict[str, Any]:
    """What decides a run of ``stage``: the profile and each params section it reads,
    resolved for that profile, with ``overrides`` applied to its own section."""
    sections = stage_param_sections()
    if stage not in sections:
        raise ConfigError(f"{stage}: not a notebook stage of dvc.yaml (stages: {sorted(sections)})")
    params = read_params(params_file)
    chosen = resolve_profile(params, profile)
    run: dict[str, Any] = {"profile": chosen}
    for name in sections[stage]:
        if name not in params:
            raise ConfigError(f"{name}: section missing from the params file")
        run[name] = profile_section(params[name], chosen, name)
    own = sections[stage][0]
    run[own] = deep_merge(run[own], parse_overrides(overrides))
    return run


def config_changes(
    stage: str,
    params_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    overrides: Overrides = None,
) -> list[str]:
    """``key: committed -> this run`` for each key where this run's config differs from
    what the project's ``params.yaml`` resolves; empty when they agree."""
    mine = flatten(resolved_run(stage, params_file, profile, overrides))
    base = flatten(resolved_run(stage, DEFAULT_PARAMS_FILE))
    missing = object()
    return [
        f"{key}: {base.get(key, '(absent)')!r} -> {mine.get(key, '(absent)')!r}"
        for key in sorted(mine.keys() | base.keys())
        if mine.get(key, missing) != base.get(key, missing)
    ]


def scratch_root(stage: str, run: dict[str, Any]) -> Path:
    """``scratch/<stage>-<hash of the resolved run>``: one folder per distinct config."""
    return project_root() / SCRATCH / f"{stage}-{config_fingerprint(run)}"


def choose_output_root(
    stage: str,
    params_file: str | os.PathLike[str] | None,
    profile: str | None,
    overrides: Overrides,
    output_root: str | os.PathLike[str] | None,
) -> Path:
    """The named ``output_root``; else the project root when this run's config is the one
    ``params.yaml`` resolves; else a ``scratch/`` folder, announced with what differs."""
    if output_root is not None:
        return from_root(output_root)
    changes = config_changes(stage, params_file, profile, overrides)
    if not changes:
        return project_root()
    root = scratch_root(stage, resolved_run(stage, params_file, profile, overrides))
    shown = "\n  ".join(changes[:10]) + ("\n  ..." if len(changes) > 10 else "")
    print(
        f"{stage}: this run's config differs from params.yaml:\n  {shown}\n"
        f"so it writes to {root} (pass output_root to choose), not to the committed results/."
    )
    return root


# --------------------------------------------------------------------------- staging


def declared_outputs(stage: str, dvc_file: str | os.PathLike[str] | None = None) -> list[str]:
    """Every path ``dvc.yaml`` declares for ``stage`` (outs, metrics, plots), relative."""
    path = Path(dvc_file) if dvc_file is not None else project_root() / "dvc.yaml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"].get(stage, {})
    entries = spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", [])
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def upstream_inputs(stage: str, dvc_file: str | os.PathLike[str] | None = None) -> list[str]:
    """The deps of ``stage`` that other stages produce (``models/policy``)."""
    path = Path(dvc_file) if dvc_file is not None else project_root() / "dvc.yaml"
    stages = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"]
    produced = {o for s in stages if s != stage for o in declared_outputs(s, path)}
    return [d for d in stages.get(stage, {}).get("deps", []) if d in produced]


def prepare_staging(stage: str, dest: Path, inputs: Iterable[str]) -> Path:
    """An empty ``<dest>/.staging/<stage>`` whose upstream inputs and ``checkpoints/`` are
    links into ``dest`` (checkpoints must outlive a failed run: that is what resume reads).
    An input missing from ``dest`` is linked from the project root, as
    :meth:`ProjectPaths.upstream_model` would read it."""
    staging = dest / STAGING / stage
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for rel in [*inputs, "checkpoints"]:
        source = dest / rel
        if rel != "checkpoints" and not source.exists():
            source = project_root() / rel
        if rel == "checkpoints":
            source.mkdir(parents=True, exist_ok=True)
        link = staging / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source.resolve(), target_is_directory=True)
    return staging


def promote(
    staging: Path, dest: Path, declared: Iterable[str], not_written: Mapping[str, str] | None = None
) -> list[Path]:
    """Move what the run wrote from ``staging`` into ``dest`` and remove ``staging``.

    Every declared output must be there (else ConfigError, nothing moved) unless
    ``not_written`` says why this run does not produce it; then the previous run's copy in
    ``dest`` is removed, so that it cannot pass for this run's. A declared folder (a model)
    replaces the old one whole; other files the notebook wrote move one by one. Each move is
    a rename, so a reader sees the old file or the new one."""
    declared = list(declared)
    skipped = dict(not_written or {})
    unknown = sorted(set(skipped) - set(declared))
    if unknown:
        raise ConfigError(
            f"not_written names {unknown}, which dvc.yaml does not declare for this stage "
            f"(declared: {declared}); nothing moved, this run's files kept in {staging}"
        )
    declared = [rel for rel in declared if rel not in skipped]
    missing = [rel for rel in declared if not (staging / rel).exists()]
    if missing:
        raise ConfigError(
            f"the run finished without writing {', '.join(missing)}, which dvc.yaml declares; "
            f"previous outputs left in place, this run's files kept in {staging}"
        )
    moved = [_replace(staging / rel, dest / rel) for rel in declared]
    for rel, why in skipped.items():  # only once this run's outputs are in place
        remove_path(dest / rel)
        print(f"{rel}: not written by this run ({why}); no previous copy kept in its place")
    for folder, dirs, files in os.walk(staging):  # does not descend into the links
        for name in sorted(files):
            path = Path(folder) / name
            if not path.is_symlink():
                moved.append(_replace(path, dest / path.relative_to(staging)))
        dirs[:] = [d for d in dirs if not (Path(folder) / d).is_symlink()]
    shutil.rmtree(staging)
    return moved


def run_not_written(staging: Path, stage: str) -> dict[str, str]:
    """The ``not_written`` outputs the finished run recorded in its manifest."""
    manifest = staging / "results" / "manifests" / f"{stage}.json"
    if not manifest.is_file():
        return {}
    return dict(json.loads(manifest.read_text(encoding="utf-8")).get("not_written", {}))


def _replace(source: Path, target: Path) -> Path:
    if source.is_dir() and not source.is_symlink():
        return swap_dir(source, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return target
