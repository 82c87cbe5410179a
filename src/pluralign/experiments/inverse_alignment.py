"""Notebook 06 (inverse alignment): the cpu offline preference set and its labelling policies.

The FRFT algorithm is in :mod:`pluralign.core.frft` (selection) and
:mod:`pluralign.training.frft` (the refit during PPO). This module builds what the paper's
offline data stands for on the cpu profile: for each IMDB prompt one pair from each source
(reference-policy samples at several temperatures, human review text, damaged copies), each
labelled by a scoring policy drawn from its source's mix, so that a reward model trained on
all of it averages their signals ("the averaging effect").
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset
from numpy.typing import NDArray

from pluralign._typing import TextScore
from pluralign.core.frft import select, similarities
from pluralign.data.preferences import PreferenceRecords, load_preference_records
from pluralign.data.scorers import FK_CLIP, flesch_kincaid_grade, n_words
from pluralign.data.text import review_prompts, split_prompts
from pluralign.experiments._rlhf import Evaluation, evaluate_policy
from pluralign.pipeline.assets import load_imdb
from pluralign.pipeline.config import StageConfig
from pluralign.training.frft import (
    FilteredRefit,
    OnPolicyPairs,
    RefitSettings,
    embed,
    embed_records,
    pair_accuracy,
    run_frft,
    selection_stats,
)
from pluralign.training.generation import GenerationSettings, sample_rollouts
from pluralign.training.models import load_sequence_classifier, load_tokenizer
from pluralign.training.ppo import PPOSettings
from pluralign.training.reward_models import (
    RewardModelSettings,
    fit_reward_model,
    reward_fn,
    score_texts,
)
from pluralign.training.sentiment import SentimentJudge


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """``inverse_alignment`` (notebook 06): filtered reward fine-tuning during PPO vs vanilla."""

    policy: str
    """``00_policy_pretrain`` (that stage's model) or a pinned hub causal LM
    (``gpt2-medium@..``)."""
    judge: str
    """Ground truth: ``00_sentiment_judge`` (P(positive), cpu) or a pinned hub reward or
    sentiment model."""
    imdb: str
    offline_data: str
    """``synthetic`` (the cpu offline set built here) or a pinned hub preference set with
    ``prompt``, ``chosen`` and ``rejected`` text columns (``Dahoas/rm-static@..``)."""
    prompt_tokens: int
    generation: GenerationSettings
    n_offline_prompts: int
    n_ppo_prompts: int
    n_eval_prompts: int
    n_ood_prompts: int
    """Prompts of the out-of-distribution reward model's data (0: no OOD arm)."""
    source_temperatures: list[float]
    """Reference-policy sampling temperatures, one ``sft_t<T>`` source each."""
    labeler_mix: dict[str, dict[str, float]]
    """Per source, the share of records labelled by each scoring policy."""
    label_noise: float
    truth: str
    """The scoring policy the user wants (PPO is evaluated by it)."""
    rm_backbone: str
    reward_model: RewardModelSettings
    rules: list[str]
    select_k: int
    select_threshold: float
    """P1's cosine threshold (the paper's 0.8 is for its encoder; see the notebook)."""
    refit_every: int
    refit_lr: float
    refit_epochs: float
    ppo: PPOSettings
    seeds: list[int]
    convergence_margin: float
    """Convergence = first update whose ground truth is >= reference + this margin."""
    n_boot: int


# --------------------------------------------------------------------------- offline records


def perturb_text(text: str, rng: np.random.Generator, drop: float = 0.3) -> str:
    """A damaged copy: each word dropped with probability ``drop``, then adjacent words
    swapped at random (the "perturbed texts" source of the offline set)."""
    words = [w for w in text.split() if rng.random() >= drop]
    for i in range(0, len(words) - 1, 2):
        if rng.random() < 0.5:
            words[i], words[i + 1] = words[i + 1], words[i]
    return (" " + " ".join(words)) if words else ""


def label_pairs_by(
    scores_a: pd.DataFrame,
    scores_b: pd.DataFrame,
    labeler: Sequence[str],
    noise: float,
    rng: np.random.Generator,
) -> NDArray[np.bool_]:
    """``a_wins`` per record: record i is labelled by the scoring policy ``labeler[i]`` (a
    column of the score frames; higher is better), ties broken at random, then the label is
    flipped with probability ``noise``."""
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"label noise must be in [0, 0.5), got {noise}")
    labeler = np.asarray(labeler, dtype=str)
    unknown = sorted(str(x) for x in set(labeler) - set(scores_a.columns))
    if unknown:
        raise ValueError(f"no scores for labelers {unknown}; have {list(scores_a.columns)}")
    if list(scores_b.columns) != list(scores_a.columns):
        raise ValueError("scores_a and scores_b must have the same columns in the same order")
    cols = {c: k for k, c in enumerate(scores_a.columns)}
    idx = np.array([cols[c] for c in labeler], dtype=np.int64)
    rows = np.arange(len(labeler))
    diff = scores_a.to_numpy()[rows, idx] - scores_b.to_numpy()[rows, idx]
    a_wins = np.where(diff == 0, rng.random(len(rows)) < 0.5, diff > 0)
    return a_wins ^ (rng.random(len(rows)) < noise)


def assign_labelers(
    sources: Sequence[str], mix: dict[str, dict[str, float]], rng: np.random.Generator
) -> NDArray[np.str_]:
    """Each record's labelling policy, drawn from its source's mix (weights normalized)."""
    out = np.empty(len(sources), dtype=object)
    sources = np.asarray(sources, dtype=str)
    for src in np.unique(sources):
        if src not in mix:
            raise ValueError(f"source {str(src)!r} has no labeler mix (known: {sorted(mix)})")
        names = list(mix[src])
        w = np.asarray([mix[src][n] for n in names], dtype=np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"labeler mix of source {str(src)!r} needs non-negative weights > 0")
        rows = np.flatnonzero(sources == src)
        out[rows] = rng.choice(names, size=rows.size, p=w / w.sum())
    return out.astype(str)


def build_records(
    prompts: Sequence[str],
    pairs: dict[str, tuple[Sequence[str], Sequence[str]]],
    score: Callable[[list[str], list[str]], pd.DataFrame],
    mix: dict[str, dict[str, float]],
    noise: float,
    truth: str,
    seed: int,
) -> PreferenceRecords:
    """One record per (source, prompt): ``pairs[source] = (responses_a, responses_b)``, one
    entry per prompt. ``score(prompts, responses)`` gives every labelling policy's score of
    each response (one column each, higher better); column ``truth`` is the ground truth the
    user wants, used only for ``agrees_with_truth`` (a ground-truth tie counts as not
    agreeing: the label then carries no information about the truth)."""
    rng = np.random.default_rng(seed)
    n = len(prompts)
    names = list(pairs)
    for src in names:
        a, b = pairs[src]
        if len(a) != n or len(b) != n:
            raise ValueError(f"source {src!r}: {len(a)}/{len(b)} responses for {n} prompts")
    prompt_index = np.tile(np.arange(n), len(names))
    source = np.repeat(names, n)
    resp_a = [r for src in names for r in pairs[src][0]]
    resp_b = [r for src in names for r in pairs[src][1]]
    p_text = [prompts[i] for i in prompt_index]
    sa, sb = score(p_text, resp_a), score(p_text, resp_b)
    if truth not in sa.columns:
        raise ValueError(f"ground truth {truth!r} is not a scored column {list(sa.columns)}")
    labeler = assign_labelers(source, mix, rng)
    a_wins = label_pairs_by(sa, sb, labeler, noise, rng)
    truth_diff = sa[truth].to_numpy() - sb[truth].to_numpy()
    agrees = np.where(a_wins, truth_diff > 0, truth_diff < 0)
    return PreferenceRecords(
        prompts=list(prompts),
        prompt_index=prompt_index,
        chosen=[a if w else b for a, b, w in zip(resp_a, resp_b, a_wins, strict=True)],
        rejected=[b if w else a for a, b, w in zip(resp_a, resp_b, a_wins, strict=True)],
        source=source,
        labeler=labeler,
        agrees_with_truth=agrees,
    )


def human_pairs(
    tokenizer, continuations: Sequence[Sequence[int]], seed: int, min_tokens: int = 4
) -> tuple[list[str], list[str]]:
    """The ``human`` source: per prompt, its own review's continuation vs another review's,
    each cut to a random length of ``min_tokens``.. tokens (human text, varied lengths)."""
    rng = np.random.default_rng(seed)
    n = len(continuations)
    if n < 2:
        raise ValueError("need at least 2 reviews for human pairs")
    other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the prompt's own review

    def cut(ids: Sequence[int]) -> str:
        k = int(rng.integers(min(min_tokens, len(ids)), len(ids) + 1))
        return tokenizer.decode(list(ids[:k]))

    own = [cut(c) for c in continuations]
    return own, [cut(continuations[j]) for j in other]


def labeler_scores(prompts: list[str], responses: list[str], sentiment: TextScore) -> pd.DataFrame:
    """The scoring policies of the cpu offline set, higher = preferred: ``sentiment`` =
    P(positive) of prompt + response (the judge); ``length`` = ``-words(response)``;
    ``readability`` = ``-clip(Flesch-Kincaid grade)`` of the response."""
    grade = np.array([flesch_kincaid_grade(r) if r.strip() else 0.0 for r in responses])
    return pd.DataFrame(
        {
            "sentiment": np.asarray(
                sentiment([p + r for p, r in zip(prompts, responses, strict=True)]),
                dtype=np.float64,
            ),
            "length": -np.array([n_words(r) for r in responses], dtype=np.float64),
            "readability": -np.clip(grade, *FK_CLIP),
        }
    )


# --------------------------------------------------------------------------- the stage's data


@dataclass
class OfflineSet:
    """The offline preference records (embedded), the prompts of each role, and the
    reference texts every reward is z-scored on."""

    records: PreferenceRecords
    ood_records: PreferenceRecords | None
    offline_prompt_ids: list[list[int]]
    ppo_prompt_ids: list[list[int]]
    eval_prompt_ids: list[list[int]]
    reference_texts: list[str]


def _sample(cfg: Config, tok, policy, prompt_ids, seed: int, temperature: float | None = None):
    t = cfg.generation.temperature if temperature is None else temperature
    return sample_rollouts(policy, tok, prompt_ids, cfg.generation.max_new_tokens, t, seed)


def build_offline_set(cfg: Config, tok, ref_policy, truth_of: TextScore, encoder) -> OfflineSet:
    """cpu (``offline_data: synthetic``): the averaging-effect set built from IMDB prompts
    (module docstring) and, with ``n_ood_prompts``, the OOD reward model's human-text set;
    paper: a hub preference set, prompts kept to their last ``prompt_tokens`` tokens.
    The records' response embeddings are computed once here."""
    if cfg.offline_data == "synthetic":
        gen = cfg.generation
        parts = split_prompts(
            lambda texts: _with_continuations(tok, texts, cfg.prompt_tokens, gen.max_new_tokens),
            load_imdb(cfg.imdb)["text"],
            {"offline": cfg.n_offline_prompts, "ppo": cfg.n_ppo_prompts,
             "eval": cfg.n_eval_prompts, "ood": cfg.n_ood_prompts},
            cfg.seed,
        )  # fmt: skip
        offline_prompt_ids = [ids for ids, _ in parts["offline"]]
        offline_text = decode_prompts(tok, offline_prompt_ids)
        pairs: dict[str, tuple[list[str], list[str]]] = {}
        reference_texts: list[str] = []
        for k, temp in enumerate(cfg.source_temperatures):
            a = _sample(cfg, tok, ref_policy, offline_prompt_ids, cfg.seed + 10 + 2 * k, temp)
            b = _sample(cfg, tok, ref_policy, offline_prompt_ids, cfg.seed + 11 + 2 * k, temp)
            pairs[f"sft_t{temp:g}"] = (a.continuations, b.continuations)
            if k == 0:
                reference_texts = a.texts  # the reward's normalization statistics
                pert_rng = np.random.default_rng(cfg.seed + 30)
                pairs["perturbed"] = (
                    [perturb_text(x, pert_rng) for x in a.continuations],
                    [perturb_text(x, pert_rng) for x in b.continuations],
                )
        pairs["human"] = human_pairs(tok, [c for _, c in parts["offline"]], cfg.seed + 31)

        def scores(prompts: list[str], responses: list[str]) -> pd.DataFrame:
            return labeler_scores(prompts, responses, truth_of)

        records = build_records(
            offline_text, pairs, scores, cfg.labeler_mix, cfg.label_noise, cfg.truth,
            cfg.seed + 32,
        )  # fmt: skip
        ood_records = None
        if cfg.n_ood_prompts:
            ood_pairs = {"human": human_pairs(tok, [c for _, c in parts["ood"]], cfg.seed + 33)}
            ood_records = build_records(
                decode_prompts(tok, [ids for ids, _ in parts["ood"]]),
                ood_pairs,
                scores,
                {"human": {cfg.truth: 1.0}},
                cfg.label_noise,
                cfg.truth,
                cfg.seed + 34,
            )
        ppo_prompt_ids = [ids for ids, _ in parts["ppo"]]
        eval_prompt_ids = [ids for ids, _ in parts["eval"]]
    else:
        records = load_preference_records(cfg.offline_data, "train", cfg.n_offline_prompts)
        eval_records = load_preference_records(cfg.offline_data, "test", cfg.n_eval_prompts)

        def cut(prompts: list[str]) -> list[list[int]]:
            ids = tok(prompts, add_special_tokens=False)["input_ids"]
            return [[tok.eos_token_id, *p[-cfg.prompt_tokens :]] for p in ids]

        offline_prompt_ids = cut(records.prompts)
        full = [p for p in offline_prompt_ids if len(p) == cfg.prompt_tokens + 1]
        ppo_prompt_ids = full[: cfg.n_ppo_prompts]
        eval_prompt_ids = [p for p in cut(eval_records.prompts) if len(p) == cfg.prompt_tokens + 1]
        reference_texts = _sample(
            cfg, tok, ref_policy, offline_prompt_ids[:1024], cfg.seed + 10
        ).texts
        ood_records = None
    embed_records(records, encoder)
    return OfflineSet(
        records, ood_records, offline_prompt_ids, ppo_prompt_ids, eval_prompt_ids, reference_texts
    )


def _with_continuations(tok, texts, prompt_tokens: int, max_new_tokens: int) -> list[tuple]:
    """(prompt ids, the review's own next tokens) per review long enough to give both."""
    ids, rest = review_prompts(tok, texts, prompt_tokens, max_new_tokens)
    return list(zip(ids, rest, strict=True))


def ground_truth(source: str) -> TextScore:
    """The user's ground truth from a model folder or pinned hub name: P(positive) of a
    sentiment classifier (``00_sentiment_judge``), or the score of a one-output gold reward
    model (the paper's DeBERTa reward model)."""
    model, tok = load_sequence_classifier(source), load_tokenizer(source)
    if model.config.num_labels > 1:
        judge = SentimentJudge(model, tok)
        return lambda texts: judge.positive_prob(texts).astype(np.float64)
    return lambda texts: score_texts(model, tok, texts, max_length=512)


def evaluation_of(cfg: Config, data: OfflineSet, truth_of: TextScore, truth_ref) -> Evaluation:
    """How every arm is judged: its answers to the evaluation prompts, sampled with the
    reference's seed (``seed + 50``), against the reference's; bootstrap seeded by ``seed``."""
    return Evaluation(
        data.eval_prompt_ids,
        rollout_truth(truth_of),
        truth_ref,
        cfg.seed + 50,
        cfg.n_boot,
        cfg.seed,
    )


def rollout_truth(truth_of: TextScore):
    """The ground truth of rollouts (prompt + answer texts) as a one-column frame."""
    return lambda roll: pd.DataFrame({"truth": truth_of(roll.texts)})


def decode_prompts(tok, prompt_ids: Sequence[Sequence[int]]) -> list[str]:
    """Prompt texts as ``Rollouts.texts`` begin: without the leading EOS."""
    return [tok.decode(p[1:]) for p in prompt_ids]


def on_policy_pairs(
    cfg: Config, tok, prompt_ids, truth_of: TextScore, policy, updates: int
) -> OnPolicyPairs:
    """Two samples per evaluation prompt, the same seeds for every arm at a given update."""
    a = _sample(cfg, tok, policy, prompt_ids, cfg.seed * 1000 + 2 * updates + 101)
    b = _sample(cfg, tok, policy, prompt_ids, cfg.seed * 1000 + 2 * updates + 102)
    return OnPolicyPairs(a.texts, b.texts, truth_of(a.texts), truth_of(b.texts))


def train_on(
    records: PreferenceRecords, new_reward_model: Callable[[], Any], tok, cfg: Config, seed: int
):
    """A reward model trained from scratch on ``records`` (prompt + response texts)."""
    chosen, rejected = records.full_texts()
    return fit_reward_model(new_reward_model(), tok, chosen, rejected, cfg.reward_model, seed)


def subset_experiment(
    cfg: Config,
    data: OfflineSet,
    tok,
    ref_policy,
    encoder,
    new_reward_model: Callable[[], Any],
    pairs: OnPolicyPairs,
) -> pd.DataFrame:
    """The paper's second claim: at the reference policy each rule selects ``select_k``
    records and a reward model trained on them alone is scored by its accuracy on the
    on-policy ``pairs`` (one row per rule and seed; the subset depends on the seed for the
    random rule only)."""
    ref_gen = _sample(cfg, tok, ref_policy, data.offline_prompt_ids, cfg.seed + 40).continuations
    records = data.records
    s_c, s_r = similarities(
        embed(encoder, ref_gen), records.prompt_index, records.chosen_emb, records.rejected_emb
    )
    rows = []
    for rule in cfg.rules:
        for seed in cfg.seeds:
            picked = select(
                rule, s_c, s_r, cfg.select_k, cfg.select_threshold, np.random.default_rng(seed)
            )
            accuracy = math.nan  # P1 can select nothing (no record above the threshold)
            if picked.size:
                model = train_on(records.subset(picked), new_reward_model, tok, cfg, seed)
                score = reward_fn(model, tok, cfg.reward_model.max_length)
                accuracy = pair_accuracy(score, pairs)
            rows.append(
                {
                    "rule": rule,
                    "seed": seed,
                    "accuracy": accuracy,
                    "selected": picked.size,
                    **selection_stats(records, picked, s_c, s_r),
                }
            )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- PPO arms


@dataclass(frozen=True)
class Arm:
    """One PPO arm: the reward model it starts from and the FRFT rule (None: no refit)."""

    name: str
    start: str
    """``vanilla`` (the whole offline set) or ``ood`` (human text, the right labels)."""
    rule: str | None = None


def arms(cfg: Config, with_ood: bool) -> list[Arm]:
    """Vanilla RLHF, FRFT with each rule (``random``: the control), and the OOD model."""
    out = [Arm("vanilla", "vanilla")]
    out += [Arm(f"FRFT_{rule}", "vanilla", rule) for rule in cfg.rules]
    return out + ([Arm("OOD", "ood")] if with_ood else [])


def refit_settings(cfg: Config, rule: str) -> RefitSettings:
    """FRFT's refit: ``select_k`` records by ``rule`` every ``refit_every`` updates, one
    short fine-tuning (``refit_lr``, ``refit_epochs``) at the reward models' batch size."""
    return RefitSettings(
        rule=rule,
        k=cfg.select_k,
        every=cfg.refit_every,
        threshold=cfg.select_threshold,
        learning_rate=cfg.refit_lr,
        epochs=cfg.refit_epochs,
        batch_size=cfg.reward_model.per_device_train_batch_size,
        max_length=cfg.reward_model.max_length,
    )


def run_arm(
    arm: Arm,
    seed: int,
    cfg: Config,
    data: OfflineSet,
    start_models: dict[str, Any],
    new_policy: Callable[[], Any],
    ref_policy,
    tok,
    encoder,
    truth_of: TextScore,
    evaluation: Evaluation,
    other_rewards: dict[str, TextScore],
    workdir: str | Path,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One PPO run of ``arm`` (its reward model a fresh copy of its start model), then its
    answers on the evaluation prompts judged against the reference's
    (:func:`pluralign.experiments._rlhf.evaluate_policy`)."""
    reward_model = copy.deepcopy(start_models[arm.start])
    refit = None
    if arm.rule is not None:
        refit = FilteredRefit(
            reward_model,
            tok,
            data.records,
            data.offline_prompt_ids,
            encoder,
            refit_settings(cfg, arm.rule),
            lambda policy, ids, s: _sample(cfg, tok, policy, ids, s).continuations,
            seed,
        )
    t_run = time.perf_counter()
    policy, log = run_frft(
        new_policy(),
        tok,
        Dataset.from_dict({"input_ids": data.ppo_prompt_ids}),
        reward_model,
        cfg.reward_model.max_length,
        data.reference_texts,
        cfg.ppo,
        cfg.generation,
        workdir,
        seed,
        refit,
        functools.partial(on_policy_pairs, cfg, tok, data.eval_prompt_ids, truth_of),
        other_rewards,
        progress=True,
    )
    seconds = time.perf_counter() - t_run
    _, scores = evaluate_policy(policy, ref_policy, tok, cfg.generation, evaluation)
    row = {"run": arm.name, "seed": seed, **scores, "seconds": seconds}
    return log.assign(run=arm.name, seed=seed), row
