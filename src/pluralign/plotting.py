"""One seaborn theme for every figure, and atomic figure saves."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)  # headless under papermill/DVC; notebooks may override

import matplotlib.pyplot as plt
import seaborn as sns

from pluralign.runlog import atomic_path

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
