"""Fill every quoted metric in README.md and docs/*.md from results/, so text cannot drift.

A number quoted from ``results/metrics`` is written as a marker whose value this script
fills in::

    <!-- m:04_maxmin_ppo_gpt2:runs.single.concise.win_rate:.2f -->0.93<!-- /m -->

``04_maxmin_ppo_gpt2`` is the metrics file's stem, ``runs.single.concise.win_rate`` the
flattened nested key as ``dvc metrics show`` prints it, and ``.2f`` a Python format spec
(``.3f``, ``.0%``, ``,d``; empty: ``str(value)``; an integral float takes ``d``). Numbers
that are not in results/metrics (benchmarks, paper claims, params) stay plain text.

The README also holds one generated table between ``<!-- headline:begin -->`` and
``<!-- headline:end -->``: a few metrics per notebook, chosen in ``HEADLINE`` below. Wall
times are machine-specific, so no doc quotes them: they stay in each stage's manifest and
executed notebook.

    python scripts/update_docs.py                         # rewrite what is stale
    python scripts/update_docs.py --check                 # exit 1 if anything is stale
    python scripts/update_docs.py --metrics-dir DIR       # read the metrics from DIR

Numbers are read from ``results/details/`` (every number a stage reports; its headline
subset is ``results/metrics/``, what DVC lists). ``--check`` accepts docs that match either
the workspace's results or the committed ones (``git show HEAD:...``): after ``dvc exp run``
the workspace holds an experiment's results while the docs describe the committed run, and
that is not an error. CI checks a fresh clone, where the two are the same.

A marker naming a missing stage or key, a malformed marker or a value its format cannot
print is an error naming the file, line and key (exit 2); nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pluralign.pipeline.io import flatten, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]

OPENER = "<!-- m:"
MARKER = re.compile(
    r"<!-- m:(?P<stage>[^:\s]+):(?P<key>[^:\s]+):(?P<fmt>\S*) -->(?P<value>[^<\n]*)<!-- /m -->"
)
#: Fenced code blocks and inline code spans: a marker written there is shown, not filled.
CODE = re.compile(r"^```.*?^```[^\n]*$|`[^`\n]+`", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Headline:
    """One row of the README's headline table."""

    stage: str
    key: str
    label: str
    fmt: str


#: The README's headline table: about three metrics per notebook, in notebook order.
HEADLINE: tuple[Headline, ...] = (
    Headline("00_policy_pretrain", "heldout_perplexity", "held-out perplexity", ".0f"),
    Headline("00_policy_pretrain", "stop_rate", "samples that stop (EOS) in 32 tokens", ".0%"),
    Headline("00_policy_pretrain", "n_params", "parameters", ",d"),
    Headline("00_sentiment_judge", "imdb_accuracy", "IMDB held-out accuracy", ".1%"),
    Headline("00_sentiment_judge", "rotten_tomatoes_accuracy", "Rotten Tomatoes accuracy", ".1%"),
    Headline("00_sentiment_judge", "vader_imdb_accuracy", "VADER baseline on IMDB", ".1%"),
    Headline("01_clone_theory", "claim1_mle_max_change", "4 clones: standard MLE moves by", ".3f"),
    Headline(
        "01_clone_theory", "claim1_weighted_max_change", "4 clones: weighted MLE moves by", ".3f"
    ),
    Headline(
        "01_clone_theory",
        "claim3_weighted_rmse_m_max",
        "weighted MLE's RMSE to the continuum MLE, m = 300",
        ".4f",
    ),
    Headline(
        "02_weighted_mle", "paper_mle_flipped", "clones flip the MLE's top theme (1 = yes)", "d"
    ),
    Headline(
        "02_weighted_mle",
        "paper_weighted_flipped",
        "clones flip the weighted MLE's (1 = yes)",
        "d",
    ),
    Headline(
        "02_weighted_mle",
        "paper_weighted_gap_clear",
        "weighted MLE's top theme clearly ahead (1 = yes)",
        "d",
    ),
    Headline(
        "03_em_mixtures",
        "planted_ari_hard_EM_comparisons_per_user_20",
        "hard EM ARI, planted groups",
        ".2f",
    ),
    Headline(
        "03_em_mixtures",
        "planted_ari_hard_EM_minority_share_0.05",
        "hard EM ARI, 5% minority",
        ".2f",
    ),
    Headline(
        "03_em_mixtures",
        "planted_ari_soft_EM_minority_share_0.05",
        "soft EM ARI, 5% minority",
        ".2f",
    ),
    Headline("03_em_mixtures", "text_neural_ari", "neural EM ARI on text, in-sample E-step", ".2f"),
    Headline(
        "03_em_mixtures",
        "text_neural_crossfit_ari",
        "neural EM ARI on text, cross-fitted E-step",
        ".2f",
    ),
    Headline(
        "04_maxmin_ppo_gpt2",
        "em_text_ari_ratio_10",
        "EM ARI at 10:1, text tier, cross-fitted",
        ".2f",
    ),
    Headline(
        "04_maxmin_ppo_gpt2",
        "em_text_in_sample_ari_ratio_10",
        "EM ARI at 10:1, text tier, the paper's in-sample E-step",
        ".2f",
    ),
    Headline(
        "04_maxmin_ppo_gpt2",
        "h2h_control_concise",
        "control: MaxMin beats single for the minority (share of prompts)",
        ".2f",
    ),
    Headline(
        "04_maxmin_ppo_gpt2",
        "h2h_oracle_concise",
        "oracle tier: MaxMin-EM beats single for the minority",
        ".2f",
    ),
    Headline(
        "04_maxmin_ppo_gpt2",
        "h2h_text_concise",
        "text tier: MaxMin-EM beats single for the minority",
        ".2f",
    ),
    Headline(
        "04_maxmin_ppo_gpt2",
        "h2h_text_sentiment",
        "text tier: MaxMin-EM beats single for the majority",
        ".2f",
    ),
    Headline(
        "05_maxmin_ppo_tulu2",
        "controllability_grade_gap",
        "SFT proxy: grade gap between [hard] and [easy] answers",
        ".2f",
    ),
    Headline("05_maxmin_ppo_tulu2", "em_ari_10to1", "cross-fitted EM ARI at 10:1", ".2f"),
    Headline(
        "05_maxmin_ppo_tulu2",
        "win_single_minority",
        "minority win rate vs SFT, single reward (10:1)",
        ".3f",
    ),
    Headline(
        "05_maxmin_ppo_tulu2",
        "win_maxmin_minority",
        "minority win rate vs SFT, MaxMin over per-group RMs",
        ".3f",
    ),
    Headline(
        "05_maxmin_ppo_tulu2",
        "gain_average_relative",
        "average relative gain, MaxMin vs single (paper: > 16%)",
        ".0%",
    ),
    Headline("06_inverse_alignment", "reference_truth", "ground truth, reference policy", ".2f"),
    Headline("06_inverse_alignment", "vanilla_truth", "ground truth, vanilla RLHF", ".2f"),
    Headline(
        "06_inverse_alignment",
        "oracle_filter_truth",
        "ground truth, oracle filter (positive control)",
        ".2f",
    ),
    Headline("06_inverse_alignment", "frft_P1_truth", "ground truth, FRFT-P1", ".2f"),
    Headline(
        "06_inverse_alignment", "random_truth", "ground truth, random subset (control)", ".2f"
    ),
)


class DocsError(Exception):
    """Markers that cannot be filled; ``errors`` holds one ``file:line: message`` each."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# --------------------------------------------------------------------------- metrics


def load_metrics(metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage (file stem) -> its metrics, flattened to DVC's dotted keys."""
    return {
        path.stem: flatten(json.loads(path.read_text(encoding="utf-8")))
        for path in sorted(metrics_dir.glob("*.json"))
    }


def committed_metrics(root: Path, metrics_dir: Path) -> dict[str, dict[str, Any]] | None:
    """``load_metrics`` of ``metrics_dir`` as committed at HEAD; None outside a git checkout."""

    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return proc.stdout if proc.returncode == 0 else None

    try:
        folder = metrics_dir.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None
    listing = git("ls-tree", "--name-only", "HEAD", f"{folder}/")
    if listing is None:
        return None
    out = {}
    for name in sorted(listing.split()):
        if name.endswith(".json"):
            text = git("show", f"HEAD:{name}")
            if text is not None:
                out[Path(name).stem] = flatten(json.loads(text))
    return out


def format_value(value: Any, fmt: str) -> str:
    """``format(value, fmt)``; an integral float is printed as an int by a ``d`` spec (JSON
    writers may store a count as 20.0). Raises ValueError if ``fmt`` cannot print ``value``."""
    if fmt.endswith("d") and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return str(value) if fmt == "" else format(value, fmt)


def lookup(metrics: Mapping[str, Mapping[str, Any]], stage: str, key: str) -> Any:
    """The value of ``key`` in ``stage``; KeyError with a readable message if absent."""
    if stage not in metrics:
        raise KeyError(f"no metrics file for stage {stage!r} (stages: {', '.join(metrics)})")
    if key not in metrics[stage]:
        raise KeyError(f"{stage} has no metric {key!r}")
    return metrics[stage][key]


def fill_markers(
    text: str, metrics: Mapping[str, Mapping[str, Any]], where: str
) -> tuple[str, list[str]]:
    """``text`` with every marker's value refilled, and the errors (``where:line: ...``)."""
    errors: list[str] = []
    code = [m.span() for m in CODE.finditer(text)]

    def in_code(pos: int) -> bool:
        return any(start <= pos < end for start, end in code)

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    for pos in (m.start() for m in re.finditer(re.escape(OPENER), text)):
        if not in_code(pos) and MARKER.match(text, pos) is None:
            snippet = text[pos:].split("\n", 1)[0]
            errors.append(
                f"{where}:{line_of(pos)}: malformed marker {snippet[:80]!r} "
                "(want <!-- m:STAGE:KEY:FORMAT -->VALUE<!-- /m -->)"
            )

    def fill(match: re.Match[str]) -> str:
        if in_code(match.start()):
            return match[0]
        stage, key, fmt = match["stage"], match["key"], match["fmt"]
        try:
            value = format_value(lookup(metrics, stage, key), fmt)
        except KeyError as err:
            errors.append(f"{where}:{line_of(match.start())}: {err.args[0]}")
            return match[0]
        except ValueError as err:
            errors.append(f"{where}:{line_of(match.start())}: {stage}:{key}: format {fmt!r}: {err}")
            return match[0]
        return f"<!-- m:{stage}:{key}:{fmt} -->{value}<!-- /m -->"

    return MARKER.sub(fill, text), errors


# --------------------------------------------------------------------------- tables


def headline_table(
    metrics: Mapping[str, Mapping[str, Any]], rows: Iterable[Headline] = HEADLINE
) -> tuple[str, list[str]]:
    """The README's headline table, and the errors of rows whose metric is missing."""
    lines = ["| notebook | metric | key | value |", "|---|---|---|---|"]
    errors: list[str] = []
    for row in rows:
        where = f"scripts/update_docs.py: HEADLINE {row.stage}:{row.key}"
        value = "?"
        try:
            value = format_value(lookup(metrics, row.stage, row.key), row.fmt)
        except KeyError as err:
            errors.append(f"{where}: {err.args[0]}")
        except ValueError as err:
            errors.append(f"{where}: format {row.fmt!r}: {err}")
        lines.append(f"| `{row.stage}` | {row.label} | `{row.key}` | {value} |")
    return "\n".join(lines), errors


def render_block(text: str, name: str, table: str, where: str) -> str:
    """Replace what sits between ``<!-- name:begin -->`` and ``<!-- name:end -->``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise DocsError([f"{where}: needs exactly one {begin} ... {end} block"])
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}\n{end}{tail}"


# --------------------------------------------------------------------------- driver


def doc_files(root: Path) -> list[Path]:
    """README.md, then docs/*.md: the files whose markers are filled."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def updated_docs(
    root: Path,
    metrics_dir: Path,
    headline: Iterable[Headline] = HEADLINE,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[Path, str]:
    """Every doc file's new text (changed or not), filled from ``metrics`` (default: those in
    ``metrics_dir``); DocsError lists every problem found."""
    metrics = load_metrics(metrics_dir) if metrics is None else metrics
    out: dict[Path, str] = {}
    errors: list[str] = []
    for path in doc_files(root):
        where = path.relative_to(root).as_posix()
        text, errs = fill_markers(path.read_text(encoding="utf-8"), metrics, where)
        errors += errs
        if path.name == "README.md" and path.parent == root:
            table, errs = headline_table(metrics, headline)
            errors += errs
            try:
                text = render_block(text, "headline", table, where)
            except DocsError as err:
                errors += err.errors
        out[path] = text
    if errors:
        raise DocsError(errors)
    return out


def stale(docs: Mapping[Path, str]) -> list[Path]:
    """The files whose text on disk differs from ``docs``."""
    return [path for path, text in docs.items() if path.read_text(encoding="utf-8") != text]


def run(root: Path, metrics_dir: Path, check: bool, headline: Iterable[Headline] = HEADLINE) -> int:
    """Refill (or, with ``check``, verify) the docs under ``root``; the exit status."""
    try:
        docs = updated_docs(root, metrics_dir, headline)
    except DocsError as err:
        for line in err.errors:
            print(f"error: {line}", file=sys.stderr)
        return 2
    outdated = stale(docs)
    if check and outdated:
        committed = committed_metrics(root, metrics_dir)
        if committed is not None and committed != load_metrics(metrics_dir):
            try:
                if not stale(updated_docs(root, metrics_dir, headline, metrics=committed)):
                    print("docs match the committed results (the workspace's results differ)")
                    return 0
            except DocsError:
                pass
    if check:
        for path in outdated:
            print(f"{path.relative_to(root)} is stale: run python scripts/update_docs.py")
        return 1 if outdated else 0
    for path in outdated:
        write_text_atomic(path, docs[path])
        print(f"updated {path.relative_to(root)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if any doc is stale")
    parser.add_argument(
        "--metrics-dir",
        type=Path,
        default=ROOT / "results" / "details",
        help="folder of <stage>.json metrics (default: results/details)",
    )
    args = parser.parse_args(argv)
    return run(ROOT, args.metrics_dir, args.check)


if __name__ == "__main__":
    sys.exit(main())
