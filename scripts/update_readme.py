"""Regenerate the README's results table from results/metrics/*.json.

    python scripts/update_readme.py          # rewrite the table in README.md
    python scripts/update_readme.py --check  # exit 1 if the README is stale (used by tests)

The table sits between two marker comments; everything else in the README is untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def results_table(metrics_dir: Path) -> str:
    """One row per metric, grouped by stage, in file-name order."""
    lines = ["| stage | metric | value |", "|---|---|---|"]
    for path in sorted(metrics_dir.glob("*.json")):
        for key, value in sorted(json.loads(path.read_text(encoding="utf-8")).items()):
            lines.append(f"| {path.stem} | {key} | {_fmt(value)} |")
    return "\n".join(lines)


def render(readme: str, table: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"README.md lacks the markers {BEGIN} ... {END}")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README is stale")
    args = parser.parse_args(argv)
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    updated = render(readme, results_table(ROOT / "results" / "metrics"))
    if args.check:
        if updated != readme:
            print("README.md results table is stale: run python scripts/update_readme.py")
            return 1
        return 0
    if updated != readme:
        tmp = readme_path.with_suffix(".md.tmp")
        tmp.write_text(updated, encoding="utf-8")
        tmp.replace(readme_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
