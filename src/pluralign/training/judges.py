"""Pairwise judges for per-group win rates: a reward model, or an OpenAI-compatible endpoint.

A judge's ``compare(prompts, answers_a, answers_b)`` gives one outcome per prompt: 1.0 if
answer A is better, 0.0 if B is, 0.5 for a tie (AlpacaEval's convention), so the mean of the
outcomes is A's win rate. The default judge of a group is the group's reward model; a chat
endpoint (any OpenAI-compatible ``/chat/completions``) is optional, and its URL and key come
from the environment only, never from params, so no key lands in a committed file or log.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np

from pluralign._typing import FloatArray
from pluralign.core.stats import win_rate_ci


class JudgeError(RuntimeError):
    """A judge that is not configured, or whose endpoint failed; the message says which."""


class PairwiseJudge(Protocol):
    def compare(
        self, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> FloatArray: ...


def _check_lengths(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> None:
    if not len(prompts) == len(a) == len(b):
        raise ValueError(f"{len(prompts)} prompts, {len(a)} answers A, {len(b)} answers B")


def _concat(prompt: str, answer: str) -> str:
    return prompt + answer


class RewardModelJudge:
    """Compares by a reward model's scores of ``join(prompt, answer)`` (default: the two
    strings concatenated, how this repo's reward models score prompt + continuation).

    Exactly equal scores are a tie; identical answers always tie.
    """

    def __init__(
        self,
        score: Callable[[list[str]], FloatArray],
        join: Callable[[str, str], str] = _concat,
    ) -> None:
        self.score = score
        self.join = join

    def compare(
        self, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> FloatArray:
        _check_lengths(prompts, answers_a, answers_b)
        texts = [self.join(p, x) for p, x in zip(prompts, answers_a, strict=True)]
        texts += [self.join(p, x) for p, x in zip(prompts, answers_b, strict=True)]
        scores = np.asarray(self.score(texts), dtype=np.float64)  # one call: one batch
        n = len(prompts)
        if scores.shape != (2 * n,) or not np.isfinite(scores).all():
            raise JudgeError(f"reward model gave shape {scores.shape} (want ({2 * n},)) or NaN")
        return 0.5 + 0.5 * np.sign(scores[:n] - scores[n:])


# --------------------------------------------------------------------------- chat endpoint

SYSTEM_PROMPT = (
    "You are a careful, impartial judge. You compare two answers to the same instruction "
    "by one criterion only, and you reply with a single word."
)
USER_TEMPLATE = (
    "Criterion: {criterion}\n\n"
    "[Instruction]\n{prompt}\n\n"
    "[Answer A]\n{a}\n\n"
    "[Answer B]\n{b}\n\n"
    "Which answer is better by the criterion? Reply with exactly one word: A, B, or tie."
)
_OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5}
_STRIP = "\"'`*.,:;!()[]"
_RETRY_STATUS = {429, 500, 502, 503, 504}


def parse_verdict(reply: str | None) -> float | None:
    """1.0 / 0.0 / 0.5 for a reply whose first word is A / B / tie (any case, surrounding
    quotes, ``*`` or punctuation ignored); None if it is anything else. Strict on purpose:
    guessing from a longer reply ("Answer B, because ...") would invent preferences."""
    words = (reply or "").split()
    return _OUTCOME.get(words[0].strip(_STRIP).lower()) if words else None


class ChatEndpointJudge:
    """Asks an OpenAI-compatible chat model which answer is better by one criterion.

    The base URL (e.g. ``https://host/v1``; ``/chat/completions`` is appended unless it is
    already there) and the key are read from the environment variables ``url_env`` and
    ``key_env`` when the judge is built. Requests are sequential, at temperature 0.

    With ``swap=True`` (default) each pair is also asked in the order (B, A) and the two
    outcomes, both seen from A, are averaged, which cancels a judge that favours a position
    (AlpacaEval-style); outcomes are then in {0, 0.25, 0.5, 0.75, 1}. A reply that
    :func:`parse_verdict` cannot read counts as a tie and is recorded in ``unparsed`` and
    ``unparsed_replies``, so a caller can report how often that happened.
    """

    def __init__(
        self,
        model: str,
        dimension_instruction: str,
        url_env: str = "PLURALIGN_JUDGE_URL",
        key_env: str = "PLURALIGN_JUDGE_KEY",
        timeout: float = 60,
        swap: bool = True,
        max_tokens: int | None = 8,
        retries: int = 2,
        backoff_s: float = 2.0,
    ) -> None:
        values = {}
        for var in (url_env, key_env):
            values[var] = os.environ.get(var, "").strip()
            if not values[var]:
                raise JudgeError(f"environment variable {var} is not set (needed by the judge)")
        base = values[url_env].rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self._key = values[key_env]
        self.model, self.instruction = model, dimension_instruction
        self.timeout, self.swap, self.max_tokens = timeout, swap, max_tokens
        self.retries, self.backoff_s = retries, backoff_s
        self.unparsed = 0
        self.unparsed_replies: list[str] = []

    def __repr__(self) -> str:  # never show the key
        return f"ChatEndpointJudge(model={self.model!r}, url={self.url!r}, swap={self.swap})"

    def _post(self, body: dict) -> dict:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
            method="POST",
        )
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as err:
                if err.code in _RETRY_STATUS and attempt < self.retries:
                    time.sleep(self.backoff_s * 2**attempt)
                    continue
                detail = err.read().decode("utf-8", "replace")[:300]
                raise JudgeError(f"{self.url}: HTTP {err.code} {err.reason}: {detail}") from err
            except urllib.error.URLError as err:
                raise JudgeError(f"{self.url}: cannot reach the endpoint: {err.reason}") from err
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise JudgeError(f"{self.url}: response is not JSON: {err}") from err
        raise AssertionError("unreachable")  # the loop returns or raises

    def ask(self, prompt: str, first: str, second: str) -> float:
        """Outcome for ``first`` (shown as A) against ``second`` (shown as B)."""
        user = USER_TEMPLATE.format(criterion=self.instruction, prompt=prompt, a=first, b=second)
        body: dict = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user},
            ],
            "temperature": 0,
        }
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        reply = self._post(body)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeError(
                f"{self.url}: no choices[0].message.content in {reply!r:.300}"
            ) from err
        verdict = parse_verdict(content if isinstance(content, str) else None)
        if verdict is None:
            self.unparsed += 1
            self.unparsed_replies.append(str(content))
            return 0.5
        return verdict

    def compare(
        self, prompts: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str]
    ) -> FloatArray:
        _check_lengths(prompts, answers_a, answers_b)
        out = np.empty(len(prompts), dtype=np.float64)
        for i, (p, a, b) in enumerate(zip(prompts, answers_a, answers_b, strict=True)):
            forward = self.ask(p, a, b)
            out[i] = (forward + 1.0 - self.ask(p, b, a)) / 2 if self.swap else forward
        return out


# --------------------------------------------------------------------------- win rates


def group_win_rates(
    judges: Mapping[str, PairwiseJudge],
    prompts: Sequence[str],
    answers: Sequence[str],
    reference: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """Win rate of ``answers`` over ``reference`` by each group's judge, with bootstrap CIs,
    keyed like :func:`pluralign.core.stats.evaluate`: ``{g}_win_rate``, ``{g}_win_rate_lo``,
    ``{g}_win_rate_hi``."""
    out: dict[str, float] = {}
    for g, judge in judges.items():
        m, lo, hi = win_rate_ci(judge.compare(prompts, answers, reference), n_boot, seed)
        out[f"{g}_win_rate"], out[f"{g}_win_rate_lo"], out[f"{g}_win_rate_hi"] = m, lo, hi
    return out
