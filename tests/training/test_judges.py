"""Pairwise judges: reward-model outcomes, a chat endpoint against a local stub, win rates."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest

from pluralign.core.stats import win_rate, win_rate_ci
from pluralign.training.judges import (
    ChatEndpointJudge,
    JudgeError,
    RewardModelJudge,
    group_win_rates,
    parse_verdict,
)

KEY = "sk-test-123"

# --------------------------------------------------------------------------- reward model


def test_reward_model_judge_against_hand_scores_with_ties():
    table = {"p1good": 2.0, "p1bad": 1.0, "p2x": -1.0, "p2y": 3.0, "p3same": 0.5, "p4u": 7.0}
    table["p4v"] = 7.0  # different answers, equal scores: a tie
    calls: list[list[str]] = []

    def score(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.array([table[t] for t in texts])

    judge = RewardModelJudge(score)
    out = judge.compare(
        ["p1", "p2", "p3", "p4"], ["good", "x", "same", "u"], ["bad", "y", "same", "v"]
    )
    np.testing.assert_array_equal(out, [1.0, 0.0, 0.5, 0.5])
    assert calls == [["p1good", "p2x", "p3same", "p4u", "p1bad", "p2y", "p3same", "p4v"]]
    joined = RewardModelJudge(lambda t: np.array([len(t[0]), len(t[1])]), join="{} | {}".format)
    assert joined.compare(["q"], ["long answer"], ["short"]).tolist() == [1.0]


def test_reward_model_judge_rejects_bad_inputs_and_scores():
    with pytest.raises(ValueError, match="2 prompts, 1 answers A, 2 answers B"):
        RewardModelJudge(np.ones).compare(["a", "b"], ["x"], ["y", "z"])
    with pytest.raises(JudgeError, match=r"shape \(1,\) \(want \(2,\)\)"):
        RewardModelJudge(lambda t: np.ones(1)).compare(["a"], ["x"], ["y"])
    with pytest.raises(JudgeError, match="NaN"):
        RewardModelJudge(lambda t: np.array([np.nan, 1.0])).compare(["a"], ["x"], ["y"])


# --------------------------------------------------------------------------- stub endpoint

Responder = Callable[[dict], tuple[int, bytes]]


class _Stub(HTTPServer):
    responder: Responder
    requests: list[dict]


class _Handler(BaseHTTPRequestHandler):
    server: _Stub

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(raw)
        self.server.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), "body": body}
        )
        status, payload = self.server.responder(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


def _reply(content: str | None) -> tuple[int, bytes]:
    return 200, json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": content}}]}
    ).encode()


def _answers(body: dict) -> tuple[str, str]:
    """The two answers as shown to the judge, parsed from the user message independently."""
    text = body["messages"][1]["content"]
    m = re.search(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\nWhich", text, flags=re.DOTALL)
    assert m, text
    return m.group(1), m.group(2)


def prefers_marker(body: dict) -> tuple[int, bytes]:
    a, b = _answers(body)
    return _reply("A" if "MARKER" in a else "B" if "MARKER" in b else "Tie.")


@pytest.fixture
def stub(monkeypatch) -> Iterator[_Stub]:
    server = _Stub(("127.0.0.1", 0), _Handler)
    server.responder, server.requests = prefers_marker, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("no_proxy", "NO_PROXY"):  # a proxy set in CI must not catch loopback
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    monkeypatch.setenv("PLURALIGN_JUDGE_URL", f"http://127.0.0.1:{server.server_port}/v1/")
    monkeypatch.setenv("PLURALIGN_JUDGE_KEY", KEY)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


PROMPTS = ["Review film one.", "Review film two.", "Review film three."]
WITH_MARKER = ["A MARKER answer.", "Plain answer.", "Plain answer again."]
WITHOUT = ["Plain answer.", "A MARKER answer.", "Another plain answer."]


def test_endpoint_judge_follows_the_stub_and_sends_a_proper_request(stub):
    judge = ChatEndpointJudge("judge-model", "Prefer the friendlier answer.")
    out = judge.compare(PROMPTS, WITH_MARKER, WITHOUT)
    np.testing.assert_array_equal(out, [1.0, 0.0, 0.5])  # both orders agree: no averaging
    assert len(stub.requests) == 6 and judge.unparsed == 0
    first = stub.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["auth"] == f"Bearer {KEY}"
    body = first["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert body["max_tokens"] == 8
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert "Prefer the friendlier answer." in user and "Review film one." in user
    assert _answers(body) == (WITH_MARKER[0], WITHOUT[0])
    assert _answers(stub.requests[1]["body"]) == (WITHOUT[0], WITH_MARKER[0])  # swapped
    assert KEY not in repr(judge)


def test_swap_cancels_a_judge_that_always_says_a(stub, monkeypatch):
    stub.responder = lambda body: _reply("A")
    swapped = ChatEndpointJudge("m", "c").compare(PROMPTS, WITH_MARKER, WITHOUT)
    np.testing.assert_array_equal(swapped, [0.5, 0.5, 0.5])
    assert len(stub.requests) == 6
    once = ChatEndpointJudge("m", "c", swap=False).compare(PROMPTS, WITH_MARKER, WITHOUT)
    np.testing.assert_array_equal(once, [1.0, 1.0, 1.0])
    assert len(stub.requests) == 9
    # A full URL is used as given, and max_tokens can be left out.
    monkeypatch.setenv(
        "PLURALIGN_JUDGE_URL", f"http://127.0.0.1:{stub.server_port}/x/chat/completions"
    )
    ChatEndpointJudge("m", "c", swap=False, max_tokens=None).compare(["p"], ["a"], ["b"])
    assert stub.requests[-1]["path"] == "/x/chat/completions"
    assert "max_tokens" not in stub.requests[-1]["body"]


def test_half_position_bias_gives_quarter_outcomes(stub):
    # Prefers the marker when it is shown as A, otherwise says tie: 1 and 0.5 -> 0.75.
    def biased(body: dict) -> tuple[int, bytes]:
        a, _ = _answers(body)
        return _reply("A" if "MARKER" in a else "tie")

    stub.responder = biased
    out = ChatEndpointJudge("m", "c").compare(PROMPTS, WITH_MARKER, WITHOUT)
    np.testing.assert_array_equal(out, [0.75, 0.25, 0.5])


def test_unparseable_reply_is_a_recorded_tie(stub):
    stub.responder = lambda body: _reply("Answer A is clearly better.")
    judge = ChatEndpointJudge("m", "c")
    np.testing.assert_array_equal(judge.compare(PROMPTS[:2], WITH_MARKER[:2], WITHOUT[:2]), 0.5)
    assert judge.unparsed == 4 and judge.unparsed_replies[0] == "Answer A is clearly better."
    stub.responder = lambda body: _reply(None)  # e.g. a refusal with null content
    assert judge.compare(["p"], ["a"], ["b"]).tolist() == [0.5] and judge.unparsed == 6


@pytest.mark.parametrize(
    ("reply", "want"),
    [
        ("A", 1.0),
        ("b.", 0.0),
        ("**Tie**", 0.5),
        ("'A'", 1.0),
        ("TIE!", 0.5),
        ("  B\nbecause it is shorter", 0.0),
        ("Answer: A", None),
        ("AB", None),
        ("tied", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict_is_strict(reply, want):
    assert parse_verdict(reply) == want


def test_missing_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("PLURALIGN_JUDGE_URL", raising=False)
    monkeypatch.setenv("PLURALIGN_JUDGE_KEY", KEY)
    with pytest.raises(JudgeError, match="PLURALIGN_JUDGE_URL is not set"):
        ChatEndpointJudge("m", "c")
    monkeypatch.setenv("MY_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("MY_KEY", "   ")
    with pytest.raises(JudgeError, match="MY_KEY is not set"):
        ChatEndpointJudge("m", "c", url_env="MY_URL", key_env="MY_KEY")


def test_http_errors_surface_clearly_and_retries_are_bounded(stub):
    stub.responder = lambda body: (401, b'{"error": "invalid api key"}')
    judge = ChatEndpointJudge("m", "c", backoff_s=0.0)
    with pytest.raises(
        JudgeError, match=r"/v1/chat/completions: HTTP 401 .*invalid api key"
    ) as err:
        judge.compare(["p"], ["a"], ["b"])
    assert KEY not in str(err.value) and len(stub.requests) == 1  # 401 is not retried

    failures = iter([(503, b"busy"), (503, b"busy")])
    stub.responder = lambda body: next(failures, None) or _reply("A")
    assert ChatEndpointJudge("m", "c", swap=False, backoff_s=0.0).compare(["p"], ["a"], ["b"]) == [
        1.0
    ]
    assert len(stub.requests) == 4  # 1 + two 503s + the success

    stub.responder = lambda body: (503, b"still busy")
    with pytest.raises(JudgeError, match=r"HTTP 503 .*still busy"):
        ChatEndpointJudge("m", "c", retries=1, backoff_s=0.0).compare(["p"], ["a"], ["b"])
    assert len(stub.requests) == 6

    stub.responder = lambda body: (200, b"<html>not json</html>")
    with pytest.raises(JudgeError, match="not JSON"):
        judge.compare(["p"], ["a"], ["b"])
    stub.responder = lambda body: (200, b'{"choices": []}')
    with pytest.raises(JudgeError, match=r"no choices\[0\]\.message\.content"):
        judge.compare(["p"], ["a"], ["b"])


def test_unreachable_endpoint(monkeypatch):
    import socket

    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("PLURALIGN_JUDGE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.setenv("PLURALIGN_JUDGE_KEY", KEY)
    with pytest.raises(JudgeError, match="cannot reach the endpoint"):
        ChatEndpointJudge("m", "c", timeout=5).compare(["p"], ["a"], ["b"])


# --------------------------------------------------------------------------- win rates


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 1.0, 0.0, 0.5]) == 0.625
    assert win_rate(np.array([0.25, 0.75])) == 0.5
    for bad in ([], [1.2], [[1.0]], [np.nan]):
        with pytest.raises(ValueError, match="outcomes"):
            win_rate(bad)


def test_win_rate_ci_brackets_the_mean_and_collapses_when_constant():
    rng = np.random.default_rng(0)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=200, p=[0.2, 0.2, 0.6])
    m, lo, hi = win_rate_ci(outcomes, n_boot=500, seed=1)
    assert m == pytest.approx(outcomes.mean()) and lo < m < hi
    se = outcomes.std() / np.sqrt(outcomes.size)  # normal approximation as an outside check
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert win_rate_ci([0.5] * 10, n_boot=50, seed=0) == (0.5, 0.5, 0.5)


def test_group_win_rates_by_each_groups_reward_model():
    judges = {
        "concise": RewardModelJudge(lambda t: -np.array([len(x) for x in t], dtype=float)),
        "long": RewardModelJudge(lambda t: np.array([len(x) for x in t], dtype=float)),
    }
    prompts = ["p"] * 4
    policy = ["short", "short", "a much longer answer", "equal"]
    reference = ["a much longer answer", "a longer answer", "tiny", "same!"]
    out = group_win_rates(judges, prompts, policy, reference, n_boot=50, seed=0)
    assert out["concise_win_rate"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    assert out["long_win_rate"] == pytest.approx((0 + 0 + 1 + 0.5) / 4)
    assert set(out) == {f"{g}_win_rate{s}" for g in judges for s in ("", "_lo", "_hi")}
    assert out["long_win_rate_lo"] <= out["long_win_rate"] <= out["long_win_rate_hi"]
