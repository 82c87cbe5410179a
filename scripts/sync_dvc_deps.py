"""Write each DVC stage's code deps from the import graph, so dvc.yaml cannot drift from it.

A stage's deps are its notebook, the modules the notebook imports, transitively (imports
inside functions included, ``if TYPE_CHECKING:`` blocks excluded), the package
``__init__`` files Python runs on the way, and the closure of the stage command's module
(``pluralign.pipeline.runner``). Other deps (another stage's model folder) are kept.

    python scripts/sync_dvc_deps.py          # rewrite the deps lists in dvc.yaml
    python scripts/sync_dvc_deps.py --check  # exit 1 if dvc.yaml differs (used by tests)
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "pluralign"
RUNNER = "pluralign.pipeline.runner"


def module_file(module: str) -> Path | None:
    """``src/pluralign/a/b.py`` or ``src/pluralign/a/b/__init__.py`` of ``pluralign.a.b``."""
    base = SRC.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST) -> set[str]:
    """Every ``pluralign`` module an AST imports anywhere, ``TYPE_CHECKING`` blocks aside;
    ``from pluralign.a import b`` yields ``pluralign.a.b`` too when b is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.module
            and node.module.split(".")[0] == PACKAGE
        ):
            found.add(node.module)
            for alias in node.names:
                if module_file(f"{node.module}.{alias.name}") is not None:
                    found.add(f"{node.module}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def closure(modules: set[str]) -> set[Path]:
    """Files of ``modules``, their parent packages' ``__init__``, and all they import."""
    files: set[Path] = set()
    todo = list(modules)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # packages run first
        path = module_file(module)
        if path is None:
            raise SystemExit(f"{module}: imported but not found under {SRC}")
        files.add(path)
        todo += sorted(imported_modules(ast.parse(path.read_text(encoding="utf-8"))))
    return files


def notebook_modules(notebook: Path) -> set[str]:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return imported_modules(ast.parse(code))


def stage_deps(stage: str, spec: dict) -> list[str]:
    """The deps ``stage`` should list: notebook, code closure, then its non-code deps."""
    notebook = f"notebooks/{stage}.ipynb"
    code = closure(notebook_modules(ROOT / notebook) | {RUNNER})
    src = sorted(p.relative_to(ROOT).as_posix() for p in code)
    other = [d for d in spec.get("deps", []) if d != notebook and not d.startswith("src/")]
    return [notebook, *src, *other]


def render(text: str, deps: dict[str, list[str]]) -> str:
    """``dvc.yaml`` with each stage's ``deps:`` list replaced (comments and order kept)."""
    out, stage, skipping = [], None, False
    for line in text.splitlines(keepends=True):
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            stage = line.strip()[:-1]
        if skipping:
            if line.startswith("      - "):
                continue
            skipping = False
        out.append(line)
        if line.rstrip() == "    deps:" and stage in deps:
            out += [f"      - {d}\n" for d in deps[stage]]
            skipping = True
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if dvc.yaml is stale")
    args = parser.parse_args(argv)
    path = ROOT / "dvc.yaml"
    text = path.read_text(encoding="utf-8")
    stages = yaml.safe_load(text)["stages"]
    updated = render(text, {s: stage_deps(s, spec) for s, spec in stages.items()})
    if args.check:
        if updated != text:
            print("dvc.yaml deps differ from the import graph: run scripts/sync_dvc_deps.py")
            return 1
        return 0
    if updated != text:
        tmp = path.with_name(".dvc.yaml.tmp")
        tmp.write_text(updated, encoding="utf-8")
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
