"""dvc.yaml's deps are the import graph: a change reruns exactly the stages it can affect."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys

import yaml
from helpers import ROOT

_spec = importlib.util.spec_from_file_location(
    "sync_dvc_deps", ROOT / "scripts" / "sync_dvc_deps.py"
)
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def test_dvc_yaml_deps_equal_the_import_closure() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sync_dvc_deps.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stage, spec in DVC.items():
        assert spec["deps"] == sync.stage_deps(stage, spec)


def test_imports_inside_functions_count_and_type_checking_ones_do_not() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import pluralign.core.stats\n"
        "from pluralign.core import clones\n"
        "if TYPE_CHECKING:\n    from pluralign.training.ppo import PPOSettings\n"
        "def f():\n    from pluralign.data.text import make_prompts\n"
    )
    assert sync.imported_modules(tree) == {
        "pluralign.core.stats",
        "pluralign.core",
        "pluralign.core.clones",
        "pluralign.data.text",
    }


def test_closure_includes_the_packages_python_runs_on_the_way() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in sync.closure({"pluralign.core.clones"})}
    assert files == {
        "src/pluralign/__init__.py",
        "src/pluralign/_typing.py",
        "src/pluralign/core/__init__.py",
        "src/pluralign/core/_checks.py",
        "src/pluralign/core/clones.py",
        "src/pluralign/core/bradley_terry.py",
    }


def test_each_experiment_module_is_a_dep_of_its_own_stage_only() -> None:
    """Editing ``experiments/<section>.py`` stales exactly one stage."""
    for module in sorted((ROOT / "src" / "pluralign" / "experiments").glob("[!_]*.py")):
        dep = module.relative_to(ROOT).as_posix()
        users = [s for s, spec in DVC.items() if dep in spec["deps"]]
        assert len(users) == 1, f"{dep} is a dep of {users}"
        section = sync_section(users[0])
        assert section == module.stem, f"{dep} is used by {users[0]} ({section})"


def sync_section(stage: str) -> str:
    return next(p for p in DVC[stage]["params"] if p != "profile")


def test_shared_stage_config_loader_is_not_where_configs_live() -> None:
    """The loader every stage depends on holds no stage's fields (a new field of one stage
    must not rerun the others)."""
    text = (ROOT / "src" / "pluralign" / "pipeline" / "config.py").read_text(encoding="utf-8")
    tree = ast.parse(text)
    classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef)]
    assert classes == ["ConfigError", "StageConfig"]


def test_no_stage_reaches_the_lazy_api_table() -> None:
    """The closure leaves out ``pluralign._api`` (the root's lazy name table, loaded only by
    ``pluralign.__getattr__``) and the modules it names. That is right only while no stage's
    code goes through the root's lazy names; this checks it at run time, per stage."""
    for stage in DVC:
        notebook = ROOT / "notebooks" / f"{stage}.ipynb"
        source = "\n".join(
            "".join(cell["source"])
            for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]
            if cell["cell_type"] == "code"
        )
        imports = [
            ast.unparse(node)
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        assert not any(i in ("import pluralign", "import pluralign as pa") for i in imports), stage
        probe = "\n".join([*imports, "import sys", "print('pluralign._api' in sys.modules)"])
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        assert out.strip() == "False", f"{stage}: its imports load pluralign._api"
