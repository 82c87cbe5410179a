"""Neural EM and the weighted TRL reward trainer, on tiny from-scratch transformers."""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from pluralign.core import mixture
from pluralign.core.mixture import (
    EMNotConvergedWarning,
    EMTrace,
    fit_em,
    soft_e_step,
    user_log_likelihoods,
)
from pluralign.pipeline.assets import load_gpt2_tokenizer, packaged_minilm
from pluralign.training import neural_crossfit, neural_mixture
from pluralign.training.neural_crossfit import fit_neural_crossfit_em
from pluralign.training.neural_mixture import NeuralEMResult, fit_neural_em
from pluralign.training.reward_models import (
    WeightedRewardTrainer,
    reward_config,
    score_texts,
    tokenize_pairs,
    train_reward_model,
)

COLORS = ("red", "blue", "green", "white")
THINGS = ("car", "house", "apple", "door", "boat")
TEXTS = [f"the {c} {t}" for c in COLORS for t in THINGS]
FAST = {"learning_rate": 3e-3, "num_train_epochs": 3, "per_device_train_batch_size": 16}


@pytest.fixture(scope="module")
def bert_tok():
    return AutoTokenizer.from_pretrained(packaged_minilm())


def tiny_bert(tok) -> BertForSequenceClassification:
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=1,
    )
    return BertForSequenceClassification(cfg)


def planted(n_users: int = 12, per_user: int = 30, seed: int = 0):
    """Users u % 3 == 0 like "blue" texts, the others "red"; deterministic preferences."""
    rewards = {
        0: np.array([float("blue" in t) for t in TEXTS]),
        1: np.array([float("red" in t) for t in TEXTS]),
    }
    rng = np.random.default_rng(seed)
    chosen, rejected, users = [], [], []
    truth = [int(u % 3 != 0) for u in range(n_users)]
    for u in range(n_users):
        r = rewards[truth[u]]
        while sum(np.asarray(users) == u) < per_user:
            a, b = rng.choice(len(TEXTS), 2, replace=False)
            if r[a] == r[b]:
                continue
            w, lo = (a, b) if r[a] > r[b] else (b, a)
            chosen.append(TEXTS[w])
            rejected.append(TEXTS[lo])
            users.append(u)
    return chosen, rejected, np.asarray(users), np.asarray(truth)


# ------------------------------------------------------------------ weighted reward trainer


def test_weighted_loss_is_the_weighted_mean_of_bt_losses(bert_tok, tmp_path):
    torch.manual_seed(0)
    model = tiny_bert(bert_tok)
    pairs = tokenize_pairs(bert_tok, TEXTS[:4], TEXTS[4:8], 16, weights=[0.0, 1.0, 2.0, 0.5])
    trainer = WeightedRewardTrainer(
        model=model,
        args=reward_config(str(tmp_path)),
        train_dataset=pairs,
        processing_class=bert_tok,
    )
    batch = trainer.data_collator([pairs[i] for i in range(4)])
    loss = trainer.compute_loss(model, dict(batch)).item()
    model.eval()
    r_w = score_texts(model, bert_tok, TEXTS[:4], 16)
    r_l = score_texts(model, bert_tok, TEXTS[4:8], 16)
    expected = -np.mean(np.array([0.0, 1.0, 2.0, 0.5]) * np.log(1 / (1 + np.exp(r_l - r_w))))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_unit_weights_give_trls_own_loss(bert_tok, tmp_path):
    torch.manual_seed(0)
    model = tiny_bert(bert_tok).eval()
    plain = tokenize_pairs(bert_tok, TEXTS[:4], TEXTS[4:8], 16)
    ones = tokenize_pairs(bert_tok, TEXTS[:4], TEXTS[4:8], 16, weights=np.ones(4))
    trainer = WeightedRewardTrainer(
        model=model,
        args=reward_config(str(tmp_path)),
        train_dataset=plain,
        processing_class=bert_tok,
    )
    trl_loss = trainer.compute_loss(model, dict(trainer.data_collator(list(plain))))
    our_loss = trainer.compute_loss(model, dict(trainer.data_collator(list(ones))))
    assert our_loss.item() == pytest.approx(trl_loss.item(), rel=1e-6)


def test_zero_weight_pairs_are_ignored_in_training(bert_tok):
    """Half the pairs say A > B, half B > A; weight zero on the second half decides."""
    a, b = "the red car", "the blue boat"
    chosen, rejected = [a] * 16 + [b] * 16, [b] * 16 + [a] * 16
    for w, sign in (([1.0] * 16 + [0.0] * 16, 1), ([0.0] * 16 + [1.0] * 16, -1)):
        torch.manual_seed(0)
        model = tiny_bert(bert_tok)
        pairs = tokenize_pairs(bert_tok, chosen, rejected, 16, weights=w)
        train_reward_model(model, bert_tok, pairs, **{**FAST, "num_train_epochs": 15})
        r = score_texts(model, bert_tok, [a, b], 16)
        assert sign * (r[0] - r[1]) > 1.0


def test_score_texts_matches_unpadded_forward_and_handles_duplicates(bert_tok):
    torch.manual_seed(0)
    model = tiny_bert(bert_tok).eval()
    texts = ["a", "the red car is here today", "a", "blue"]
    got = score_texts(model, bert_tok, texts, 16, batch_size=2)
    with torch.no_grad():
        ref = [model(**bert_tok(t, return_tensors="pt")).logits.item() for t in texts]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_tokenize_pairs_rejects_bad_input(bert_tok):
    with pytest.raises(ValueError, match="rejected has 1"):
        tokenize_pairs(bert_tok, ["a", "b"], ["c"], 8)
    with pytest.raises(ValueError, match="weights"):
        tokenize_pairs(bert_tok, ["a"], ["c"], 8, weights=[-1.0])
    with pytest.raises(ValueError, match="no preference pairs"):
        tokenize_pairs(bert_tok, [], [], 8)


def fit_planted(make, tok, **kw):
    """Neural EM on the planted data (defaults: 5 iterations, FAST training)."""
    chosen, rejected, users, truth = planted()
    args = {"n_iter": 5, "max_length": 16, "train_args": FAST, **kw}
    return fit_neural_em(chosen, rejected, users, 2, make, tok, **args), truth


# ------------------------------------------------------------------ neural EM


@pytest.mark.parametrize("hard", [True, False])
def test_neural_em_recovers_planted_groups(bert_tok, hard):
    res, truth = fit_planted(lambda k: tiny_bert(bert_tok), bert_tok, hard=hard)
    assert adjusted_rand_score(truth, res.assignment) == 1.0
    # Round robin (u % 2) is far from the truth (u % 3 == 0): EM had to move users.
    assert adjusted_rand_score(truth, np.arange(12) % 2) < 0.2
    assert res.log_likelihood[-1] > res.log_likelihood[0]
    # Each recovered group's model ranks its planted color first.
    r = res.rewards(TEXTS)
    for k in range(2):
        members = truth[res.assignment == k]
        color = "blue" if members[0] == 0 else "red"
        assert color in TEXTS[int(np.argmax(r[:, k]))]


def test_neural_em_assigns_held_out_users_and_scores_like_the_linear_e_step(bert_tok):
    res, truth = fit_planted(lambda k: tiny_bert(bert_tok), bert_tok)
    new_c, new_r, new_u, new_truth = planted(n_users=6, per_user=10, seed=1)
    ids, groups = res.assign(new_c, new_r, new_u + 100)
    np.testing.assert_array_equal(ids, np.arange(6) + 100)
    mapping = {int(truth[res.assignment == k][0]): k for k in range(2)}
    np.testing.assert_array_equal(groups, [mapping[t] for t in new_truth])
    # The mixture log-likelihood equals the linear code applied to the models' margins.
    r = res.rewards(new_c + new_r)
    margins = r[: len(new_c)] - r[len(new_c) :]
    _, uidx = np.unique(new_u, return_inverse=True)
    S = user_log_likelihoods(margins, uidx, np.ones(len(new_c)), 6) + np.log(res.weights)
    expected = float(np.sum(np.log(np.sum(np.exp(S), axis=1))))
    assert res.log_likelihood_of(new_c, new_r, new_u) == pytest.approx(expected, rel=1e-9)


def test_neural_em_with_one_hot_text_features_agrees_with_linear_em(bert_tok):
    """Same data, the linear EM on one-hot text indicators finds the same partition."""
    chosen, rejected, users, truth = planted()
    index = {t: i for i, t in enumerate(TEXTS)}
    eye = np.eye(len(TEXTS))
    lin = fit_em(eye[[index[t] for t in chosen]], eye[[index[t] for t in rejected]], users, 2)
    assert adjusted_rand_score(truth, lin.assignment) == 1.0


def test_neural_em_runs_on_a_gpt2_stand_in():
    """The GPT-2 architecture (paper profile backbone): last non-pad token, left tokenizer."""
    tok = load_gpt2_tokenizer(max_merges=200)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=32,
        n_layer=1,
        n_head=2,
        n_positions=32,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    res, truth = fit_planted(lambda k: GPT2ForSequenceClassification(cfg), tok, n_iter=4)
    assert res.n_iter >= 1
    assert adjusted_rand_score(truth, res.assignment) == 1.0


def test_neural_em_validates_input(bert_tok):
    chosen, rejected, users, _ = planted(n_users=3, per_user=4)

    def make(k):
        return tiny_bert(bert_tok)

    with pytest.raises(ValueError, match="rejected has"):
        fit_neural_em(chosen, rejected[:-1], users, 2, make, bert_tok)
    with pytest.raises(ValueError, match="users has"):
        fit_neural_em(chosen, rejected, users[:-1], 2, make, bert_tok)
    with pytest.raises(ValueError, match=r"n_groups must be an integer in \[1, 3\]"):
        fit_neural_em(chosen, rejected, users, 4, make, bert_tok)
    with pytest.raises(ValueError, match=r"chosen\[1\]"):
        fit_neural_em([chosen[0], " ", *chosen[2:]], rejected, users, 2, make, bert_tok)
    with pytest.raises(ValueError, match="init must hold 3"):
        fit_neural_em(chosen, rejected, users, 2, make, bert_tok, init=[0, 1])

    def bad(k):
        return BertForSequenceClassification(
            BertConfig(
                vocab_size=100,
                hidden_size=8,
                num_hidden_layers=1,
                num_attention_heads=1,
                intermediate_size=8,
                num_labels=2,
            )
        )

    with pytest.raises(ValueError, match="num_labels=1"):
        fit_neural_em(chosen, rejected, users, 2, bad, bert_tok)


@pytest.mark.filterwarnings("ignore::pluralign.core.mixture.EMNotConvergedWarning")
def test_fit_neural_em_runs_the_linear_em_loop_and_keeps_its_bookkeeping(bert_tok, monkeypatch):
    """fit_neural_em is core.mixture.run_em with a neural M-step: its result is the loop's
    trace; soft EM's ``weights`` are the pi of the last E-step (so the training objective is
    the mixture log-likelihood of the training users), and ``initial`` is the start."""
    assert neural_mixture.run_em is mixture.run_em  # one loop, not a copy
    traces = []

    def spy(*args, **kwargs):
        traces.append(mixture.run_em(*args, **kwargs))
        return traces[-1]

    monkeypatch.setattr(neural_mixture, "run_em", spy)
    chosen, rejected, users, _ = planted(n_users=6, per_user=8, seed=2)
    init = np.array([1, 0, 0, 1, 1, 0])
    fast = {**FAST, "num_train_epochs": 1}
    res = fit_neural_em(
        chosen,
        rejected,
        users,
        2,
        lambda k: tiny_bert(bert_tok),
        bert_tok,
        hard=False,
        n_iter=3,
        tol=0.0,
        init=init,
        max_length=16,
        train_args=fast,
    )
    assert isinstance(res, NeuralEMResult) and len(traces) == 1
    (trace,) = traces
    assert res.log_likelihood is trace.log_likelihood and res.n_iter == 3
    assert res.assignments is trace.assignments and res.converged == trace.converged
    assert res.weights is trace.weights and res.responsibilities is trace.responsibilities
    assert len(res.train_logs) == 3 and all(len(logs) == 2 for logs in res.train_logs)
    np.testing.assert_array_equal(res.initial, init)
    # weights = the pi of the last E-step: rescoring the training users gives the objective
    # and the responsibilities back (not with gamma.mean(axis=0), which is one step later).
    margins = res.margins(chosen, rejected)
    _, uidx = np.unique(users, return_inverse=True)
    S = user_log_likelihoods(margins, uidx, np.ones(len(chosen)), 6)
    gamma, ll_h = soft_e_step(S, res.weights)
    assert res.log_likelihood[-1] == pytest.approx(ll_h.sum(), rel=1e-9)
    assert res.log_likelihood_of(chosen, rejected, users) == pytest.approx(ll_h.sum(), rel=1e-9)
    np.testing.assert_allclose(res.responsibilities, gamma, rtol=1e-9, atol=1e-12)
    # the round robin start is recorded when no init is given
    hard = fit_neural_em(
        chosen,
        rejected,
        users,
        2,
        lambda k: tiny_bert(bert_tok),
        bert_tok,
        n_iter=1,
        max_length=16,
        train_args=fast,
    )
    np.testing.assert_array_equal(hard.initial, np.arange(6) % 2)
    np.testing.assert_allclose(hard.weights, np.bincount(hard.assignment, minlength=2) / 6)


@pytest.mark.parametrize("converged", [False, True])
def test_fit_neural_em_warns_when_it_stops_at_the_cap(bert_tok, monkeypatch, converged):
    """The loop is run_em's (tested in core); here: its trace's ``converged`` reaches the
    result, and an unconverged one warns at the caller's line with the share that moved."""
    start, last = np.array([0, 1, 0, 1, 0, 1]), np.array([0, 1, 1, 1, 0, 0])

    def trace(*args, **kwargs):
        assert kwargs["warn"] is False  # fit_neural_em warns itself, once
        assignments = [start if converged else last]
        return EMTrace(assignments[-1], np.eye(2)[assignments[-1]], np.full(2, 0.5), [-1.0],
                       assignments, converged)  # fmt: skip

    monkeypatch.setattr(neural_mixture, "run_em", trace)
    chosen, rejected, users, _ = planted(n_users=6, per_user=4)

    def make(k):
        return tiny_bert(bert_tok)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fit_neural_em(chosen, rejected, users, 2, make, bert_tok, n_iter=1)
    assert res.converged is converged
    ours = [w for w in caught if issubclass(w.category, EMNotConvergedWarning)]
    assert len(ours) == (0 if converged else 1)
    if not converged:
        assert ours[0].filename == __file__
        assert "fit_neural_em (hard EM)" in str(ours[0].message)
        assert "after 1 iterations; at the last one 33% of users changed group" in str(
            ours[0].message
        )


# ------------------------------------------------------------------ cross-fitted neural EM


def test_cross_fitted_neural_em_recovers_planted_groups(bert_tok):
    chosen, rejected, users, truth = planted()
    calls = []

    def make(k):
        calls.append(k)
        return tiny_bert(bert_tok)

    res = fit_neural_crossfit_em(
        chosen, rejected, users, 2, make, bert_tok, n_iter=5, seed=0, max_length=16,
        train_args=FAST,
    )  # fmt: skip
    assert adjusted_rand_score(truth, res.assignment) == 1.0
    assert res.moved[0] > 0 and res.moved_from_start > 0
    # one model per (fold, group) slot, warm-started across iterations, + K final models
    assert len(calls) == 2 * 2 + 2
    r = np.stack([score_texts(m, bert_tok, TEXTS, 16) for m in res.models], 1)
    for k in range(2):
        color = "blue" if truth[res.assignment == k][0] == 0 else "red"
        assert color in TEXTS[int(np.argmax(r[:, k]))]


def test_cross_fitted_neural_em_validates_input(bert_tok):
    chosen, rejected, users, _ = planted()
    with pytest.raises(ValueError, match="chosen has"):
        fit_neural_crossfit_em(chosen, rejected[:-1], users, 2, None, bert_tok)
    with pytest.raises(ValueError, match="num_labels=1"):
        fit_neural_crossfit_em(
            chosen, rejected, users, 2,
            lambda k: BertForSequenceClassification(BertConfig(
                vocab_size=bert_tok.vocab_size, hidden_size=8, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=8, num_labels=2,
            )),
            bert_tok, n_iter=1,
        )  # fmt: skip


def test_cross_fitted_neural_em_passes_the_remedy_on_and_frees_earlier_starts(
    bert_tok, monkeypatch
):
    """``calibrate`` and ``n_starts`` reach the core loop; each start gets fresh fold models
    (K x n_folds per start, + K final ones), and an earlier start's are freed when the next
    begins. Training is stubbed out: this is about slots, not learning."""
    monkeypatch.setattr(neural_crossfit, "train_reward_model", lambda *a, **k: [])
    chosen, rejected, users, _ = planted(n_users=6, per_user=6)
    made: list[weakref.ref] = []
    alive_at_start_1: list[int] = []

    def make(k):
        if len(made) == 4:  # the first fold model of start 1: start 0's 4 are released
            gc.collect()
            alive_at_start_1.append(sum(r() is not None for r in made))
        model = tiny_bert(bert_tok)
        made.append(weakref.ref(model))
        return model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EMNotConvergedWarning)
        res = fit_neural_crossfit_em(
            chosen, rejected, users, 2, make, bert_tok, n_iter=2, max_length=16,
            n_starts=2, calibrate=False,
        )  # fmt: skip
    assert len(made) == 2 * 2 * 2 + 2 and alive_at_start_1 == [0]
    assert len(res.start_heldout_log_likelihood) == 2 and res.start in (0, 1)
    assert not res.calibrate and all(np.all(t == 1.0) for t in res.temperatures)
    assert len(res.models) == 2
