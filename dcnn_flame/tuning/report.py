"""The results of a search: per-trial table, mean +- std per grid point / variant, Markdown, plots.

Files written next to the experiment (``<storage.uri>/tune/<name>/``):
``trials.parquet`` (one row per trial: its config values, final metrics, score, status),
``summary.parquet`` (one row per point: ``<metric>_mean``, ``<metric>_std``, ``n``),
``summary.md`` (the Markdown table that is also printed) and ``plot.png`` (a heat map of a
two-key grid, else a bar chart with error bars).
"""
from __future__ import annotations

import io
import math
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from dcnn_flame.config import SearchConfig

__all__ = ["summarise", "markdown_table", "heatmap_png", "bars_png", "plot_png"]

POINT = "point"


def summarise(trials: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one repeat) of each metric per ``point``.

    Args:
        trials: one row per trial with a ``point`` column and the metric columns.
        metrics: metric columns to aggregate (missing ones are skipped).
    Returns:
        one row per point (in first-seen order) with ``n`` and ``<m>_mean``, ``<m>_std``.
    """
    metrics = [m for m in metrics if m in trials.columns]
    order = list(dict.fromkeys(trials[POINT]))
    rows = []
    for point in order:
        part = trials[trials[POINT] == point]
        row = {POINT: point, "n": int(len(part))}
        for m in metrics:
            values = pd.to_numeric(part[m], errors="coerce").dropna().to_numpy(dtype=float)
            row[f"{m}_mean"] = float(values.mean()) if len(values) else math.nan
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4g} +- {std:.2g}" if not math.isnan(std) else f"{mean:.4g}"


def markdown_table(summary: pd.DataFrame, metrics: Sequence[str], best: Optional[str] = None) -> str:
    """A Markdown table: point, n, then ``mean +- std`` per metric; ``best`` marks a row."""
    metrics = [m for m in metrics if f"{m}_mean" in summary.columns]
    head = ["point", "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in summary.iterrows():
        name = f"**{r[POINT]}**" if best is not None and r[POINT] == best else str(r[POINT])
        cells = [name, str(int(r["n"]))] + [_fmt(r[f"{m}_mean"], r[f"{m}_std"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def heatmap_png(trials: pd.DataFrame, x_key: str, y_key: str, metric: str, x_label: str, y_label: str,
                title: str) -> bytes:
    """PNG heat map of ``metric`` (mean over repeats) on the ``x_key`` x ``y_key`` grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = trials.pivot_table(index=y_key, columns=x_key, values=metric, aggfunc="mean")
    fig, ax = plt.subplots(figsize=(1.2 * table.shape[1] + 2.5, 1.0 * table.shape[0] + 1.8))
    im = ax.imshow(table.to_numpy(dtype=float), cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(table.shape[1]), [f"{v:g}" if isinstance(v, float) else str(v) for v in table.columns])
    ax.set_yticks(range(table.shape[0]), [f"{v:g}" if isinstance(v, float) else str(v) for v in table.index])
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    for i in range(table.shape[0]):
        for j in range(table.shape[1]):
            v = table.iat[i, j]
            if not (isinstance(v, float) and math.isnan(v)):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=metric)
    ax.set_title(title)
    return _png(fig)


def bars_png(summary: pd.DataFrame, metric: str, title: str) -> bytes:
    """PNG bar chart of ``metric`` per point with +-std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = summary[f"{metric}_mean"].to_numpy(dtype=float)
    stds = np.nan_to_num(summary[f"{metric}_std"].to_numpy(dtype=float))
    fig, ax = plt.subplots(figsize=(0.9 * len(summary) + 2.5, 3.6))
    ax.bar(range(len(summary)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(summary)), list(summary[POINT]), rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title)
    return _png(fig)


def plot_png(search: SearchConfig, trials: pd.DataFrame, summary: pd.DataFrame, metric: str, title: str) -> bytes:
    """The search's plot: a heat map for a two-key grid without variants, else bars."""
    keys = list(search.grid)
    if len(keys) == 2 and not search.variants and metric in trials.columns:
        return heatmap_png(trials, keys[0], keys[1], metric, search.labels.get(keys[0], keys[0]),
                           search.labels.get(keys[1], keys[1]), title)
    return bars_png(summary, metric, title)
