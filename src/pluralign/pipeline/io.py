"""Run hygiene: seeding, atomic writes, and the manifest written beside every output.

Why atomic: DVC and papermill treat "the file exists" as "the stage produced it". A stage
killed mid-write must leave either the previous file or nothing, never half a JSON file or
half a model folder, so every write goes to a temporary sibling and is renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

#: Packages whose versions decide what a run computes; recorded in every manifest.
TRACKED_PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "datasets",
    "accelerate",
    "peft",
    "sentence-transformers",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "seaborn",
    "matplotlib",
    "papermill",
    "dvc",
)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one value given by the params
    (``transformers.set_seed``; imported here so ``import pluralign.pipeline.io`` stays cheap)."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s suffix so writers that pick a format from the
    extension (matplotlib, pandas) still work.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Serialize fully in memory first, so an unserializable value never touches the disk."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_text_atomic(path, text)


def save_dir_atomic(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)`` and swap the finished folder into ``path``.

    Used for model folders (``save_pretrained``): the old folder is only removed after
    the new one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        swap_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def swap_dir(source: Path, target: Path) -> Path:
    """Move the finished folder ``source`` onto ``target`` (same file system): the old
    ``target`` is set aside first and removed only once ``source`` is in its place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    remove_path(old)
    if target.exists() or target.is_symlink():
        os.replace(target, old)
    os.replace(source, target)
    remove_path(old)
    return target


def remove_path(path: Path) -> None:
    """Delete a file, a link (not what it points to) or a folder, if there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths and NumPy scalars/arrays to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        raise ValueError(f"non-finite float {obj!r} cannot be written as JSON")
    return obj


# --------------------------------------------------------------------------- manifests


#: Tracked paths a run writes or the docs refresh rewrites: their changes do not make the
#: code a run started from differ from its commit.
OUTPUT_PATHS = ("results/", "models/", "dvc.lock", "README.md", "docs/")


def git_state(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The commit a run started from, and whether the code or params differed from it.

    ``dirty`` ignores the pipeline's own outputs (``OUTPUT_PATHS``): a ``dvc repro`` of
    several stages rewrites ``results/`` as it goes, which says nothing about the code;
    ``changed`` lists the paths that did differ (at most 20)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "-z", "--untracked-files=no")
    if status is None:
        return {"sha": sha.strip() if sha else None, "dirty": None, "changed": []}
    # -z: "XY path\0", and a rename or copy is followed by its old path as one more entry
    paths, entries = [], iter(status.split("\0"))
    for entry in entries:
        if len(entry) > 3:
            paths.append(entry[3:])
            if entry[0] in "RC" or entry[1] in "RC":
                paths.append(next(entries, ""))
    changed = [p for p in paths if p and not p.startswith(OUTPUT_PATHS)]
    return {"sha": sha.strip() if sha else None, "dirty": bool(changed), "changed": changed[:20]}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_manifest(stage: str, config: Any, root: str | os.PathLike[str]) -> dict[str, Any]:
    """What is needed to tell whether two results came from the same run setup."""
    import torch

    from pluralign.pipeline.device import precision_record

    return {
        "stage": stage,
        "config": to_jsonable(config),
        "git": git_state(root),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
        "compute": precision_record(),
    }


def config_fingerprint(*parts: Any) -> str:
    """Short hash naming a checkpoint folder, so a changed config never resumes stale state."""
    import hashlib
    import json

    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# --------------------------------------------------------------------------- metrics

#: Significant digits every metric is written with: enough for any number we report, few
#: enough that a rerun on the same machine kind (another thread count, JupyterLab instead
#: of DVC) writes the same file unless a value straddles a rounding boundary (then its 6th
#: digit differs). Values below ``ZERO`` in magnitude are written as 0: far below anything
#: reported here (a permutation p-value is at least 1 / its permutations), and a numerical
#: zero such as -1e-17 would otherwise flip sign between runs.
METRIC_DIGITS = 6
ZERO = 1e-12


def round_metrics(obj: Any, digits: int = METRIC_DIGITS) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits (nested dicts and
    lists too), ``-0.0`` and values below ``ZERO`` as ``0.0``; ints and bools unchanged."""
    if isinstance(obj, dict):
        return {k: round_metrics(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [round_metrics(v, digits) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and math.isfinite(obj):
        return 0.0 if abs(obj) < ZERO else float(f"{obj:.{digits}g}") + 0.0
    return obj


def split_headline(
    metrics: dict[str, Any], headline: tuple[str, ...] | list[str]
) -> tuple[dict[str, Any], list[str]]:
    """(the ``headline`` keys of ``metrics``, flat as DVC shows them; the headline keys this
    run did not report). DVC lists only these, so ``dvc exp show`` and ``dvc metrics diff``
    stay readable; everything else stays in the stage's details file."""
    flat = flatten(metrics)
    if len(set(headline)) != len(headline):
        raise ValueError(f"headline keys repeat: {sorted(headline)}")
    return {k: flat[k] for k in headline if k in flat}, [k for k in headline if k not in flat]


def flatten(metrics: dict[str, Any], sep: str = ".") -> dict[str, Any]:
    """``{"runs": {"single": {"kl": 1.0}}}`` -> ``{"runs.single.kl": 1.0}``, DVC's view."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out |= {f"{key}{sep}{k}": v for k, v in flatten(value, sep).items()}
        else:
            out[str(key)] = value
    return out


def drop_undefined(metrics: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(metrics without NaN / inf leaves, the flattened keys dropped): an accuracy with no
    untied held-out pair, say, is not a number to report, and JSON has no NaN."""
    dropped: list[str] = []

    def clean(d: dict[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out[key] = clean(value, f"{prefix}{key}.")
            elif isinstance(value, float | np.floating) and not np.isfinite(value):
                dropped.append(f"{prefix}{key}")
            else:
                out[key] = value
        return out

    return clean(metrics, ""), dropped
