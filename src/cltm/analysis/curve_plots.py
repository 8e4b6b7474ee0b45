"""PNG figures of the learning curves and of the dynamic-interval scores (curves.py).

Built on `matplotlib.figure.Figure` directly, as plots.py does: no pyplot, so no global backend
or figure state is touched and nothing needs closing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

#: Beyond this many languages a legend would hide the curves.
LEGEND_MAX = 16


def _grid_ticks(ax: Axes, ns: pd.Series) -> None:
    # Ticks at the grid's own N, written plainly: grids are rarely powers of ten or of two.
    ticks = sorted({int(n) for n in ns})
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, [str(n) for n in ticks], fontsize=8)


def plot_curves(table: pd.DataFrame, chosen_n: int | None, path: Path, task: str) -> None:
    """Mean score vs N per language (log x) with a ±1 SE band across seeds; [N, 2N] shaded.

    `table` is curves.curve_table's output; `chosen_n` None draws no interval.
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    targets = sorted(table["target"].unique())
    for target in targets:
        curve = table[table["target"] == target].sort_values("n")
        n = curve["n"].to_numpy(dtype=float)
        mean = curve["mean"].to_numpy(dtype=float)
        # One seed has no SE: draw the line without a band rather than hide it.
        se = np.nan_to_num(curve["se"].to_numpy(dtype=float))
        (line,) = ax.plot(n, mean, marker="o", markersize=3, linewidth=1.2, label=str(target))
        ax.fill_between(n, mean - se, mean + se, color=line.get_color(), alpha=0.2, linewidth=0)
    if chosen_n is not None:
        ax.axvspan(chosen_n, 2 * chosen_n, color="0.5", alpha=0.15,
                   label=f"dynamic interval [{chosen_n}, {2 * chosen_n}]")
    _grid_ticks(ax, table["n"])
    ax.set_xlabel("N (training size)")
    ax.set_ylabel("score (mean over seeds, band ±1 SE)")
    ax.set_title(f"{task}: learning curves")
    if len(targets) <= LEGEND_MAX:
        ax.legend(fontsize=7, ncols=2)
    fig.savefig(path, dpi=120)


def plot_interval_scores(per_language_scores: pd.DataFrame, choice_table: pd.DataFrame,
                         path: Path) -> None:
    """Each language's interval score per candidate N (thin), the median and its smoothed curve
    (bold), the chosen N marked.

    `per_language_scores` is curves.interval_scores's output, `choice_table` choose_n's table.
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for _, curve in per_language_scores.groupby("target", sort=True):
        curve = curve.sort_values("n")
        ax.plot(curve["n"], curve["score"], color="0.6", linewidth=0.7, alpha=0.8)
    choice = choice_table.sort_values("n")
    ax.plot(choice["n"], choice["median"], color="black", linewidth=2.2, marker="o",
            markersize=4, label="median over languages")
    ax.plot(choice["n"], choice["smoothed"], color="tab:red", linewidth=2.2, linestyle="--",
            label="smoothed median")
    chosen = choice[choice["chosen"]]
    if not chosen.empty:
        n = int(chosen["n"].iloc[0])
        ax.axvline(n, color="tab:red", linewidth=1.0, linestyle=":")
        ax.plot([n], [chosen["smoothed"].iloc[0]], marker="*", markersize=14, color="tab:red",
                label=f"chosen N = {n}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    _grid_ticks(ax, choice["n"])
    ax.set_xlabel("candidate N")
    ax.set_ylabel("interval score (grey: one language each)")
    ax.set_title("dynamic interval: score of [N, 2N]")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
