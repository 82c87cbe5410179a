"""Inverse alignment: filtered reward fine-tuning (FRFT) during PPO (PAPERS.md section 3).

An offline preference set mixes generators and labelling policies; a reward model trained on
all of it averages their signals. FRFT refits the critic for the *current* actor: every
``every`` PPO updates the policy is frozen and sampled on the offline prompts, and the
records whose responses look like its generations (cosine similarity of sentence
embeddings) are selected by one of the paper's rules; the reward model is fine-tuned on
them (Bradley-Terry loss, 1 epoch) and PPO continues with the refit reward.

With ``g_i`` the policy's generation for record i's prompt and unit-norm embeddings E,
``s_c = <E(g_i), E(chosen_i)>`` and ``s_r = <E(g_i), E(rejected_i)>``. Rules (k = budget):

======  ===========================================================================
P1      records with s_c > tau and s_r > tau, the top k of them by s_c + s_r
P2      top ceil(k/2) by s_c  union  top floor(k/2) by s_r (so at most k records)
P3      top k by s_r
P4      top k by s_c
random  k records uniformly at random (the control)
======  ===========================================================================

Selection is one gather-and-dot over the cached record embeddings and an ``argpartition``
top-k: O(n d), no loop over records.

The loop reuses notebook 04's PPO (``ppo_runner.run_ppo``): the refit is its
``on_checkpoint`` hook, so it happens between two resumable chunks. The refit reward model
is saved next to the PPO checkpoints after each refit, and a resumed run reloads the one
that belongs to its last complete chunk. The value model continues across refits (the
paper re-initializes the critic from the refit reward model; TRL's PPO keeps one value
model per run, and we keep PPO itself unchanged between arms).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
RULES = ("P1", "P2", "P3", "P4", "random")
TextScore = Callable[[list[str]], FloatArray]


# --------------------------------------------------------------------------- offline records


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


def review_prompts(
    tokenizer, texts: Sequence[str], prompt_tokens: int, max_new_tokens: int
) -> tuple[list[list[int]], list[list[int]]]:
    """PPO prompts (EOS + the first ``prompt_tokens`` tokens, as ``pretrain.make_prompts``)
    and each review's next ``max_new_tokens`` tokens (its human continuation); reviews with
    fewer than ``prompt_tokens + 4`` tokens are skipped."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    keep = [d for d in ids if len(d) >= prompt_tokens + 4]
    prompts = [[tokenizer.eos_token_id, *d[:prompt_tokens]] for d in keep]
    rest = [d[prompt_tokens : prompt_tokens + max_new_tokens] for d in keep]
    return prompts, rest


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
    from pluralign.text_groups import FK_CLIP, flesch_kincaid_grade, n_words

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


def records_from_dataset(data, where: str) -> PreferenceRecords:
    """``PreferenceRecords`` from a ``datasets.Dataset`` with string columns ``prompt``,
    ``chosen``, ``rejected`` (Dahoas/rm-static's schema: responses without the prompt).
    A malformed record stops with its row and field named."""
    missing = {"prompt", "chosen", "rejected"} - set(data.column_names)
    if missing:
        raise ValueError(f"{where}: missing columns {sorted(missing)}")
    prompts: list[str] = []
    seen: dict[str, int] = {}
    index, chosen, rejected = [], [], []
    for row, rec in enumerate(data.select_columns(["prompt", "chosen", "rejected"])):
        for name in ("prompt", "chosen", "rejected"):
            value = rec[name]
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: row {row}: field {name!r} is empty or not text")
        if rec["chosen"] == rec["rejected"]:
            raise ValueError(f"{where}: row {row}: 'chosen' equals 'rejected'")
        index.append(seen.setdefault(rec["prompt"], len(seen)))
        if index[-1] == len(prompts):
            prompts.append(rec["prompt"])
        chosen.append(rec["chosen"])
        rejected.append(rec["rejected"])
    n = len(index)
    return PreferenceRecords(
        prompts=prompts,
        prompt_index=np.asarray(index, dtype=np.int64),
        chosen=chosen,
        rejected=rejected,
        source=np.full(n, where),
        labeler=np.full(n, "dataset"),
    )


def load_hub_records(
    name: str, revision: str | None, split: str = "train", n: int | None = None
) -> PreferenceRecords:
    """The paper profile's offline set (``Dahoas/rm-static``), checked record by record."""
    from datasets import load_dataset

    data = load_dataset(name, revision=revision, split=split)
    if n is not None:
        data = data.select(range(min(n, len(data))))
    return records_from_dataset(data, f"{name}@{revision or 'main'}:{split}")


# --------------------------------------------------------------------------- embeddings


def embed(encoder, texts: Sequence[str], batch_size: int = 128) -> NDArray[np.float32]:
    """Unit-norm sentence embeddings (n, d) as float32."""
    emb = encoder.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def embed_records(records: PreferenceRecords, encoder, batch_size: int = 128) -> None:
    """Cache the embeddings of every chosen and rejected response (the fixed dataset)."""
    records.chosen_emb = embed(encoder, records.chosen, batch_size)
    records.rejected_emb = embed(encoder, records.rejected, batch_size)


# --------------------------------------------------------------------------- selection


def similarities(
    generation_emb: NDArray[np.floating],
    prompt_index: IntArray,
    chosen_emb: NDArray[np.floating],
    rejected_emb: NDArray[np.floating],
) -> tuple[FloatArray, FloatArray]:
    """(s_c, s_r): cosine of each record's responses to the generation for its prompt
    (embeddings unit-norm; ``generation_emb`` has one row per prompt)."""
    g = generation_emb[prompt_index]
    s_c = np.einsum("nd,nd->n", g, chosen_emb, dtype=np.float64)
    s_r = np.einsum("nd,nd->n", g, rejected_emb, dtype=np.float64)
    return s_c, s_r


def top_k(scores: FloatArray, k: int, eligible: NDArray[np.bool_] | None = None) -> IntArray:
    """Indices of the k largest ``scores`` (among ``eligible``), sorted by index; ties are
    broken by the lower index, so the result is deterministic."""
    pool = np.arange(scores.size) if eligible is None else np.flatnonzero(eligible)
    if k >= pool.size:
        return np.sort(pool)
    s = scores[pool]
    part = np.argpartition(-s, k - 1)[:k]
    cut = s[part].min()  # the k-th largest value: resolve ties at the cut by index
    above = pool[s > cut]
    at_cut = pool[s == cut][: k - above.size]
    return np.sort(np.concatenate([above, at_cut]))


def select(
    rule: str,
    s_c: FloatArray,
    s_r: FloatArray,
    k: int,
    threshold: float = 0.8,
    rng: np.random.Generator | None = None,
) -> IntArray:
    """Indices (sorted) of the records a rule selects with budget ``k``."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
    if k < 1:
        raise ValueError(f"selection budget k must be >= 1, got {k}")
    if s_c.shape != s_r.shape:
        raise ValueError("s_c and s_r must have one entry per record")
    if rule == "P1":
        return top_k(s_c + s_r, k, (s_c > threshold) & (s_r > threshold))
    if rule == "P2":  # ceil(k/2) + floor(k/2) = k: never over the budget
        by_c = top_k(s_c, math.ceil(k / 2))
        return np.union1d(by_c, top_k(s_r, k // 2)) if k > 1 else by_c
    if rule == "P3":
        return top_k(s_r, k)
    if rule == "P4":
        return top_k(s_c, k)
    if rng is None:
        raise ValueError("the random rule needs an rng")
    return np.sort(rng.choice(s_c.size, size=min(k, s_c.size), replace=False))


# --------------------------------------------------------------------------- the refit


@dataclass(frozen=True)
class RefitSettings:
    """How FRFT refits: rule, budget, P1's threshold, and the reward fine-tuning."""

    rule: str
    k: int
    every: int
    """Refit after every ``every`` PPO updates (a multiple of the checkpoint interval)."""
    threshold: float = 0.8
    learning_rate: float = 1e-4
    epochs: float = 1.0
    batch_size: int = 16
    max_length: int = 48

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown selection rule {self.rule!r}; choose one of {RULES}")
        if self.k < 1 or self.every < 1:
            raise ValueError("k and every must be >= 1")


@dataclass
class OnPolicyPairs:
    """Two samples of the current policy per evaluation prompt and their ground truth."""

    texts_a: list[str]
    texts_b: list[str]
    truth_a: FloatArray
    truth_b: FloatArray


def pair_accuracy(score: TextScore, pairs: OnPolicyPairs) -> float:
    """Share of pairs (ground-truth ties skipped) a reward orders as the ground truth does:
    ``maxmin_gpt2.pair_accuracy`` with one ground truth."""
    from pluralign.maxmin_gpt2 import pair_accuracy as per_group_accuracy

    truth_a = pd.DataFrame({"truth": np.asarray(pairs.truth_a, dtype=np.float64)})
    truth_b = pd.DataFrame({"truth": np.asarray(pairs.truth_b, dtype=np.float64)})
    return per_group_accuracy(score(pairs.texts_a), score(pairs.texts_b), truth_a, truth_b)["truth"]


class FilteredRefit:
    """One FRFT refit: sample the frozen policy on the offline prompts, embed, select,
    fine-tune ``reward_model`` in place. ``generate(policy, prompt_ids, seed)`` returns the
    responses (text without prompt), one per prompt."""

    def __init__(
        self,
        reward_model,
        tokenizer,
        records: PreferenceRecords,
        prompt_ids: Sequence[Sequence[int]],
        encoder,
        settings: RefitSettings,
        generate: Callable[[Any, Sequence[Sequence[int]], int], list[str]],
        seed: int,
    ) -> None:
        if records.chosen_emb is None or records.rejected_emb is None:
            raise ValueError("embed the records first (embed_records)")
        if len(prompt_ids) != len(records.prompts):
            raise ValueError("prompt_ids must hold the token ids of every record prompt")
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.records = records
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.encoder = encoder
        self.settings = settings
        self.generate = generate
        self.seed = seed

    def __call__(self, policy, updates: int) -> dict[str, float]:
        from pluralign.reward_trainer import tokenize_pairs, train_reward_model

        s = self.settings
        t = {"start": time.perf_counter()}
        responses = self.generate(policy, self.prompt_ids, self.seed * 7919 + updates)
        t["sampling"] = time.perf_counter()
        gen = embed(self.encoder, responses)
        t["embedding"] = time.perf_counter()
        s_c, s_r = similarities(
            gen, self.records.prompt_index, self.records.chosen_emb, self.records.rejected_emb
        )
        rng = np.random.default_rng([self.seed, updates])
        rows = select(s.rule, s_c, s_r, s.k, s.threshold, rng)
        t["selection"] = time.perf_counter()
        out: dict[str, float] = {"selected": float(rows.size)}
        if rows.size:
            chosen, rejected = self.records.full_texts(rows)
            pairs = tokenize_pairs(self.tokenizer, chosen, rejected, s.max_length)
            train_reward_model(
                self.reward_model,
                self.tokenizer,
                pairs,
                seed=self.seed + updates,
                learning_rate=s.learning_rate,
                num_train_epochs=s.epochs,
                per_device_train_batch_size=s.batch_size,
            )
        t["fine_tuning"] = time.perf_counter()
        out |= selection_stats(self.records, rows, s_c, s_r)
        steps = ["start", "sampling", "embedding", "selection", "fine_tuning"]
        for a, b in itertools.pairwise(steps):
            out[f"time_{b}_s"] = t[b] - t[a]
        return out


def selection_stats(
    records: PreferenceRecords, rows: IntArray, s_c: FloatArray, s_r: FloatArray
) -> dict[str, float]:
    """What a selection holds: mean similarities, source and labeler shares, label quality."""
    out: dict[str, float] = {
        "sim_chosen_all": float(s_c.mean()),
        "sim_rejected_all": float(s_r.mean()),
    }
    if rows.size == 0:
        return out
    out["sim_chosen"] = float(s_c[rows].mean())
    out["sim_rejected"] = float(s_r[rows].mean())
    for src in np.unique(records.source):
        out[f"share_source_{src}"] = float((records.source[rows] == src).mean())
    for lab in np.unique(records.labeler):
        out[f"share_labeler_{lab}"] = float((records.labeler[rows] == lab).mean())
    if records.agrees_with_truth is not None:
        out["label_truth_agreement"] = float(records.agrees_with_truth[rows].mean())
    return out


# --------------------------------------------------------------------------- one run


def _snapshot(workdir: Path, updates: int) -> Path:
    return workdir / f"reward-after-{updates:05d}.pt"


def _updates_done(workdir: Path, settings) -> int:
    """PPO updates covered by the run's complete checkpoints (see ``ppo_runner``)."""
    from pluralign.ppo_runner import _chunks, _last_complete

    sizes = _chunks(settings)
    return sum(sizes[: _last_complete(workdir, len(sizes)) + 1])


def run_frft(
    policy,
    tokenizer,
    prompts,
    reward_model,
    reward_max_length: int,
    reference_texts: Sequence[str],
    settings,
    workdir: str | Path,
    seed: int,
    refit: FilteredRefit | None = None,
    evaluate: Callable[[Any, int], OnPolicyPairs] | None = None,
    other_rewards: dict[str, TextScore] | None = None,
    progress: bool = False,
) -> tuple[Any, pd.DataFrame]:
    """PPO on ``reward_model`` (modified in place by ``refit``); ``refit=None`` is vanilla
    RLHF. At every checkpoint ``evaluate(policy, updates)`` draws on-policy pairs: the log
    gets their ground truth (``gt``) and the accuracy of the reward in use
    (``rm_accuracy``), of the refit one (``rm_accuracy_after``), and of ``other_rewards``
    (``accuracy_<name>``). The reward is z-scored on ``reference_texts`` again after each
    refit. Rerunning with the same ``workdir`` resumes."""
    from pluralign.maxmin_gpt2 import reward_fn
    from pluralign.maxmin_rewards import Normalizer, TextRewardAdapter
    from pluralign.ppo_runner import run_ppo
    from pluralign.runlog import atomic_path

    workdir = Path(workdir)
    if refit is not None:
        if refit.reward_model is not reward_model:
            raise ValueError("refit must fine-tune the reward model PPO uses")
        if refit.settings.every % settings.checkpoint_every:
            raise ValueError("refit every must be a multiple of checkpoint_every")
        done = _updates_done(workdir, settings)
        snaps = [u for u in range(refit.settings.every, done + 1, refit.settings.every)]
        snaps = [u for u in snaps if _snapshot(workdir, u).is_file()]
        if snaps:  # resume: the reward model the next chunk trained with
            state = torch.load(_snapshot(workdir, snaps[-1]), map_location="cpu", weights_only=True)
            reward_model.load_state_dict(state)
    score = reward_fn(reward_model, tokenizer, reward_max_length)
    context = len(prompts[0]["input_ids"])

    def normalizer() -> dict[str, Normalizer]:
        return {"reward": Normalizer.fit(score(list(reference_texts)))}

    adapter = TextRewardAdapter(tokenizer, context, {"reward": score}, normalizer(), "single")

    def hook(policy, updates: int) -> dict[str, float]:
        out: dict[str, float] = {}
        pairs = evaluate(policy, updates) if evaluate is not None else None
        if pairs is not None:
            out["gt"] = float(np.mean(pairs.truth_a))
            out["rm_accuracy"] = pair_accuracy(score, pairs)
            for name, fn in (other_rewards or {}).items():
                out[f"accuracy_{name}"] = pair_accuracy(fn, pairs)
        if (
            refit is not None
            and updates % refit.settings.every == 0
            and updates < settings.n_updates
        ):
            out |= refit(policy, updates)
            adapter.normalizers = normalizer()
            with atomic_path(_snapshot(workdir, updates)) as tmp:
                torch.save(reward_model.state_dict(), tmp)
            if pairs is not None:
                out["rm_accuracy_after"] = pair_accuracy(score, pairs)
        return out

    policy, log = run_ppo(
        policy, tokenizer, prompts, adapter, settings, workdir, seed, progress, hook
    )
    return policy, log
