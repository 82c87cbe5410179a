"""Preference and prompt data: one record type and one validated loader for files and hub sets.

Every loader here goes through :func:`pluralign.pipeline.assets.resolve_source`, so a hub
name must carry a pinned revision (``name@commit``) and a local file needs none, and every
row is checked: a text field that is missing, empty or not a string stops the load with the
file, row and field named.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset
from numpy.typing import NDArray

from pluralign._typing import IntArray
from pluralign.pipeline.assets import AssetError, resolve_source


@dataclass
class PreferenceRecords:
    """An offline preference set: record i prefers ``chosen[i]`` over ``rejected[i]`` as a
    response to ``prompts[prompt_index[i]]``. Responses exclude the prompt (they are what is
    embedded); reward models score ``prompt + response``."""

    prompts: list[str]
    prompt_index: IntArray
    chosen: list[str]
    rejected: list[str]
    source: NDArray[np.str_]
    labeler: NDArray[np.str_]
    agrees_with_truth: NDArray[np.bool_] | None = None  # label == ground truth's order
    chosen_emb: NDArray[np.float32] | None = field(default=None, repr=False)
    rejected_emb: NDArray[np.float32] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.prompt_index = np.asarray(self.prompt_index, dtype=np.int64)
        n = len(self.prompt_index)
        for name in ("chosen", "rejected", "source", "labeler"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} records")
        if n and (self.prompt_index.min() < 0 or self.prompt_index.max() >= len(self.prompts)):
            raise ValueError("prompt_index points outside prompts")
        self.source = np.asarray(self.source, dtype=str)
        self.labeler = np.asarray(self.labeler, dtype=str)

    def __len__(self) -> int:
        return len(self.prompt_index)

    def full_texts(self, rows: Sequence[int] | IntArray | None = None) -> tuple[list, list]:
        """(chosen, rejected) as ``prompt + response``, the texts a reward model scores."""
        idx = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        p = [self.prompts[j] for j in self.prompt_index[idx]]
        return (
            [a + self.chosen[i] for a, i in zip(p, idx, strict=True)],
            [a + self.rejected[i] for a, i in zip(p, idx, strict=True)],
        )

    def subset(self, rows: Sequence[int] | IntArray) -> PreferenceRecords:
        idx = np.asarray(rows, dtype=np.int64)
        return PreferenceRecords(
            prompts=self.prompts,
            prompt_index=self.prompt_index[idx],
            chosen=[self.chosen[i] for i in idx],
            rejected=[self.rejected[i] for i in idx],
            source=self.source[idx],
            labeler=self.labeler[idx],
            agrees_with_truth=None
            if self.agrees_with_truth is None
            else self.agrees_with_truth[idx],
            chosen_emb=None if self.chosen_emb is None else self.chosen_emb[idx],
            rejected_emb=None if self.rejected_emb is None else self.rejected_emb[idx],
        )


def records_from_rows(rows: Mapping[str, Sequence[str]], where: str) -> PreferenceRecords:
    """``PreferenceRecords`` from validated ``prompt``, ``chosen``, ``rejected`` columns
    (Dahoas/rm-static's schema: responses without the prompt); prompts are de-duplicated."""
    prompts: list[str] = []
    seen: dict[str, int] = {}
    index = [seen.setdefault(p, len(seen)) for p in rows["prompt"]]
    for p, i in zip(rows["prompt"], index, strict=True):
        if i == len(prompts):
            prompts.append(p)
    n = len(index)
    return PreferenceRecords(
        prompts=prompts,
        prompt_index=np.asarray(index, dtype=np.int64),
        chosen=list(rows["chosen"]),
        rejected=list(rows["rejected"]),
        source=np.full(n, where),
        labeler=np.full(n, "dataset"),
    )


# --------------------------------------------------------------------------- the one loader

#: Standard column -> column in the file. The released P-SOUPS files' column names could not
#: be checked offline: pass ``columns`` for the real file and let validation confirm it.
STANDARD_COLUMNS: dict[str, str] = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


@contextmanager
def _no_load_ping(active: bool) -> Iterator[None]:
    """``load_dataset`` pings a download counter on S3 even for a local file; a local load
    must not touch the network, so the ping is switched off for its duration."""
    import datasets.config

    saved = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved and not active
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = saved


def load_text_columns(
    source: str | Path,
    columns: Mapping[str, str],
    split: str = "train",
    n: int | None = None,
    distinct: tuple[str, str] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[dict[str, list[str]], str]:
    """Text columns of a local JSON / JSONL file or dataset folder, or of a pinned hub
    dataset (``owner/name@revision``), every row checked.

    ``columns`` maps each wanted name to the source's column; ``n`` keeps the first n rows;
    ``distinct = (a, b)`` also requires field a != field b in every row (chosen vs rejected).
    A local JSON file has one split, ``train``. Returns ``(columns, where)``, ``where``
    naming the source and split for later messages.

    Raises
    ------
    ValueError
        A missing column, or a row whose field is empty or not text (file, row and field
        named), or no rows.
    AssetError
        A hub name without a revision, or a source that cannot be loaded.
    """
    from datasets import load_dataset

    src = resolve_source(source, "dataset")
    path = Path(src.name)
    where = f"{src}:{split}"
    cache = None if cache_dir is None else str(cache_dir)
    try:
        with _no_load_ping(src.local):
            if src.local and path.is_file():
                where = str(path)
                data = load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
            else:
                data = load_dataset(src.name, revision=src.revision, split=split, cache_dir=cache)
    except Exception as err:  # datasets raises many types (FileNotFoundError, hub errors)
        raise AssetError(f"{where}: cannot load: {err}") from err
    missing = sorted({c for c in columns.values() if c not in data.column_names})
    if missing:
        raise ValueError(
            f"{where}: missing columns {missing} (columns mapping {dict(columns)}; "
            f"the file has {data.column_names})"
        )
    if n is not None:
        data = data.select(range(min(n, len(data))))
    out: dict[str, list[str]] = {name: [] for name in columns}
    for row, rec in enumerate(data.select_columns(sorted(set(columns.values())))):
        for name, column in columns.items():
            value = rec[column]
            if not isinstance(value, str) or not value.strip():
                label = f"field {name!r}" + (f" (column {column!r})" if column != name else "")
                raise ValueError(f"{where}: row {row}: {label} is empty or not text")
            out[name].append(value)
        if distinct is not None and out[distinct[0]][-1] == out[distinct[1]][-1]:
            raise ValueError(f"{where}: row {row}: {distinct[0]!r} equals {distinct[1]!r}")
    if not next(iter(out.values()), []):
        raise ValueError(f"{where}: no rows")
    return out, where


def load_preference_file(
    source: str | Path,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """A preference file (P-SOUPS style) as a Dataset of ``prompt``, ``chosen``,
    ``rejected``; ``columns`` maps each standard column to the file's (default: same names).

    **The real P-SOUPS column names are an assumption**: they could not be checked offline,
    so set ``columns`` for the file you use; every row is validated, so a wrong mapping
    fails loudly instead of training on the wrong field."""
    mapping = dict(STANDARD_COLUMNS if columns is None else columns)
    if set(mapping) != set(STANDARD_COLUMNS):
        raise ValueError(f"columns must map exactly {sorted(STANDARD_COLUMNS)}, got {mapping}")
    rows, _ = load_text_columns(
        source, mapping, split, distinct=("chosen", "rejected"), cache_dir=cache_dir
    )
    return Dataset.from_dict(rows)


def load_prompt_texts(source: str | Path, split: str, column: str) -> list[str]:
    """Instruction texts (one column) of a local JSON/JSONL file or a pinned hub dataset."""
    return load_text_columns(source, {"prompt": column}, split)[0]["prompt"]


def load_preference_records(
    source: str | Path, split: str = "train", n: int | None = None
) -> PreferenceRecords:
    """An offline preference set (notebook 06's paper profile: ``Dahoas/rm-static``),
    checked record by record, as :class:`PreferenceRecords` of its first ``n`` rows."""
    rows, where = load_text_columns(
        source, STANDARD_COLUMNS, split, n=n, distinct=("chosen", "rejected")
    )
    return records_from_rows(rows, where)
