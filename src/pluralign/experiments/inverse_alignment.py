"""Notebook 06 (inverse alignment): the offline preference set, the arms, and the decision rule.

The FRFT algorithm is in :mod:`pluralign.core.frft` (selection) and
:mod:`pluralign.training.frft` (the refit during PPO), its embeddings in
:mod:`pluralign.training.frft_embeddings` and its reward models in
:mod:`pluralign.training.frft_rewards`. This module builds what the paper's offline data
stands for on the cpu profile: for each IMDB prompt one pair from each source
(reference-policy samples at several temperatures, human review text, damaged copies), each
labelled by a scoring policy drawn from its source's mix, so that a reward model trained on
all of it averages their signals ("the averaging effect"). It also defines the arms (vanilla,
the oracle filter, FRFT per rule, the random control, two OOD reward models), the paired
statistics and the pre-registered decision rule of the notebook.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset
from numpy.typing import NDArray

from pluralign._typing import FloatArray, TextScore
from pluralign.core.frft import RULES, similarities
from pluralign.core.stats import bootstrap_ci, updates_to_target
from pluralign.data.preferences import PreferenceRecords, load_preference_records
from pluralign.data.scorers import FK_CLIP, flesch_kincaid_grade, n_words
from pluralign.data.text import review_prompts, split_prompts
from pluralign.experiments._rlhf import Evaluation, evaluate_policy
from pluralign.pipeline.assets import load_imdb, load_sentence_encoder
from pluralign.pipeline.config import StageConfig
from pluralign.training.frft import (
    FilteredRefit,
    OnPolicyPairs,
    RefitSettings,
    run_frft,
    select_records,
    selection_stats,
)
from pluralign.training.frft_embeddings import (
    Embedding,
    char_tfidf,
    hidden_mean,
    logprob_profile,
    source_id_accuracy,
)
from pluralign.training.frft_rewards import (
    FittedReward,
    NeuralRewards,
    ProbeRewards,
    RewardRecipe,
)
from pluralign.training.generation import GenerationSettings, Rollouts, sample_rollouts
from pluralign.training.models import load_sequence_classifier, load_tokenizer
from pluralign.training.ppo import PPOSettings
from pluralign.training.reward_models import RewardModelSettings, score_texts
from pluralign.training.sentiment import SentimentJudge

REWARD_MODELS = ("probe", "neural")
SENTENCE = "sentence:"
"""Embedding candidates named ``sentence:<encoder>`` embed with a sentence encoder
(``packaged`` MiniLM, or a pinned hub one such as the authors' style encoder)."""
POLICY_EMBEDDINGS = ("logprob_profile", "hidden_mean", "char_tfidf")


#: The stage's DVC metrics: ground truth per main arm, the positive control and the three claims.
#: Its other numbers go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "embedding",
    "reference_truth",
    "vanilla_truth",
    "oracle_filter_truth",
    "frft_P1_truth",
    "random_truth",
    "oracle_filter_minus_vanilla",
    "power",
    "claim_beats_vanilla",
    "claim_faster",
    "claim_subset_competitive",
    "rules_beating_vanilla",
)


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
    """Prompts of the out-of-distribution reward models' data (0: no OOD arms)."""
    source_temperatures: list[float]
    """Reference-policy sampling temperatures, one ``sft_t<T>`` source each."""
    labeler_mix: dict[str, dict[str, float]]
    """Per source, the share of records labelled by each scoring policy."""
    label_noise: float
    truth: str
    """The scoring policy the user wants (PPO is evaluated by it; the oracle filter keeps
    the records it labelled)."""
    rm_backbone: str
    reward_model: RewardModelSettings
    reward_models: str
    """``neural`` (a fresh backbone + scalar head per fit, the authors') or ``probe`` (a
    fresh linear BT head on frozen ``probe_encoder`` features: cpu, see
    :mod:`pluralign.training.frft_rewards`)."""
    probe_encoder: str
    probe_ridge: float
    embeddings: list[str]
    """Candidate embeddings; the one with the best held-out source identification is used."""
    embedding_folds: int
    rules: list[str]
    select_k: int
    select_threshold: float | None
    """P1's cosine threshold; None: the largest one at least ``select_k`` records pass."""
    refit_every: int
    pair_draws: int
    """On-policy pairs per evaluation prompt at the reference (RM accuracies, subset study)."""
    ppo: PPOSettings
    seeds: list[int]
    convergence_margin: float
    """Convergence = first checkpoint whose ground truth is >= reference + this margin."""
    noninferiority_margin: float
    """A subset's reward model is "competitive" when its accuracy is at most this much below
    the whole set's (lower CI bound)."""
    n_boot: int

    def __post_init__(self) -> None:
        if self.reward_models not in REWARD_MODELS:
            raise ValueError(f"reward_models must be one of {REWARD_MODELS}")
        unknown = [e for e in self.embeddings if not embedding_known(e)]
        if not self.embeddings or unknown:
            raise ValueError(
                f"embeddings must name candidates from {POLICY_EMBEDDINGS} or "
                f"'{SENTENCE}<encoder>'; got {self.embeddings}"
            )
        bad = sorted(set(self.rules) - set(RULES))
        if bad:
            raise ValueError(f"unknown rules {bad}; choose from {RULES}")
        if self.refit_every % self.ppo.checkpoint_every:
            raise ValueError("refit_every must be a multiple of ppo.checkpoint_every")
        if self.truth not in {lab for mix in self.labeler_mix.values() for lab in mix}:
            raise ValueError(f"no source is labelled by the ground truth {self.truth!r}")
        if self.pair_draws < 1 or self.embedding_folds < 2:
            raise ValueError("pair_draws must be >= 1 and embedding_folds >= 2")


def embedding_known(name: str) -> bool:
    return name in POLICY_EMBEDDINGS or (name.startswith(SENTENCE) and len(name) > len(SENTENCE))


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


def pooled_mix(mix: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The labeler shares of the whole offline set (every source holds one record per
    prompt): the mean over sources of each source's normalized mix. The OOD reward model's
    labels are drawn from it ("the same labeler mix on other text")."""
    out: dict[str, float] = {}
    for weights in mix.values():
        total = float(sum(weights.values()))
        for name, w in weights.items():
            out[name] = out.get(name, 0.0) + w / total / len(mix)
    return out


# --------------------------------------------------------------------------- the stage's data


@dataclass
class OfflineSet:
    """The offline preference records, the OOD arms' records (by arm name), the prompts of
    each role, and the reference texts every reward is z-scored on."""

    records: PreferenceRecords
    ood_records: dict[str, PreferenceRecords]
    offline_prompt_ids: list[list[int]]
    ppo_prompt_ids: list[list[int]]
    eval_prompt_ids: list[list[int]]
    reference_texts: list[str]


def sample(
    cfg: Config, tok, policy, prompt_ids, seed: int, temperature: float | None = None
) -> Rollouts:
    """The stage's sampling: ``cfg.generation`` (``temperature`` overrides its temperature)."""
    t = cfg.generation.temperature if temperature is None else temperature
    return sample_rollouts(policy, tok, prompt_ids, cfg.generation.max_new_tokens, t, seed)


def build_offline_set(cfg: Config, tok, ref_policy, truth_of: TextScore) -> OfflineSet:
    """cpu (``offline_data: synthetic``): the averaging-effect set built from IMDB prompts
    (module docstring) and, with ``n_ood_prompts``, the OOD reward models' human-text pairs
    on other prompts, labelled once by the offline set's pooled labeler mix (``ood_mix``)
    and once by the ground truth alone (``ood_oracle``, an upper bound); paper: a hub
    preference set, prompts kept to their last ``prompt_tokens`` tokens."""
    ood_records: dict[str, PreferenceRecords] = {}
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
            a = sample(cfg, tok, ref_policy, offline_prompt_ids, cfg.seed + 10 + 2 * k, temp)
            b = sample(cfg, tok, ref_policy, offline_prompt_ids, cfg.seed + 11 + 2 * k, temp)
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
        if cfg.n_ood_prompts:
            ood_text = decode_prompts(tok, [ids for ids, _ in parts["ood"]])
            ood_pairs = {"human": human_pairs(tok, [c for _, c in parts["ood"]], cfg.seed + 33)}
            for name, mix, seed in (
                ("ood_mix", {"human": pooled_mix(cfg.labeler_mix)}, cfg.seed + 35),
                ("ood_oracle", {"human": {cfg.truth: 1.0}}, cfg.seed + 34),
            ):
                ood_records[name] = build_records(
                    ood_text, ood_pairs, scores, mix, cfg.label_noise, cfg.truth, seed
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
        reference_texts = sample(
            cfg, tok, ref_policy, offline_prompt_ids[:1024], cfg.seed + 10
        ).texts
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
    cfg: Config, tok, prompt_ids, truth_of: TextScore, policy, updates: int, draws: int = 1
) -> OnPolicyPairs:
    """``draws`` pairs of samples per evaluation prompt, the same seeds for every arm at a
    given update (draw d uses seeds ``seed * 1000 + 2 (updates + 100 d) + 101 / 102``)."""
    texts_a: list[str] = []
    texts_b: list[str] = []
    for d in range(draws):
        base = cfg.seed * 1000 + 2 * (updates + 100 * d)
        texts_a += sample(cfg, tok, policy, prompt_ids, base + 101).texts
        texts_b += sample(cfg, tok, policy, prompt_ids, base + 102).texts
    return OnPolicyPairs(texts_a, texts_b, truth_of(texts_a), truth_of(texts_b))


def pair_correct(score: TextScore, pairs: OnPolicyPairs) -> FloatArray:
    """Per pair: 1 when the reward orders it as the ground truth does, 0 when not (a reward
    tie included), NaN on a ground-truth tie: the per-pair form of
    :func:`pluralign.training.frft.pair_accuracy`, for paired bootstraps."""
    sa, sb = np.asarray(score(pairs.texts_a)), np.asarray(score(pairs.texts_b))
    diff = np.asarray(pairs.truth_a, dtype=np.float64) - np.asarray(pairs.truth_b)
    out = (np.sign(sa - sb) == np.sign(diff)).astype(np.float64)
    out[diff == 0] = np.nan
    return out


def reward_accuracies(
    rewards: Mapping[str, FittedReward], pairs: OnPolicyPairs, n_boot: int, seed: int
) -> pd.DataFrame:
    """On-policy accuracy of each reward with a bootstrap CI over pairs (ties dropped)."""
    rows = []
    for name, reward in rewards.items():
        c = pair_correct(reward.score, pairs)
        m, lo, hi = bootstrap_ci(c[np.isfinite(c)], n_boot, seed)
        rows.append({"reward_model": name, "accuracy": m, "lo": lo, "hi": hi})
    return pd.DataFrame(rows).set_index("reward_model")


# --------------------------------------------------------------------------- reward models


def reward_recipe(cfg: Config, new_reward_model: Callable[[], Any], tok, records) -> RewardRecipe:
    """The stage's reward models: ``probe`` heads on the frozen ``probe_encoder`` (its
    features z-scored on the offline records' texts) or ``neural`` backbone fine-tunes."""
    if cfg.reward_models == "neural":
        return NeuralRewards(new_reward_model, tok, cfg.reward_model)
    encoder = load_sentence_encoder(cfg.probe_encoder)

    def featurize(texts: list[str]) -> FloatArray:
        return encoder.encode(
            texts, batch_size=128, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False,
        ).astype(np.float64)  # fmt: skip

    chosen, rejected = records.full_texts()
    return ProbeRewards(featurize, chosen + rejected, cfg.probe_ridge)


# --------------------------------------------------------------------------- the embedding


def embedding_candidates(
    names: Sequence[str], ref_policy, tok, records: PreferenceRecords, seed: int
) -> dict[str, Embedding]:
    """The candidate embeddings of prompt + response (unfitted: :func:`choose_embedding`
    fits each on the records)."""
    out: dict[str, Embedding] = {}
    for name in names:
        if name == "logprob_profile":
            raw = functools.partial(logprob_profile, ref_policy, tok)
        elif name == "hidden_mean":
            raw = functools.partial(hidden_mean, ref_policy, tok)
        elif name == "char_tfidf":
            prompts = [records.prompts[i] for i in records.prompt_index]
            responses = list(records.chosen) + list(records.rejected)
            texts = [p + r for p, r in zip(prompts * 2, responses, strict=True)]
            tfidf = char_tfidf(texts, dims=128, seed=seed)
            raw = _joined(tfidf)
        elif name.startswith(SENTENCE):
            encoder = load_sentence_encoder(name[len(SENTENCE) :])
            raw = _joined(
                lambda texts, enc=encoder: enc.encode(
                    list(texts), batch_size=128, convert_to_numpy=True, show_progress_bar=False
                ).astype(np.float64)
            )
        else:
            raise ValueError(f"unknown embedding {name!r}")
        out[name] = Embedding(name, raw)
    return out


def _joined(fn: Callable[[Sequence[str]], FloatArray]):
    return lambda prompts, responses: fn([p + r for p, r in zip(prompts, responses, strict=True)])


def choose_embedding(
    candidates: Mapping[str, Embedding], records: PreferenceRecords, folds: int
) -> tuple[str, pd.DataFrame]:
    """The criterion fixed before PPO: held-out accuracy of identifying a record response's
    source from the candidate's features of prompt + response (chosen and rejected rows,
    folds grouped by prompt). Returns the best name and the table (ties: first listed).

    Records of a single source (a hub preference set such as rm-static carries none) leave
    nothing to identify: the first candidate is used, as declared in the params, and the
    table says so (accuracy NaN)."""
    if len(np.unique(records.source)) < 2:
        first = next(iter(candidates))
        table = pd.DataFrame(
            {"embedding": list(candidates), "source_id_accuracy": math.nan, "dims": math.nan,
             "seconds": 0.0}
        )  # fmt: skip
        return first, table
    prompts = [records.prompts[i] for i in records.prompt_index]
    responses = list(records.chosen) + list(records.rejected)
    groups = np.r_[records.prompt_index, records.prompt_index]
    sources = np.r_[records.source, records.source]
    rows = []
    for name, emb in candidates.items():
        t0 = time.perf_counter()
        X = emb.raw(prompts + prompts, responses)
        acc = source_id_accuracy(X, sources, groups, folds)
        rows.append({"embedding": name, "source_id_accuracy": acc, "dims": X.shape[1],
                     "seconds": time.perf_counter() - t0})  # fmt: skip
    table = pd.DataFrame(rows)
    best = str(table.loc[table["source_id_accuracy"].idxmax(), "embedding"])
    return best, table


# --------------------------------------------------------------------------- subset study


def subset_experiment(
    cfg: Config,
    records: PreferenceRecords,
    recipe: RewardRecipe,
    gen_embs: Mapping[int, NDArray[np.float32]],
    whole: FittedReward,
    pairs: OnPolicyPairs,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's third claim at the reference policy: per seed, each rule (and the oracle
    filter) selects ``select_k`` records given that seed's reference generations
    ``gen_embs[seed]`` (one per offline prompt, embedded); a fresh reward model is trained on
    them alone and scored on the on-policy ``pairs``. Returns one row per (rule, seed) with
    its accuracy and what it selected, and the per-pair correctness (columns
    ``<rule>/<seed>`` and ``whole``)."""
    correct = {"whole": pair_correct(whole.score, pairs)}
    rows = []
    with_oracle = bool(np.any(records.labeler == cfg.truth))
    for rule in [*cfg.rules, *(["oracle"] if with_oracle else [])]:
        settings = RefitSettings(rule, cfg.select_k, cfg.refit_every, cfg.select_threshold)
        for seed in cfg.seeds:
            s_c, s_r = similarities(
                gen_embs[seed], records.prompt_index, records.chosen_emb, records.rejected_emb
            )
            rng = np.random.default_rng([seed, 0])
            picked = select_records(settings, records, s_c, s_r, rng, cfg.truth)
            fitted = recipe.fit(records.subset(picked), seed)
            c = pair_correct(fitted.score, pairs)
            correct[f"{rule}/{seed}"] = c
            stats = selection_stats(records, picked, s_c, s_r)
            rows.append(
                {"rule": rule, "seed": seed, "accuracy": float(np.nanmean(c)),
                 "selected": picked.size, **stats}
            )  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(correct)


def subset_vs_whole(
    correct: pd.DataFrame,
    rules: Sequence[str],
    seeds: Sequence[int],
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per rule: accuracy of the subset's reward model minus the whole set's, averaged over
    seeds per pair, with a percentile bootstrap CI over the pairs (the pairs are shared by
    every seed, so they are the unit resampled; ground-truth ties dropped)."""
    rows = []
    for rule in rules:
        diff = np.mean(
            [correct[f"{rule}/{s}"].to_numpy() - correct["whole"].to_numpy() for s in seeds],
            axis=0,
        )
        diff = diff[np.isfinite(diff)]
        m, lo, hi = bootstrap_ci(diff, n_boot, seed, level)
        rows.append({"rule": rule, "minus_whole": m, "lo": lo, "hi": hi, "pairs": diff.size})
    return pd.DataFrame(rows).set_index("rule")


# --------------------------------------------------------------------------- PPO arms


@dataclass(frozen=True)
class Arm:
    """One PPO arm: the reward model it starts from and the refit rule (None: no refit)."""

    name: str
    start: str
    """``vanilla`` (the whole offline set), ``ood_mix`` or ``ood_oracle``."""
    rule: str | None = None


def arms(cfg: Config, ood_names: Sequence[str], with_oracle: bool = True) -> list[Arm]:
    """Vanilla RLHF; the oracle filter (the positive control: needs each record's labeler);
    FRFT per rule; the random control (FRFT's refits on a random subset); the OOD reward
    models."""
    out = [Arm("vanilla", "vanilla")]
    out += [Arm("oracle_filter", "vanilla", "oracle")] if with_oracle else []
    out += [Arm(f"frft_{r}", "vanilla", r) for r in cfg.rules if r != "random"]
    out += [Arm("random", "vanilla", "random")] if "random" in cfg.rules else []
    return out + [Arm(name, name) for name in ood_names]


def run_arm(
    arm: Arm,
    seed: int,
    cfg: Config,
    data: OfflineSet,
    start_rewards: Mapping[str, FittedReward],
    recipe: RewardRecipe,
    embedding: Embedding,
    new_policy: Callable[[], Any],
    ref_policy,
    tok,
    truth_of: TextScore,
    evaluation: Evaluation,
    other_rewards: dict[str, TextScore],
    workdir: str | Path,
) -> tuple[pd.DataFrame, dict[str, Any], FloatArray]:
    """One PPO run of ``arm``, then its answers on the evaluation prompts judged against the
    reference's. Returns (log, summary row, ground truth per evaluation prompt)."""
    refit = None
    if arm.rule is not None:
        refit = FilteredRefit(
            recipe,
            data.records,
            data.offline_prompt_ids,
            embedding,
            RefitSettings(arm.rule, cfg.select_k, cfg.refit_every, cfg.select_threshold),
            lambda policy, ids, s: sample(cfg, tok, policy, ids, s).continuations,
            seed,
            cfg.truth,
        )
    t_run = time.perf_counter()
    policy, log = run_frft(
        new_policy(),
        tok,
        Dataset.from_dict({"input_ids": data.ppo_prompt_ids}),
        start_rewards[arm.start],
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
    roll, scores = evaluate_policy(policy, ref_policy, tok, cfg.generation, evaluation)
    truth = np.asarray(evaluation.truth(roll)["truth"], dtype=np.float64)
    row = {"run": arm.name, "seed": seed, **scores, "seconds": seconds}
    return log.assign(run=arm.name, seed=seed), row, truth


# --------------------------------------------------------------------------- statistics


def seed_bootstrap(
    values: FloatArray, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, lo, hi) of a (seeds, prompts) array by a two-level percentile bootstrap:
    resample seeds, then prompts within each drawn seed. The PPO run of a seed is the unit
    that replicates (runs of one arm differ far more between seeds than prompts do), so a
    bootstrap over (seed, prompt) rows alone would be too narrow. With one seed it is the
    bootstrap over prompts."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.size == 0:
        raise ValueError(f"values must be a non-empty (seeds, prompts) array, got {v.shape}")
    n_seeds, n_prompts = v.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(n_seeds, size=(n_boot, n_seeds))
    prompts = rng.integers(n_prompts, size=(n_boot, n_seeds, n_prompts))
    means = v[seeds[:, :, None], prompts].mean(axis=(1, 2))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(v.mean()), float(lo), float(hi)


def _by_seed(final: pd.DataFrame, run: str) -> pd.DataFrame:
    return final[final["run"] == run].pivot(index="seed", columns="prompt", values="truth")


def arm_means(final: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Mean final ground truth per arm (``final``: columns run, seed, prompt, truth) with a
    95% CI by :func:`seed_bootstrap`."""
    rows = []
    for run in dict.fromkeys(final["run"]):
        m, lo, hi = seed_bootstrap(_by_seed(final, run).to_numpy(), n_boot, seed)
        rows.append({"run": run, "truth": m, "lo": lo, "hi": hi})
    return pd.DataFrame(rows).set_index("run")


def contrast(
    final: pd.DataFrame, new: str, base: str, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``new - base`` final ground truth, paired by (seed, prompt) (every arm is
    evaluated on the same prompts with the same sampling seed), CI by
    :func:`seed_bootstrap` (seeds resampled, then prompts)."""
    a, b = _by_seed(final, new), _by_seed(final, base)
    if not (a.index.equals(b.index) and a.columns.equals(b.columns)):
        raise ValueError(f"{new} and {base} must cover the same seeds and prompts")
    return seed_bootstrap((a - b).to_numpy(), n_boot, seed, level)


def per_seed(final: pd.DataFrame, new: str, base: str) -> list[float]:
    """``new - base`` mean final ground truth per seed (what a reader checks for signs)."""
    return (_by_seed(final, new) - _by_seed(final, base)).mean(axis=1).round(4).tolist()


def speed(curves: pd.DataFrame, target: float, censored: int) -> pd.DataFrame:
    """Per run and seed, the first checkpoint whose ground truth reaches ``target``
    (``censored`` when none does), and whether it did."""
    out = curves.groupby(["run", "seed"], sort=False).apply(
        lambda g: updates_to_target(g, target), include_groups=False
    )
    out = out.rename("updates_to_target").reset_index()
    out["reached"] = out["updates_to_target"].notna()
    out["updates_to_target"] = out["updates_to_target"].fillna(censored)
    return out


def claim_level(rules: Sequence[str]) -> float:
    """The confidence level of each rule's test: Bonferroni over the similarity rules."""
    return 1 - 0.05 / max(sum(r != "random" for r in rules), 1)


def claims(
    final: pd.DataFrame,
    speeds: pd.DataFrame,
    subset: pd.DataFrame,
    rules: Sequence[str],
    margin: float,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The decision rule written in the notebook before the results.

    * Power (positive control): the oracle filter beats vanilla (95% CI of the paired
      difference above 0). Without it claims 1 and 2 are not judged: "no power".
    * Claim 1, FRFT beats vanilla: a rule's final ground truth is above vanilla's *and*
      above the random control's, both with Bonferroni-adjusted CIs over the rules
      (level 1 - 0.05 / rules) above 0. Reproduced if any rule passes.
    * Claim 2, faster convergence (secondary, descriptive at checkpoint resolution): a rule
      that passes claim 1 reaches reference + margin in at least as many seeds as vanilla,
      with fewer updates on average (a seed that never reaches counts as censored).
    * Claim 3, a small filtered subset is competitive: a rule's subset reward model is at
      most ``margin`` below the whole set's on-policy accuracy (``subset``'s CI lower bound,
      Bonferroni level as for claim 1). Its own positive control: the oracle filter's
      subset must beat the whole set (CI above 0), else "no power".

    CIs resample seeds, then prompts (:func:`seed_bootstrap`).
    """
    frft = [r for r in rules if r != "random"]
    level = claim_level(rules)
    out: dict[str, Any] = {}
    power: bool | None = None  # None: no positive control (no labeler known: paper data)
    if "oracle_filter" in set(final["run"]):
        m, lo, hi = contrast(final, "oracle_filter", "vanilla", n_boot, seed)
        out["oracle_filter_minus_vanilla"], out["oracle_filter_minus_vanilla_lo"] = m, lo
        out["oracle_filter_minus_vanilla_hi"] = hi
        power = bool(lo > 0)
        out["power"] = int(power)
    if "random" in set(final["run"]):  # what refitting alone, without a filter, does
        m, lo, hi = contrast(final, "random", "vanilla", n_boot, seed)
        out["random_minus_vanilla"], out["random_minus_vanilla_lo"] = m, lo
        out["random_minus_vanilla_hi"] = hi
    passing = []
    for rule in frft:
        arm = f"frft_{rule}"
        ok = True
        for base in ("vanilla", "random"):
            d, dlo, dhi = contrast(final, arm, base, n_boot, seed, level)
            signs = per_seed(final, arm, base)
            out[f"{arm}_minus_{base}_seeds_positive"] = int(sum(x > 0 for x in signs))
            out[f"{arm}_minus_{base}"] = d
            out[f"{arm}_minus_{base}_lo"], out[f"{arm}_minus_{base}_hi"] = dlo, dhi
            ok &= bool(dlo > 0)
        out[f"{arm}_beats_vanilla_and_random"] = int(ok)
        if ok:
            passing.append(arm)
    mean_speed = speeds.groupby("run")["updates_to_target"].mean()
    reached = speeds.groupby("run")["reached"].sum()
    for arm in mean_speed.index:
        out[f"{arm}_updates_to_target"] = float(mean_speed[arm])
        out[f"{arm}_reached_target"] = int(reached[arm])
    faster = [a for a in passing if reached[a] >= reached["vanilla"]
              and mean_speed[a] < mean_speed["vanilla"]]  # fmt: skip
    competitive = [r for r in frft if r in subset.index and subset.loc[r, "lo"] > -margin]

    def verdict(holds: bool) -> str:
        if power is False:
            return "no power"
        word = "reproduced" if holds else "not reproduced"
        return word if power else f"{word} (no positive control)"

    out["claim_beats_vanilla"] = verdict(bool(passing))
    out["claim_faster"] = verdict(bool(faster))
    subset_power = None if "oracle" not in subset.index else bool(subset.loc["oracle", "lo"] > 0)
    if subset_power is False:
        out["claim_subset_competitive"] = "no power"
    else:
        word = "reproduced" if competitive else "not reproduced"
        no_control = "" if subset_power else " (no positive control)"
        out["claim_subset_competitive"] = word + no_control
    out["rules_beating_vanilla"] = ", ".join(passing) or "none"
    out["rules_competitive_subset"] = ", ".join(competitive) or "none"
    return out
