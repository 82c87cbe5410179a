"""Regenerate the README's results and timing tables from results/.

The results table comes from ``results/metrics/*.json``; the timing table from the
papermill metadata (wall-clock duration) of the executed notebooks in ``results/notebooks/``.

    python scripts/update_readme.py          # rewrite the table in README.md
    python scripts/update_readme.py --check  # exit 1 if the README is stale (used by tests)

Each table sits between two marker comments; everything else in the README is untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def results_table(metrics_dir: Path) -> str:
    """One collapsible table per stage (file-name order), one row per metric."""
    blocks = []
    for path in sorted(metrics_dir.glob("*.json")):
        metrics = json.loads(path.read_text(encoding="utf-8"))
        lines = [
            f"<details><summary><code>{path.stem}</code>: {len(metrics)} metrics</summary>",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in sorted(metrics.items())]
        blocks.append("\n".join([*lines, "", "</details>"]))
    return "\n\n".join(blocks)


def timings_table(notebooks_dir: Path) -> str:
    """Wall time of each executed notebook, as papermill recorded it."""
    lines = ["| stage | wall time (s) | finished (UTC) |", "|---|---|---|"]
    for path in sorted(p for p in notebooks_dir.glob("*.ipynb") if not p.name.startswith(".")):
        meta = json.loads(path.read_text(encoding="utf-8"))["metadata"].get("papermill", {})
        finished = str(meta.get("end_time", ""))[:16].replace("T", " ")
        lines.append(f"| {path.stem} | {meta.get('duration', float('nan')):.0f} | {finished} |")
    return "\n".join(lines)


def render(readme: str, name: str, table: str) -> str:
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in readme or end not in readme:
        raise SystemExit(f"README.md lacks the markers {begin} ... {end}")
    head, rest = readme.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README is stale")
    args = parser.parse_args(argv)
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    updated = render(readme, "results", results_table(ROOT / "results" / "metrics"))
    updated = render(updated, "timings", timings_table(ROOT / "results" / "notebooks"))
    if args.check:
        if updated != readme:
            print("README.md tables are stale: run python scripts/update_readme.py")
            return 1
        return 0
    if updated != readme:
        tmp = readme_path.with_suffix(".md.tmp")
        tmp.write_text(updated, encoding="utf-8")
        tmp.replace(readme_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
