"""Run hygiene: seeding, atomic writes that never leave half a file, manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pluralign.pipeline.io import (
    atomic_path,
    run_manifest,
    save_dir_atomic,
    set_seed,
    write_json_atomic,
)


def test_set_seed_repeats_every_generator() -> None:
    def draw():
        return (np.random.rand(), torch.rand(1).item(), __import__("random").random())

    set_seed(3)
    first = draw()
    set_seed(3)
    assert draw() == first


def test_failed_json_write_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"accuracy": 0.9})
    with pytest.raises(ValueError, match="non-finite"):
        write_json_atomic(path, {"accuracy": float("nan")})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporaries left


def test_crash_inside_atomic_path_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "fig.png"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_json_converts_numpy_and_paths(tmp_path: Path) -> None:
    path = write_json_atomic(
        tmp_path / "m.json", {"a": np.float32(0.5), "b": np.arange(3), "c": Path("x")}
    )
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": "x"}


def test_save_dir_atomic_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def good(version: str):
        return lambda folder: (folder / "weights").write_text(version)

    save_dir_atomic(target, good("v1"))
    assert (target / "weights").read_text() == "v1"

    def crash(folder: Path) -> None:
        (folder / "weights").write_text("half")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError):
        save_dir_atomic(target, crash)
    assert (target / "weights").read_text() == "v1"
    save_dir_atomic(target, good("v2"))
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_manifest_records_config_git_and_versions(project_root: Path) -> None:
    manifest = run_manifest("00_x", {"seed": 1}, project_root)
    assert manifest["config"] == {"seed": 1}
    assert manifest["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert set(manifest["git"]) == {"sha", "dirty", "changed"}
    json.dumps(manifest)  # serializable as is
