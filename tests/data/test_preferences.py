"""Preference records (pluralign.data.preferences): the record type built from validated
columns, and the one loader that validates them (local files here; hub names must be pinned).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pluralign.data.preferences import load_preference_records, records_from_rows
from pluralign.pipeline.assets import AssetError

ROWS = {
    "prompt": ["A", "B", "A", "C", "B"],
    "chosen": ["c0", "c1", "c2", "c3", "c4"],
    "rejected": ["r0", "r1", "r2", "r3", "r4"],
}


def write_jsonl(path: Path, columns: dict[str, list]) -> Path:
    n = len(next(iter(columns.values())))
    rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_records_from_rows_dedups_prompts_in_order_of_appearance() -> None:
    rec = records_from_rows(ROWS, "toy")
    assert rec.prompts == ["A", "B", "C"]
    assert rec.prompt_index.tolist() == [0, 1, 0, 2, 1]
    assert rec.chosen == ROWS["chosen"] and rec.rejected == ROWS["rejected"]
    assert set(rec.source) == {"toy"} and set(rec.labeler) == {"dataset"}
    assert rec.agrees_with_truth is None  # a loaded set has no planted ground truth
    assert [rec.prompts[p] for p in rec.prompt_index] == ROWS["prompt"]
    chosen_full, rejected_full = rec.full_texts([2, 4])
    assert chosen_full == ["Ac2", "Bc4"] and rejected_full == ["Ar2", "Br4"]


def test_load_preference_records_reads_a_local_file_without_the_network(
    tmp_path: Path, host_lookups: list[str]
) -> None:
    """A local JSONL file (extra columns ignored) through the validated loader; ``n`` keeps
    the first rows; the records name the file as their source."""
    path = write_jsonl(tmp_path / "prefs.jsonl", {**ROWS, "extra": [1, 2, 3, 4, 5]})
    rec = load_preference_records(path)
    assert rec.prompts == ["A", "B", "C"]
    assert rec.prompt_index.tolist() == [0, 1, 0, 2, 1]
    assert rec.chosen == ROWS["chosen"] and rec.rejected == ROWS["rejected"]
    assert set(rec.source) == {str(path)}
    first = load_preference_records(path, n=3)
    assert len(first) == 3 and first.prompts == ["A", "B"]
    assert np.array_equal(first.prompt_index, [0, 1, 0])
    assert [h for h in host_lookups if h not in ("localhost", "127.0.0.1", "::1", "None")] == []


def test_load_preference_records_names_bad_rows_and_missing_columns(tmp_path: Path) -> None:
    """A malformed record stops the load with its file, row and field named."""

    def bad(field: str, row: int, value) -> Path:
        columns = {k: list(v) for k, v in ROWS.items()}
        columns[field][row] = value
        return write_jsonl(tmp_path / f"bad-{field}-{row}.jsonl", columns)

    path = bad("chosen", 2, "  ")
    with pytest.raises(ValueError, match=rf"{path}: row 2: field 'chosen' is empty or not text"):
        load_preference_records(path)
    with pytest.raises(ValueError, match=r"row 4: field 'prompt' is empty or not text"):
        load_preference_records(bad("prompt", 4, None))
    with pytest.raises(ValueError, match=r"row 1: 'chosen' equals 'rejected'"):
        load_preference_records(bad("rejected", 1, "c1"))
    no_rejected = write_jsonl(
        tmp_path / "no-rejected.jsonl", {k: v for k, v in ROWS.items() if k != "rejected"}
    )
    with pytest.raises(ValueError, match=r"missing columns \['rejected'\]"):
        load_preference_records(no_rejected)


def test_load_preference_records_refuses_an_unpinned_hub_name(host_lookups: list[str]) -> None:
    """A hub set without ``@revision`` is refused before anything is downloaded."""
    with pytest.raises(AssetError, match=r"Dahoas/rm-static@<commit or tag>"):
        load_preference_records("Dahoas/rm-static", "train", 8)
    assert host_lookups == []
