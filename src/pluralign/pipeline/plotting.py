"""One seaborn theme for every figure, and atomic figure saves."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)  # headless under papermill/DVC; notebooks may override

import matplotlib.pyplot as plt
import seaborn as sns

from pluralign.pipeline.io import atomic_path

#: Colours fixed per role so a group keeps its colour across notebooks.
PALETTE = sns.color_palette("colorblind")


def set_theme() -> None:
    """The project's look: readable at README size, no chart junk."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=1.0)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight"})


def save_figure(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG atomically (DVC plots and the README link these files)."""
    with atomic_path(path) as tmp:
        # Fixed metadata: without it every save embeds the matplotlib version/date.
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return Path(path)


def history_frame(log_history: list[dict]):
    """Long-form (step, metric, value) rows from a ``transformers.Trainer`` log history.

    Keeps the per-step training loss and the periodic evaluation loss; drops the final
    summary row (``train_runtime`` ...), which is not a point on a curve.
    """
    import pandas as pd

    rows = [
        {"step": entry["step"], "metric": key, "value": float(entry[key])}
        for entry in log_history
        for key in ("loss", "eval_loss")
        if key in entry and "step" in entry
    ]
    return pd.DataFrame(rows, columns=["step", "metric", "value"])


def bar_with_ci(
    ax,
    table,
    x: str,
    hue: str,
    order: list[str],
    y: str = "win_rate",
    lo: str = "lo",
    hi: str = "hi",
) -> None:
    """Grouped bars of ``table[y]`` with their own CIs (``lo``, ``hi`` columns): for
    intervals computed elsewhere (a paired bootstrap), which seaborn cannot draw."""
    import numpy as np

    hues = list(dict.fromkeys(table[hue]))
    width = 0.8 / len(hues)
    for k, h in enumerate(hues):
        sub = table[table[hue] == h].set_index(x).loc[order]
        xs = np.arange(len(order)) - 0.4 + width * (k + 0.5)
        ax.bar(xs, sub[y], width, label=str(h), color=PALETTE[k % len(PALETTE)])
        err = [sub[y] - sub[lo], sub[hi] - sub[y]]
        ax.errorbar(xs, sub[y], yerr=err, fmt="none", color="k", lw=1)
    ax.set_xticks(np.arange(len(order)), order)
    ax.set_xlabel(x)
    ax.legend(title=hue)
