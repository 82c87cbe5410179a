"""Benchmark scripts stay importable against the library (their numbers live in
benchmarks/README.md; running them is not a test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from helpers import ROOT

SCRIPTS = sorted((ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_script_imports(script: Path) -> None:
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # top level only: main() runs under __main__
    assert callable(module.main)
