"""PNG figures of the donor rankings, the transfer profiles, the co-clustering and the map.

Built on `matplotlib.figure.Figure` directly, as plots.py does: no pyplot, so no global backend
or figure state is touched and nothing needs closing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from cltm.analysis.plots import ANNOTATE_MAX, UNKNOWN, _blocks, language_order, note_image

#: Donors drawn per target in the ranking chart: the ones a user would consider adding.
SHOW_DONORS = 10
#: Panels a row in the ranking chart.
COLUMNS = 4


def family_styles(families: Mapping[str, str],
                  languages: Sequence[str]) -> dict[str, tuple[object, str]]:
    """A (colour, marker) per family present among `languages`, unknown families grey: 44
    languages hold about 23 genera, more than tab20's colours, so the marker changes every 20."""
    present = sorted({families.get(x) or UNKNOWN for x in languages} - {UNKNOWN})
    cmap = matplotlib.colormaps["tab20"]
    styles = {fam: (cmap(k % 20), "os^D"[k // 20 % 4]) for k, fam in enumerate(present)}
    return {**styles, UNKNOWN: ("0.6", "o")}


def _legend(ax: Axes, styles: Mapping[str, tuple[object, str]]) -> None:
    handles = [Line2D([], [], marker=m, linestyle="", color=c, label=f)
               for f, (c, m) in styles.items() if f != UNKNOWN or len(styles) == 1]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="family", title_fontsize=8)


def plot_donor_rankings(donors: pd.DataFrame, path: Path, targets: Sequence[str], *,
                        families: Mapping[str, str], names: Mapping[str, str], top_k: int,
                        title: str) -> list[str]:
    """Per target (one panel each), its best SHOW_DONORS donors from the top down: the cell
    with its interval, the rank interval and top-k share in the label, same-family donors in
    orange. Returns the targets drawn (those of `targets` with a ranking); with none, the file
    is a note."""
    drawn = [t for t in targets if (donors["target"] == t).any()]
    if not drawn:
        note_image(path, "No donor ranking to draw: none of the languages ("
                   + ", ".join(targets) + ") is a defined target of this CLTM.")
        return drawn
    cols = min(COLUMNS, len(drawn))
    rows = -(-len(drawn) // cols)
    fig = Figure(figsize=(4.3 * cols, 0.28 * SHOW_DONORS * rows + 1.2 * rows),
                 layout="constrained")
    for k, target in enumerate(drawn):
        ax = fig.add_subplot(rows, cols, k + 1)
        table = donors[donors["target"] == target].sort_values("rank").head(SHOW_DONORS)
        y = np.arange(len(table))[::-1]
        colour = np.where(table["same_family"].astype(bool), "tab:orange", "tab:blue")
        low = (table["cltm"] - table["low"]).clip(lower=0).fillna(0)
        high = (table["high"] - table["cltm"]).clip(lower=0).fillna(0)
        for yy, x, lo, hi, c in zip(y, table["cltm"], low, high, colour):
            ax.errorbar([x], [yy], xerr=[[lo], [hi]], fmt="o", color=c, markersize=4,
                        capsize=2)
        labels = []
        for r in table.itertuples(index=False):
            extra = ("" if pd.isna(r.rank_low) else
                     f" [{r.rank_low}-{r.rank_high}] {100 * r.top_k_share:.0f}%")
            labels.append(f"{r.rank}. {names.get(r.donor, r.donor)}{extra}")
        ax.set_yticks(y, labels, fontsize=7)
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.axvline(1.0, color="tab:red", linewidth=0.8, linestyle="--")
        ax.set_title(f"target {names.get(target, target)}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"{title}: best donors, CLTM with interval; [rank interval] share of "
                 f"replicates in the top {top_k}; orange: same family", fontsize=9)
    fig.savefig(path, dpi=110)
    return drawn


def plot_profiles(profiles: pd.DataFrame, path: Path, *, families: Mapping[str, str],
                  names: Mapping[str, str], title: str) -> None:
    """Each language's mean transfer given (x, its column) against received (y, its row),
    with their intervals, coloured by family."""
    p = profiles.dropna(subset=["given_mean", "received_mean"], how="all")
    if p.empty:
        note_image(path, "No defined CLTM cells: no transfer profile to draw.")
        return
    styles = family_styles(families, list(p["language"]))
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for r in p.itertuples(index=False):
        c, marker = styles[families.get(r.language) or UNKNOWN]
        x, y = r.given_mean, r.received_mean
        if not np.isfinite(y):  # an undefined row receives nothing measurable: drawn at 0
            y = 0.0
        xerr = [[max(x - r.given_low, 0)], [max(r.given_high - x, 0)]]
        yerr = [[max(y - r.received_low, 0)], [max(r.received_high - y, 0)]]
        ax.errorbar([x], [y], xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt=marker,
                    color=c, markersize=4, capsize=2, alpha=0.85)
        ax.annotate(names.get(r.language, r.language), (x, y), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("mean transfer given (its column: CLTM[target, language])")
    ax.set_ylabel("mean transfer received (its row: CLTM[language, donor])")
    ax.set_title(f"{title}: giving against receiving, with bootstrap intervals", fontsize=10)
    _legend(ax, styles)
    fig.savefig(path, dpi=120)


def plot_coclustering(share: pd.DataFrame, path: Path, *, families: Mapping[str, str],
                      names: Mapping[str, str], title: str) -> None:
    """The share of bootstrap replicates in which two languages fall in one community,
    ordered and blocked by family."""
    data = share.to_numpy(dtype=float)
    if not np.isfinite(data).any():
        note_image(path, "No bootstrap replicates (analysis.bootstrap is 0): no co-clustering.")
        return
    order = language_order(share.index, families, names)
    data = share.loc[order, order].to_numpy(dtype=float)
    n = len(order)
    side = max(4.5, 0.34 * n + 3.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of replicates in one community")
    labels = [names.get(x, x) for x in order]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    blocks = _blocks(order, families)
    for _, start, _ in blocks[1:]:
        ax.axhline(start - 0.5, color="white", linewidth=0.8)
        ax.axvline(start - 0.5, color="white", linewidth=0.8)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(s + e - 1) / 2 for _, s, e in blocks], [f for f, _, _ in blocks],
                   rotation=90, fontsize=7)
    top.tick_params(length=0)
    if n <= ANNOTATE_MAX:
        for r in range(n):
            for k in range(n):
                ax.text(k, r, f"{data[r, k]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if data[r, k] < 0.5 else "black")
    ax.set_title(f"{title}: co-clustering over the seed bootstrap (lines: families)",
                 fontsize=9)
    fig.savefig(path, dpi=120)


def plot_transfer_map(coords: pd.DataFrame, path: Path, *, families: Mapping[str, str],
                      names: Mapping[str, str], title: str) -> None:
    """The MDS map of the languages' giving and receiving profiles, coloured by family."""
    c = coords.dropna(subset=["map_x", "map_y"])
    if c.empty:
        note_image(path, "Fewer than 3 defined languages: no map.")
        return
    styles = family_styles(families, list(c["language"]))
    fig = Figure(figsize=(7.0, 5.5), layout="constrained")
    ax = fig.add_subplot()
    for r in c.itertuples(index=False):
        colour, marker = styles[families.get(r.language) or UNKNOWN]
        ax.plot([r.map_x], [r.map_y], marker, color=colour)
        ax.annotate(names.get(r.language, r.language), (r.map_x, r.map_y), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title}: MDS of each language's row and column of the CLTM", fontsize=10)
    _legend(ax, styles)
    fig.savefig(path, dpi=120)
