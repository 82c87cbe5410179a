"""P-SOUPS preference dimensions, their rule-based ground truths, users and files (notebook 05).

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
The grade is clipped to :data:`pluralign.data.scorers.FK_CLIP` because one long word in a short text
gives a grade above 40, which would dominate the z-scores; an empty text has grade -15.59,
clipped to -5, the easiest.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset

from pluralign.core.simulate import PairLabels, label_pairs
from pluralign.core.stats import standardize_columns
from pluralign.data.preferences import load_preference_file
from pluralign.data.scorers import FK_CLIP, flesch_kincaid_grade, n_words, vader_compound
from pluralign.data.text import TULU_TEMPLATE


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

#: The preference instructions of the P-SOUPS release (``training_reward_model.py`` of the
#: MaxMin-RLHF and RLPHF code), by direction. They are appended to the evaluation prompts
#: of a group and stripped from ``user_input`` before reward-model training: the PPO
#: prompts carry none, so a reward model must not learn a preference conditional on one.
PREFERENCE_PROMPTS: dict[str, str] = {
    "P1A": "Generate a response that can be easily understood by an elementary school student.",
    "P1B": "Generate a response that only a PhD Student in that specific field could understand.",
    "P2A": "Generate a response that is concise and to the point, without being verbose.",
    "P2B": "Generate a response that is very informative, without missing any background "
    "information.",
    "P3A": "Generate a response that is friendly, witty, funny, and humorous, like a close friend.",
    "P3B": "Generate a response in an unfriendly manner.",
    "P3C": "Generate a response in a sassy manner.",
    "P3D": "Generate a response in a sarcastic manner.",
}


def strip_preference(user_input: str) -> str:
    """``user_input`` without the first preference instruction it contains (the authors'
    rule: one instruction per row, removed wherever it stands), trimmed; the run of spaces
    the removal leaves becomes one space, newlines stay."""
    for instruction in PREFERENCE_PROMPTS.values():
        if instruction in user_input:
            return re.sub(r" {2,}", " ", user_input.replace(instruction, "")).strip()
    return user_input.strip()


def with_preference(prompt: str, dimension: str) -> str:
    """An evaluation prompt with ``dimension``'s preference instruction appended, as the
    authors' generation scripts do (``{instruction} {input} {preference}``)."""
    return f"{prompt.strip()} {PREFERENCE_PROMPTS[dimension]}"


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


# --------------------------------------------------------------------------- notebook 05's groups


def group_truth(texts: Sequence[str], majority: str, minority: str) -> pd.DataFrame:
    """The rule-based ground truth of each response for the two groups' dimensions
    (columns ``majority``, ``minority``)."""
    scores = dimension_scores(texts)
    return pd.DataFrame({"majority": scores[majority], "minority": scores[minority]})


def psoups_users(
    files: Mapping[str, Dataset],
    users: Mapping[str, int],
    per_user: int,
    seed: int,
    template: str = TULU_TEMPLATE,
    held_out: int = 0,
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, tuple[str, ...], dict[str, Dataset]]:
    """Cut each dimension's P-SOUPS comparisons into ``users[dim]`` users of ``per_user``
    distinct comparisons each (the release has no user ids; EM needs them), and set at
    least ``held_out`` rows of each file aside for the judges' reward models.

    The files share their prompts (P1A and P1B rank answers to the same instructions), so
    rows are held out **by prompt, across all files**: a held-out prompt's rows leave every
    file's users, and no judge learns from a comparison that an arm trained on in another
    file with the opposite label. Held-out prompts are taken in a seeded order until every
    file has ``held_out`` rows on them.

    Returns (chosen, rejected, user id per comparison, group of each user, group names,
    held-out rows per dimension); texts are ``template(prompt) + answer`` with the
    preference instruction stripped from the prompt (:func:`strip_preference`), the form
    the reward models score."""
    chosen, rejected, user_of, user_group = [], [], [], []
    groups = tuple(users)
    rng = np.random.default_rng(seed)
    prompts = {dim: [strip_preference(p) for p in files[dim]["prompt"]] for dim in groups}
    held_prompts = _held_out_prompts(prompts, held_out, rng)
    held: dict[str, Dataset] = {}
    for g, dim in enumerate(groups):
        data = files[dim]
        need = users[dim] * per_user
        order = rng.permutation(len(data))
        is_held = np.array([prompts[dim][i] in held_prompts for i in order], dtype=bool)
        free = order[~is_held]
        if need > len(free):
            raise ValueError(
                f"{dim}: {users[dim]} users x {per_user} need {need} rows, the file has "
                f"{len(free)} outside the {len(held_prompts)} held-out prompts "
                f"({len(data)} rows in all)"
            )
        held[dim] = data.select(order[is_held][:held_out]) if held_out else data.select([])
        for j, row in enumerate(free[:need]):
            rec = data[int(row)]
            c, r = comparison_texts(rec, template)
            chosen.append(c)
            rejected.append(r)
            user_of.append(len(user_group) + j // per_user)
        user_group += [g] * users[dim]
    return chosen, rejected, np.asarray(user_of), np.asarray(user_group), groups, held


def _held_out_prompts(
    prompts: Mapping[str, Sequence[str]], held_out: int, rng: np.random.Generator
) -> set[str]:
    """The fewest prompts, in a seeded order, on which every file has ``held_out`` rows."""
    if held_out <= 0:
        return set()
    distinct = sorted(set().union(*(set(p) for p in prompts.values())))
    counts = {dim: Counter(p) for dim, p in prompts.items()}
    have = dict.fromkeys(prompts, 0)
    chosen: set[str] = set()
    for i in rng.permutation(len(distinct)):
        prompt = distinct[int(i)]
        chosen.add(prompt)
        for dim in have:
            have[dim] += counts[dim][prompt]
        if min(have.values()) >= held_out:
            return chosen
    short = {dim: n for dim, n in have.items() if n < held_out}
    raise ValueError(f"held_out={held_out} rows per file: only {short} rows exist")


def comparison_texts(record: Mapping[str, str], template: str = TULU_TEMPLATE) -> tuple[str, str]:
    """(chosen, rejected) texts of one P-SOUPS row: the templated prompt without its
    preference instruction, then each answer."""
    prompt = template.format(prompt=strip_preference(record["prompt"]))
    return prompt + record["chosen"], prompt + record["rejected"]


def load_psoups(
    folder: str | Path,
    files: Mapping[str, str],
    dimensions: Sequence[str],
    columns: Mapping[str, str] | None = None,
) -> dict[str, Dataset]:
    """Each dimension's P-SOUPS comparisons from ``folder / files[dimension]`` (the RLPHF
    release's ``data/`` folder, unzipped), every row validated."""
    out = {}
    for dim in dimensions:
        if dim not in files:
            raise ValueError(f"psoups_files: no file for dimension {dim}")
        out[dim] = load_preference_file(str(Path(folder) / files[dim]), "train", columns)
    return out


def check_dimensions(majority: str, minority: str) -> None:
    for dim in (majority, minority):
        if dim not in DIMENSIONS:
            raise ValueError(f"unknown P-SOUPS dimension {dim!r}; known: {list(DIMENSIONS)}")
    if majority == minority:
        raise ValueError("majority and minority must be different dimensions")


def opposed(majority: str, minority: str) -> bool:
    """True when the two ground truths are exact negatives (P1A/P1B, P2A/P2B, P3A/P3B)."""
    a, b = DIMENSIONS[majority], DIMENSIONS[minority]
    return a.scorer == b.scorer and a.sign == -b.sign
