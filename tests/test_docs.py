"""The README and docs/ promise: every quoted metric matches results/, every path and module
they name exists, the README stays a front page, and its Python example runs offline."""

from __future__ import annotations

import ast
import glob
import importlib.util
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pluralign

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
GUARD = ROOT / "tests" / "netguard"

_spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
update_docs = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = update_docs  # dataclasses look their module up there
_spec.loader.exec_module(update_docs)

#: Top-level folders of the repository: a word starting with one of these is a path.
REPO_DIRS = ("src", "tests", "notebooks", "scripts", "configs", "benchmarks", "docs", "results")
PATH = re.compile(rf"(?<![\w/.-])((?:{'|'.join(REPO_DIRS)}|models|\.ci)/[\w./{{}},*<>-]*)")
MODULE = re.compile(r"(?<![\w.])pluralign(?:\.\w+)+")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _dvc_outputs() -> set[str]:
    """Paths DVC produces (model folders live in the DVC cache, not in a fresh clone)."""
    stages = yaml.safe_load(_text(ROOT / "dvc.yaml"))["stages"]
    return {
        o if isinstance(o, str) else next(iter(o))
        for spec in stages.values()
        for o in spec.get("outs", [])
    }


def _expand_braces(path: str) -> list[str]:
    """``tests/{core,data}`` -> ``tests/core``, ``tests/data``."""
    parts = re.split(r"\{([^{}]*)\}", path)
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*options)]


def _exists(path: str, outputs: set[str]) -> bool:
    path = path.rstrip("/")
    if "*" in path:
        return bool(glob.glob(str(ROOT / path)))
    return (ROOT / path).exists() or any(path == o or path.startswith(f"{o}/") for o in outputs)


def _named_paths(text: str) -> set[str]:
    named = set()
    for match in PATH.finditer(text):
        path = match[1]
        while path and path[-1] in ".,;:" and not path.endswith("}"):
            path = path[:-1]
        if "<" not in path and ">" not in path:
            named.update(_expand_braces(path))
    return named


def _top_level_names(path: Path) -> set[str]:
    """Names a module defines at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(_text(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _module_file(dotted: list[str]) -> Path | None:
    base = ROOT.joinpath("src", *dotted)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_problem(name: str) -> str | None:
    """Why ``pluralign.a.b[.attr]`` does not resolve, or None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        path = _module_file(parts[:n])
        if path is not None:
            break
    else:
        return "no such module"
    rest = parts[n:]
    if not rest:
        return None
    if rest[0] not in _top_level_names(path):
        return f"{'.'.join(parts[:n])} defines no {rest[0]!r}"
    return None


# --------------------------------------------------------------------------- the real docs


def test_docs_are_up_to_date_with_results() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_paths_named_in_the_docs_exist(doc: Path) -> None:
    text = _text(doc)
    named = _named_paths(text) | {
        link for link in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in link
    }
    assert named, f"{doc.name}: expected some paths"
    outputs = _dvc_outputs()
    base = doc.parent
    missing = sorted(
        p
        for p in named
        if not _exists(p, outputs) and not (base / p).exists()  # links are relative to the doc
    )
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_modules_and_public_names_in_the_docs_exist(doc: Path) -> None:
    text = _text(doc)
    problems = {m: _module_problem(m) for m in set(MODULE.findall(text))}
    problems = {m: why for m, why in problems.items() if why}
    assert not problems, f"{doc.name}: {problems}"
    public = _top_level_names(ROOT / "src" / "pluralign" / "__init__.py")
    exported = set(pluralign.__all__)  # lazy: reads the API table, imports no layer
    unknown = sorted(set(re.findall(r"\bpa\.(\w+)", text)) - exported - public)
    assert not unknown, f"{doc.name} uses names pluralign does not export: {unknown}"


def test_readme_is_a_front_page() -> None:
    lines = _text(README).splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"


def test_readme_states_the_commands_and_ci_runs_make_test() -> None:
    readme = _text(README)
    for command in ("make test", "make repro", "make lab"):
        assert command in readme, command
    assert "make test" in _text(ROOT / ".ci" / "run")
    makefile = _text(ROOT / "Makefile")
    assert "scripts/update_docs.py" in makefile  # make repro refreshes the docs
    assert re.search(r"^lab:", makefile, re.MULTILINE)


def test_readme_python_example_runs_offline(tmp_path: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", _text(README), re.MULTILINE | re.DOTALL)
    assert blocks, "README.md has no ```python example"
    log = tmp_path / "netguard.log"
    env = {
        **{k: v for k, v in os.environ.items() if k != "PLURALIGN_ROOT"},
        "PYTHONPATH": os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")]),
        "NETGUARD_LOG": str(log),
        "HF_HUB_OFFLINE": "1",
    }
    for code in blocks:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,  # no models/, no params.yaml: the example needs neither
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip(), "the example should print its result"
    assert not log.exists() or log.read_text() == "", log.read_text()


def test_a_missing_key_fails_naming_file_line_and_key(tmp_path: Path) -> None:
    """Against the real docs, with a metrics folder whose 01 file lacks every key."""
    (tmp_path / "01_clone_theory.json").write_text("{}", encoding="utf-8")
    before = {p: _text(p) for p in DOCS}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "update_docs.py"), "--metrics-dir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    line = next(
        i + 1
        for i, text in enumerate(_text(ROOT / "docs" / "clone_robust.md").splitlines())
        if ":claim1_mle_max_change:" in text
    )
    assert (
        f"docs/clone_robust.md:{line}: 01_clone_theory has no metric 'claim1_mle_max_change'"
        in proc.stderr
    )
    assert "no metrics file for stage '04_maxmin_ppo_gpt2'" in proc.stderr
    assert {p: _text(p) for p in DOCS} == before  # nothing written on error


# --------------------------------------------------------------------------- the marker filler


def _marker(stage: str, key: str, fmt: str, value: str = "") -> str:
    return f"<!-- m:{stage}:{key}:{fmt} -->{value}<!-- /m -->"


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "metrics"
    folder.mkdir()
    metrics = {
        "runs": {"single": {"concise": {"win_rate": 0.92841}, "kl": 11.3}},
        "n_params": 5306368,
        "updates": 20.0,
        "claims": {"majority_not_hurt": True},
        "share_0.05": 0.2341,
        "gain": -0.0664,
    }
    (folder / "04_demo.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "01_flat.json").write_text(json.dumps({"x": 0.5}), encoding="utf-8")
    return folder


def test_load_metrics_flattens_nested_keys_as_dvc_shows_them(metrics_dir: Path) -> None:
    metrics = update_docs.load_metrics(metrics_dir)
    assert set(metrics) == {"04_demo", "01_flat"}
    assert metrics["04_demo"]["runs.single.concise.win_rate"] == 0.92841
    assert metrics["04_demo"]["claims.majority_not_hurt"] is True


def test_markers_are_filled_with_their_formats(metrics_dir: Path) -> None:
    metrics = update_docs.load_metrics(metrics_dir)
    cases = {
        ("runs.single.concise.win_rate", ".2f"): "0.93",
        ("runs.single.concise.win_rate", ".0%"): "93%",
        ("runs.single.kl", ".1f"): "11.3",
        ("n_params", ",d"): "5,306,368",
        ("updates", "d"): "20",  # an integral float prints as an int
        ("claims.majority_not_hurt", ""): "True",
        ("share_0.05", ".2f"): "0.23",  # a flat key with a dot in it
        ("gain", "+.3f"): "-0.066",
    }
    for (key, fmt), want in cases.items():
        text = f"before {_marker('04_demo', key, fmt, 'stale')} after\n"
        filled, errors = update_docs.fill_markers(text, metrics, "x.md")
        assert errors == []
        assert filled == f"before {_marker('04_demo', key, fmt, want)} after\n", (key, fmt)


def test_filling_is_idempotent_and_leaves_other_text_alone(metrics_dir: Path) -> None:
    metrics = update_docs.load_metrics(metrics_dir)
    text = (
        "# Title\n\n"
        f"win {_marker('04_demo', 'runs.single.kl', '.1f')} and "
        f"{_marker('01_flat', 'x', '.0%', '7%')}.\n"
    )
    once, errors = update_docs.fill_markers(text, metrics, "x.md")
    assert errors == []
    assert once.startswith("# Title\n\nwin ")
    assert "-->11.3<!--" in once and "-->50%<!--" in once
    assert update_docs.fill_markers(once, metrics, "x.md") == (once, [])


def test_missing_stage_or_key_is_an_error_naming_file_line_and_key(metrics_dir: Path) -> None:
    metrics = update_docs.load_metrics(metrics_dir)
    text = (
        "line 1\n"
        f"line 2 {_marker('04_demo', 'runs.single.concise.reward', '.2f', '0.1')}\n"
        f"line 3 {_marker('09_nothing', 'x', '.2f', '0.2')}\n"
    )
    filled, errors = update_docs.fill_markers(text, metrics, "docs/demo.md")
    assert filled == text  # a marker in error keeps its old value
    assert errors[0] == "docs/demo.md:2: 04_demo has no metric 'runs.single.concise.reward'"
    assert errors[1].startswith("docs/demo.md:3: no metrics file for stage '09_nothing'")


def test_a_format_that_cannot_print_the_value_is_an_error(metrics_dir: Path) -> None:
    metrics = update_docs.load_metrics(metrics_dir)
    text = f"{_marker('04_demo', 'runs.single.kl', 'd')}\n"
    _, errors = update_docs.fill_markers(text, metrics, "x.md")
    assert len(errors) == 1 and errors[0].startswith("x.md:1: 04_demo:runs.single.kl: format 'd'")


def test_malformed_markers_are_errors_and_code_is_left_alone(metrics_dir: Path) -> None:
    metrics = update_docs.load_metrics(metrics_dir)
    text = (
        "ok\n"
        "<!-- m:04_demo:runs.single.kl -->1<!-- /m -->\n"  # no FORMAT field
        "`<!-- m:STAGE:KEY:FORMAT -->VALUE<!-- /m -->` is the syntax\n"
        "```\n<!-- m:04_demo:nope:.2f -->x<!-- /m -->\n```\n"
    )
    filled, errors = update_docs.fill_markers(text, metrics, "x.md")
    assert filled == text
    assert len(errors) == 1 and errors[0].startswith("x.md:2: malformed marker")


def test_headline_table_and_its_missing_rows(metrics_dir: Path) -> None:
    metrics = update_docs.load_metrics(metrics_dir)
    rows = [
        update_docs.Headline("04_demo", "runs.single.concise.win_rate", "minority wins", ".2f"),
        update_docs.Headline("04_demo", "absent", "absent metric", ".2f"),
    ]
    table, errors = update_docs.headline_table(metrics, rows)
    assert (
        table.splitlines()[2]
        == "| `04_demo` | minority wins | `runs.single.concise.win_rate` | 0.93 |"
    )
    assert errors == [
        "scripts/update_docs.py: HEADLINE 04_demo:absent: 04_demo has no metric 'absent'"
    ]


def test_every_headline_row_names_a_stage_of_the_pipeline() -> None:
    stages = set(yaml.safe_load(_text(ROOT / "dvc.yaml"))["stages"])
    assert {row.stage for row in update_docs.HEADLINE} == stages


def test_updated_docs_fills_readme_tables_and_docs_and_reports_staleness(
    tmp_path: Path, metrics_dir: Path
) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    readme = root / "README.md"
    readme.write_text(
        "# r\n<!-- headline:begin -->\nold\n<!-- headline:end -->\n"
        f"x = {_marker('01_flat', 'x', '.1f')}\n",
        encoding="utf-8",
    )
    doc = root / "docs" / "a.md"
    doc.write_text(f"kl {_marker('04_demo', 'runs.single.kl', '.0f', '99')}\n", encoding="utf-8")
    rows = [update_docs.Headline("01_flat", "x", "the x", ".2f")]

    docs = update_docs.updated_docs(root, metrics_dir, rows)
    assert update_docs.stale(docs) == [readme, doc]
    assert "| `01_flat` | the x | `x` | 0.50 |" in docs[readme]
    assert "x = <!-- m:01_flat:x:.1f -->0.5<!-- /m -->" in docs[readme]
    assert docs[doc] == "kl <!-- m:04_demo:runs.single.kl:.0f -->11<!-- /m -->\n"
    for path, text in docs.items():
        path.write_text(text, encoding="utf-8")
    assert update_docs.stale(update_docs.updated_docs(root, metrics_dir, rows)) == []


def test_a_readme_without_its_table_block_is_an_error(tmp_path: Path, metrics_dir: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "README.md").write_text("# no table\n")
    with pytest.raises(update_docs.DocsError) as err:
        update_docs.updated_docs(root, metrics_dir, [])
    assert err.value.errors == [
        "README.md: needs exactly one <!-- headline:begin --> ... <!-- headline:end --> block"
    ]
