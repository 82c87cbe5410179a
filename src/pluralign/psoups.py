"""P-SOUPS-like preference dimensions, users and data, for MaxMin-RLHF at 7B scale.

P-SOUPS (Jang et al., 2023) asks for answers along three axes, each in two opposite
directions. We score each direction with a rule, so labels can be simulated offline and
every label has a known ground truth (:data:`DIMENSIONS`, higher = preferred):

=====  =============  ====================================  ==========================
name   preference     score                                 why this rule
=====  =============  ====================================  ==========================
P1A    elementary     ``-clip(Flesch-Kincaid grade)``       readable words and sentences
P1B    PhD-level      ``+clip(Flesch-Kincaid grade)``       the opposite of P1A
P2A    concise        ``-log(words + 1)``                   shorter is better
P2B    informative    ``+log(words + 1)``                   longer is better
P3A    friendly       ``+VADER compound``                   warm, positive wording
P3B    unfriendly     ``-VADER compound``                   curt, negative wording
=====  =============  ====================================  ==========================

The A and B columns of a pair are exact negatives, so with a large ``beta`` their users
disagree on every pair: the hardest case for a single reward model. ``+1`` in the word count
keeps an empty answer (a policy that stops at once) finite: it is the most concise one.
The grade is clipped to :data:`text_groups.FK_CLIP` because one long word in a short text
gives a grade above 40, which would dominate the z-scores; an empty text has grade -15.59,
clipped to -5, the easiest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset

from pluralign.assets import AssetError, vader_compound
from pluralign.maxmin_gpt2 import PairLabels, label_pairs, standardize_columns
from pluralign.text_groups import FK_CLIP, extract_snippets, flesch_kincaid_grade, n_words


@dataclass(frozen=True)
class Dimension:
    """One preference direction: ``score = sign * raw`` where ``raw`` is ``scorer`` of a text."""

    name: str
    description: str
    scorer: str  # "fk_grade" (clipped), "log_words" (log(words + 1)) or "vader"
    sign: float


#: The six P-SOUPS preference directions, in the column order of :func:`dimension_scores`.
DIMENSIONS: dict[str, Dimension] = {
    d.name: d
    for d in (
        Dimension("P1A", "elementary: easy to read for a child", "fk_grade", -1.0),
        Dimension("P1B", "PhD-level: expert vocabulary and long sentences", "fk_grade", +1.0),
        Dimension("P2A", "concise: as few words as possible", "log_words", -1.0),
        Dimension("P2B", "informative: detailed and long", "log_words", +1.0),
        Dimension("P3A", "friendly: warm and positive tone", "vader", +1.0),
        Dimension("P3B", "unfriendly: curt and negative tone", "vader", -1.0),
    )
}


def dimension_scores(texts: Sequence[str]) -> pd.DataFrame:
    """Ground-truth score of each text for each of :data:`DIMENSIONS` (higher = preferred).

    Each raw scorer runs once and the six columns are signed copies, so A and B stay exact
    negatives (any asymmetry would make one direction's users easier to satisfy).
    """
    texts = list(texts)
    grade = np.array([flesch_kincaid_grade(t) for t in texts], dtype=np.float64)
    raw = {
        "fk_grade": np.clip(grade, *FK_CLIP),
        "log_words": np.log(np.array([n_words(t) for t in texts], dtype=np.float64) + 1.0),
        "vader": vader_compound(texts),
    }
    return pd.DataFrame({d.name: d.sign * raw[d.scorer] for d in DIMENSIONS.values()})


# --------------------------------------------------------------------------- prompts

#: Instruction templates; ``{text}`` is a review opening. Several phrasings so a policy
#: cannot key its style on one fixed instruction.
TEMPLATES: tuple[str, ...] = (
    "Review the film described here: {text}",
    "Continue this movie review in your own words: {text}",
    "A viewer wrote this about a film. Tell me whether I should watch it: {text}",
    "Explain what this moviegoer liked or disliked, and why: {text}",
    "Write a reply to this comment about a movie: {text}",
)


def instruction_prompts(
    texts: Sequence[str],
    n: int,
    seed: int,
    templates: Sequence[str] = TEMPLATES,
    min_words: int = 8,
    max_words: int = 40,
) -> list[str]:
    """``n`` distinct instruction prompts built offline from review openings.

    Openings come from :func:`text_groups.extract_snippets` (distinct, 1-3 whole sentences
    of ``min_words..max_words`` words, picked in a ``seed``-determined order); opening i gets
    template ``templates[t_i]`` with ``t_i`` uniform, drawn from a second generator seeded
    by ``(seed, 1)`` so the choice of openings does not depend on the templates.

    Raises
    ------
    ValueError
        If a template lacks ``{text}`` or has another field, or too few openings qualify.
    """
    if not templates:
        raise ValueError("need at least one template")
    for t in templates:
        if re.findall(r"{([^{}]*)}", t) != ["text"]:
            raise ValueError(f"template {t!r} must contain the field {{text}} exactly once")
    openings = extract_snippets(texts, n, min_words, max_words, seed)
    pick = np.random.default_rng([seed, 1]).integers(0, len(templates), size=n)
    prompts = [templates[k].format(text=o) for k, o in zip(pick, openings, strict=True)]
    if len(set(prompts)) != n:  # distinct openings cannot collide unless templates overlap
        raise ValueError("templates produce identical prompts from distinct openings")
    return prompts


# --------------------------------------------------------------------------- users


def mixture_users(majority: str, minority: str, n_majority: int, n_minority: int) -> list[str]:
    """Dimension of each user of a majority:minority mix (e.g. 10:1), majority first.

    Users come in two contiguous blocks, the order :func:`label_by_dimensions` needs.
    """
    for role, name in (("majority", majority), ("minority", minority)):
        if name not in DIMENSIONS:
            raise ValueError(f"{role} dimension {name!r} is not one of {list(DIMENSIONS)}")
    if majority == minority:
        raise ValueError(f"majority and minority are both {majority!r}: not a mix")
    for role, count in (("n_majority", n_majority), ("n_minority", n_minority)):
        if not isinstance(count, int | np.integer) or isinstance(count, bool) or count < 1:
            raise ValueError(f"{role} must be an int >= 1, got {count!r}")
    return [majority] * int(n_majority) + [minority] * int(n_minority)


def label_by_dimensions(
    scores_a: pd.DataFrame,
    scores_b: pd.DataFrame,
    user_dimensions: Sequence[str],
    per_user: int,
    beta: float,
    seed: int,
) -> tuple[PairLabels, tuple[str, ...]]:
    """Each user labels ``per_user`` random pairs by a BT draw on their dimension's score.

    ``scores_a``, ``scores_b``: :func:`dimension_scores` of the two answers of each pair.
    Each used dimension is z-scored over both sides pooled (``standardize_columns``), so one
    ``beta`` means the same noise for every dimension; the draw is ``label_pairs`` with one
    group per dimension. ``user_dimensions`` must list each dimension's users in one
    contiguous block (as :func:`mixture_users` does), so that user i of the returned labels
    is ``user_dimensions[i]``.

    Returns
    -------
    (PairLabels, groups)
        ``groups[k]`` is the dimension of group k (``labels.user_group`` indexes it), in
        order of first appearance in ``user_dimensions``.
    """
    dims = list(user_dimensions)
    if not dims:
        raise ValueError("user_dimensions is empty")
    groups = tuple(dict.fromkeys(dims))
    unknown = [d for d in groups if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimensions {unknown}; known: {list(DIMENSIONS)}")
    blocks = [d for i, d in enumerate(dims) if i == 0 or dims[i - 1] != d]
    if len(blocks) != len(groups):
        raise ValueError(f"users of a dimension must be contiguous, got the order {blocks}")
    for side, frame in (("scores_a", scores_a), ("scores_b", scores_b)):
        missing = [d for d in groups if d not in frame.columns]
        if missing:
            raise ValueError(f"{side} lacks columns {missing}")
    if len(scores_a) != len(scores_b):
        raise ValueError(f"scores_a has {len(scores_a)} rows, scores_b {len(scores_b)}")
    z_a, z_b = standardize_columns(
        scores_a[list(groups)].reset_index(drop=True), scores_b[list(groups)].reset_index(drop=True)
    )
    counts = [dims.count(d) for d in groups]
    return label_pairs(z_a, z_b, counts, per_user, beta, seed), groups


# --------------------------------------------------------------------------- files

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


def _is_local(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return Path(text).exists() or text.startswith((".", "/", "~")) or Path(text).is_absolute()


def load_psoups_file(
    name_or_path: str | Path,
    revision: str | None = None,
    split: str = "train",
    columns: Mapping[str, str] | None = None,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """A P-SOUPS-style preference file as a Dataset of ``prompt``, ``chosen``, ``rejected``.

    ``name_or_path`` is a hub name, which needs a pinned ``revision`` (a commit or tag) so a
    re-upload cannot change results silently, or a local folder / ``.json`` / ``.jsonl``
    file (``revision`` must then be None). ``columns`` maps each standard column to the
    file's column (default: the same names).

    **The real P-SOUPS column names are an assumption**: they could not be checked offline,
    so set ``columns`` for the file you use; every row is validated, so a wrong mapping
    fails loudly instead of training on the wrong field.

    Raises
    ------
    ValueError
        Bad arguments, a missing column, or a row whose field is not non-empty text or
        whose chosen equals rejected; the message names ``name@revision:split``, row, field.
    AssetError
        If the file or hub dataset cannot be loaded.
    """
    from datasets import load_dataset

    mapping = dict(STANDARD_COLUMNS if columns is None else columns)
    if set(mapping) != set(STANDARD_COLUMNS):
        raise ValueError(f"columns must map exactly {sorted(STANDARD_COLUMNS)}, got {mapping}")
    local = _is_local(name_or_path)
    path = Path(name_or_path).expanduser()
    if local and revision is not None:
        raise ValueError(f"{path}: a local file has no revision, got {revision!r}")
    if not local and not revision:
        raise ValueError(f"{name_or_path}: pin a revision (commit or tag) for a hub dataset")
    where = f"{path}:{split}" if local else f"{name_or_path}@{revision}:{split}"
    cache = None if cache_dir is None else str(cache_dir)
    try:
        with _no_load_ping(local):
            if local and path.is_file():
                data = load_dataset("json", data_files=str(path), split=split, cache_dir=cache)
            else:
                source = str(path) if local else str(name_or_path)
                data = load_dataset(source, revision=revision, split=split, cache_dir=cache)
    except Exception as err:  # datasets raises many types (FileNotFoundError, hub errors)
        raise AssetError(f"{where}: cannot load: {err}") from err

    missing = sorted({c for c in mapping.values() if c not in data.column_names})
    if missing:
        raise ValueError(
            f"{where}: missing columns {missing} (columns mapping {mapping}; "
            f"the file has {data.column_names})"
        )
    out: dict[str, list[str]] = {name: [] for name in STANDARD_COLUMNS}
    for row, rec in enumerate(data.select_columns(sorted(set(mapping.values())))):
        for name, source_col in mapping.items():
            value = rec[source_col]
            if not isinstance(value, str) or not value.strip():
                raise ValueError(
                    f"{where}: row {row}: field {name!r} (column {source_col!r}) "
                    "is empty or not text"
                )
            out[name].append(value)
        if out["chosen"][-1] == out["rejected"][-1]:
            raise ValueError(f"{where}: row {row}: 'chosen' equals 'rejected'")
    if not out["prompt"]:
        raise ValueError(f"{where}: no rows")
    return Dataset.from_dict(out)
