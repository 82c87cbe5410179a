"""Text sources turned into what the experiments use: review snippets and prompts.

* :func:`extract_snippets`: distinct 1-3-sentence review openings (notebooks 03, 05);
* prompts: :func:`make_prompts` (EOS + the first tokens of a review: the PPO query format of
  the GPT-2 policy), :func:`review_prompts` (the same, with each review's own continuation),
  :func:`chat_prompt_ids` (Tulu chat prompts, left-padded to one length),
  :func:`instruction_prompts` (instructions built offline from review openings),
  :func:`split_prompts` (disjoint preference / PPO / evaluation prompt sets).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from pluralign.data.scorers import n_words
from pluralign.pipeline.assets import clean_review

T = TypeVar("T")

MAX_SENTENCES = 3  # a snippet is the first 1..MAX_SENTENCES sentences of a review
#: Sentence boundary of snippets (notebooks 02, 03, 05): after . ! ? and before a capital
#: letter or a quote.
SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


# --------------------------------------------------------------------------- snippets


def extract_snippets(
    texts: Sequence[str], n: int, min_words: int, max_words: int, seed: int
) -> list[str]:
    """``n`` distinct review openings of 1-3 sentences, deterministic given ``seed``.

    Reviews are visited in the order of ``default_rng(seed).permutation``; review r gives
    the first ``k_r`` sentences of ``clean_review(texts[r])``, with ``k_r`` uniform on
    {1, 2, 3} (drawn for every review up front from the same generator), so that snippet
    lengths vary widely and ``concise`` has something to rank. A snippet is kept if it has
    ``min_words..max_words`` words, ends with ``. ! ?`` (not cut mid-sentence), and its
    lower-cased text was not taken before.

    Parameters
    ----------
    texts : sequence of str
        Reviews (raw or cleaned; ``<br />`` tags are removed here).
    n : int
        Number of snippets wanted, >= 1.
    min_words, max_words : int
        Inclusive word-count bounds, ``1 <= min_words <= max_words``.
    seed : int
        Seed of the visiting order and of the number of sentences per review.

    Returns
    -------
    list of str
        The snippets in the order they were picked.

    Raises
    ------
    ValueError
        On bad arguments, or when fewer than ``n`` reviews give a qualifying snippet.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_sentences = rng.integers(1, MAX_SENTENCES + 1, size=len(texts))
    picked: list[str] = []
    seen: set[str] = set()
    for r in order:
        sentences = SENTENCE_SPLIT.split(clean_review(texts[r]))
        snippet = " ".join(s.strip() for s in sentences[: n_sentences[r]]).strip()
        if not snippet or snippet[-1] not in ".!?" or snippet.lower() in seen:
            continue
        if min_words <= n_words(snippet) <= max_words:
            seen.add(snippet.lower())
            picked.append(snippet)
            if len(picked) == n:
                return picked
    raise ValueError(
        f"only {len(picked)} of {len(texts)} reviews give a distinct snippet of "
        f"{min_words}-{max_words} words ending in . ! ? (wanted {n})"
    )


# --------------------------------------------------------------------------- prompts


def review_prompts(
    tokenizer, texts: Sequence[str], prompt_tokens: int, max_new_tokens: int
) -> tuple[list[list[int]], list[list[int]]]:
    """PPO prompts (EOS + the first ``prompt_tokens`` tokens, as :func:`make_prompts`)
    and each review's next ``max_new_tokens`` tokens (its human continuation); reviews with
    fewer than ``prompt_tokens + 4`` tokens are skipped."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    keep = [d for d in ids if len(d) >= prompt_tokens + 4]
    prompts = [[tokenizer.eos_token_id, *d[:prompt_tokens]] for d in keep]
    rest = [d[prompt_tokens : prompt_tokens + max_new_tokens] for d in keep]
    return prompts, rest


def make_prompts(tokenizer, texts: Sequence[str], n_tokens: int) -> list[list[int]]:
    """EOS (as BOS) + the first ``n_tokens`` tokens of each text: the PPO query format."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [[tokenizer.eos_token_id, *doc[:n_tokens]] for doc in ids if len(doc) >= n_tokens]


#: Tulu 2's chat format (allenai/tulu-2-7b model card); the cpu proxy reads raw text.
TULU_TEMPLATE = "<|user|>\n{prompt}\n<|assistant|>\n"


def chat_prompt_ids(
    tokenizer, texts: Sequence[str], n_tokens: int, template: str = TULU_TEMPLATE
) -> list[list[int]]:
    """Templated prompts left-padded with PAD to ``n_tokens`` ids (PPO batches one length);
    prompts longer than that are dropped, not cut, so no instruction loses its start."""
    if tokenizer.padding_side != "left":
        raise ValueError("chat prompts need a left-padding tokenizer")
    out = []
    for text in texts:
        ids = tokenizer(template.format(prompt=text.strip()))["input_ids"]
        if len(ids) <= n_tokens:
            out.append([tokenizer.pad_token_id] * (n_tokens - len(ids)) + ids)
    return out


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

    Openings come from :func:`extract_snippets` (distinct, 1-3 whole sentences
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


def split_prompts(
    prompts_of: Callable[[list[str]], Sequence[T]],
    texts: Sequence[str],
    sizes: Mapping[str, int],
    seed: int,
) -> dict[str, list[T]]:
    """Disjoint prompt sets (e.g. preference / PPO / evaluation) from one shuffled corpus.

    The texts are visited in ``default_rng(seed).permutation`` order; prompts are built from
    the first ``2 * sum(sizes)`` of them by ``prompts_of`` (which may drop texts too short to
    make a prompt) and cut, in the order of ``sizes``, into consecutive parts.

    Raises
    ------
    ValueError
        If fewer prompts than ``sum(sizes)`` could be built.
    """
    n_total = sum(sizes.values())
    order = np.random.default_rng(seed).permutation(len(texts))
    prompts = prompts_of([texts[i] for i in order[: 2 * n_total]])
    if len(prompts) < n_total:
        raise ValueError(
            f"only {len(prompts)} of {min(2 * n_total, len(texts))} texts give a prompt; "
            f"the splits {dict(sizes)} need {n_total}"
        )
    out, start = {}, 0
    for name, n in sizes.items():
        out[name] = list(prompts[start : start + n])
        start += n
    return out
