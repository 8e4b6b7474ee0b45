"""PNG figures of a CLTM: the heatmap as the paper draws it, self-gains, off-diagonal spread.

Figures are built on `matplotlib.figure.Figure` directly (rendered by Agg on save), never through
pyplot, so no global backend or figure state is touched by a library call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

#: The paper's colour scale: symmetric around 0 on [-1.5, 1.5] (values beyond saturate).
VLIM = 1.5
#: Cell values are printed up to this many languages; beyond it they would not be legible.
ANNOTATE_MAX = 20
#: Families unknown to the metadata are grouped last under this label.
UNKNOWN = "(unknown family)"


def language_order(locales: Iterable[str], families: Mapping[str, str],
                   names: Mapping[str, str]) -> list[str]:
    """Locales sorted by family, then by display name (unknown families last)."""
    def key(loc: str) -> tuple:
        fam = families.get(loc)
        return (fam is None, fam or "", names.get(loc, loc).casefold(), loc)

    return sorted(locales, key=key)


def _blocks(order: list[str], families: Mapping[str, str]) -> list[tuple[str, int, int]]:
    """(family, first index, end index) of each run of one family in `order`."""
    out: list[tuple[str, int, int]] = []
    for k, loc in enumerate(order):
        fam = families.get(loc) or UNKNOWN
        if out and out[-1][0] == fam:
            out[-1] = (fam, out[-1][1], k + 1)
        else:
            out.append((fam, k, k + 1))
    return out


def note_image(path: Path, text: str) -> None:
    """A small PNG that says why a figure has no content (DVC still expects the file)."""
    fig = Figure(figsize=(6, 2), layout="constrained")
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
    fig.savefig(path, dpi=100)


def plot_heatmap(
    matrix: pd.DataFrame,
    path: Path,
    *,
    families: Mapping[str, str],
    names: Mapping[str, str],
    self_gain: Mapping[str, float] | None = None,
    title: str = "CLTM",
    marks: pd.DataFrame | None = None,
    marks_note: str | None = None,
) -> None:
    """The CLTM (rows = targets, columns = donors) grouped by family, undefined rows hatched.

    `marks` (target x donor, +1 / -1 / 0 or NaN) puts a small "+" / "−" in the cells that differ
    from 1 upwards / downwards (stats.marks_from_tests); `marks_note` explains it under the axis.
    Without marks the figure is the plain heatmap.
    """
    order = language_order(matrix.index, families, names)
    data = matrix.loc[order, order].to_numpy(dtype=float)
    n = len(order)
    undefined = [k for k in range(n) if np.isnan(data[k]).all()]
    side = max(4.5, 0.34 * n + 3.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-VLIM, vmax=VLIM)
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, norm=norm, interpolation="nearest")
    # The marks' legend goes under the colour scale's label: below the axes it collided with the
    # rotated donor names on large heatmaps.
    note = f"\n{marks_note}" if marks is not None and marks_note else ""
    fig.colorbar(image, ax=ax, shrink=0.8, label=f"CLTM[target, donor]{note}", extend="both")

    labels = [names.get(loc, loc) for loc in order]
    row_labels = [f"{lab} (undefined)" if k in undefined else lab for k, lab in enumerate(labels)]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), row_labels, fontsize=8)
    ax.set_xlabel("donor")
    ax.set_ylabel("target")
    ax.set_title(title)

    for k in undefined:
        ax.add_patch(Rectangle((-0.5, k - 0.5), n, 1, fill=False, hatch="///",
                               edgecolor="0.45", linewidth=0))
        gain = None if self_gain is None else self_gain.get(order[k])
        note = "undefined row" if gain is None else f"undefined: self-gain {gain:.3g} ≤ 0"
        ax.text((n - 1) / 2, k, note, ha="center", va="center", fontsize=7,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})

    blocks = _blocks(order, families)
    for _, start, _ in blocks[1:]:
        ax.axhline(start - 0.5, color="black", linewidth=0.8)
        ax.axvline(start - 0.5, color="black", linewidth=0.8)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(s + e - 1) / 2 for _, s, e in blocks], [f for f, _, _ in blocks],
                   rotation=90, fontsize=7)
    top.tick_params(length=0)

    if n <= ANNOTATE_MAX:
        for r in range(n):
            for k in range(n):
                v = data[r, k]
                if np.isfinite(v):
                    ax.text(k, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.9 * VLIM else "black")
    if marks is not None:
        _draw_marks(ax, data, marks.reindex(index=order, columns=order).to_numpy(dtype=float),
                    annotated=n <= ANNOTATE_MAX)
    fig.savefig(path, dpi=120)


def _draw_marks(ax: Axes, data: np.ndarray, marks: np.ndarray, *,
                annotated: bool) -> None:
    """A sign in each marked cell: in its top-right corner when the value is printed (so the
    value stays readable), centred otherwise."""
    dx, dy, align = (0.45, -0.45, {"ha": "right", "va": "top"}) if annotated else (
        0.0, 0.0, {"ha": "center", "va": "center"})
    # Only drawn cells carry a mark: an undefined (NaN) cell has no value to qualify.
    for r, k in zip(*np.nonzero((np.nan_to_num(marks) != 0) & np.isfinite(data))):
        v = data[r, k]
        colour = "white" if abs(v) > 0.9 * VLIM else "black"
        ax.text(k + dx, r + dy, "+" if marks[r, k] > 0 else "−", fontsize=7, fontweight="bold",
                color=colour, **align)


def plot_highlight(
    matrix: pd.DataFrame,
    path: Path,
    highlight: Iterable[str],
    *,
    families: Mapping[str, str],
    names: Mapping[str, str],
    self_gain: Mapping[str, float] | None = None,
    title: str = "CLTM",
    marks: pd.DataFrame | None = None,
    marks_note: str | None = None,
) -> list[str]:
    """The heatmap of the highlight languages present in the matrix; returns those drawn.

    With none of them present the file is still written, as a note saying so. `marks` and
    `marks_note` as in plot_heatmap (the marks keep the full matrix's decisions).
    """
    wanted = list(highlight)
    present = [loc for loc in wanted if loc in matrix.index]
    if not present:
        note_image(path, "None of the highlight languages (" + ", ".join(wanted)
                   + ") is in this CLTM.")
        return present
    plot_heatmap(matrix.loc[present, present], path, families=families, names=names,
                 self_gain=self_gain, marks=marks, marks_note=marks_note,
                 title=f"{title} ({len(present)} of {len(wanted)} highlight languages)")
    return present


def plot_self_gain(
    self_gain: pd.Series,
    se: pd.Series,
    path: Path,
    *,
    families: Mapping[str, str],
    names: Mapping[str, str],
    title: str = "self-gain",
    se_label: str = "SE over seeds",
) -> None:
    """Δ_ii per target with its SE; non-positive gains (undefined rows) in grey."""
    order = language_order(self_gain.index, families, names)
    gains = self_gain.loc[order].to_numpy(dtype=float)
    errs = se.reindex(order).to_numpy(dtype=float)
    width = max(5.0, 0.3 * len(order) + 2.0)
    fig = Figure(figsize=(width, 4), layout="constrained")
    ax = fig.add_subplot()
    colours = ["tab:blue" if g > 0 else "0.6" for g in gains]
    ax.bar(range(len(order)), gains, yerr=np.nan_to_num(errs), color=colours, capsize=2)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(order)), [names.get(loc, loc) for loc in order],
                  rotation=90, fontsize=8)
    ax.set_ylabel("Δ_ii = Perf(D_i + D'_i) − Perf(D_i)")
    ax.set_title(f"{title} (error bars: {se_label})")
    fig.savefig(path, dpi=120)


def plot_contrast(
    tasks: Mapping[str, Mapping[str, Mapping[str, float | None]]],
    path: Path,
    keys: Iterable[tuple[str, float, str]],
) -> None:
    """The headline contrast: per diagnostic, each task's value with its bootstrap interval,
    the interval that seed noise alone gives (a CLTM of ones; grey band) and the ideal value.

    `keys` lists (key, ideal value, what it measures); `tasks[task][key]` holds `value`, `low`,
    `high`, `noise_low` and `noise_high` (any may be None: that part is not drawn).
    """
    keys = list(keys)
    names = list(tasks)
    fig = Figure(figsize=(4.2 * len(keys), 3.2), layout="constrained")
    for k, (key, ideal, what) in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), k + 1)
        for y, task in enumerate(names):
            d = tasks[task].get(key) or {}
            nl, nh = d.get("noise_low"), d.get("noise_high")
            if nl is not None and nh is not None:
                ax.fill_betweenx([y - 0.3, y + 0.3], nl, nh, color="0.88", linewidth=0,
                                 label="seed noise alone" if y == 0 else None)
            v, lo, hi = d.get("value"), d.get("low"), d.get("high")
            if v is None:
                ax.text(ideal, y, "not available", ha="center", va="center", fontsize=8)
                continue
            if lo is not None and hi is not None:
                ax.hlines(y, lo, hi, color=f"C{y}", linewidth=2)
            ax.plot([v], [y], "o", color=f"C{y}")
        ax.axvline(ideal, color="black", linewidth=0.8, linestyle="--", label="ideal")
        if key == "rfd1":
            ax.set_xscale("symlog", linthresh=1.0)  # intervals reach tens where rows are noise
        ax.set_yticks(range(len(names)), names)
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.set_title(f"{key} ({what})", fontsize=10)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    fig.savefig(path, dpi=120)


def plot_offdiag_hist(values: np.ndarray, path: Path, *, title: str = "off-diagonal") -> None:
    """Histogram of the off-diagonal CLTM entries, with the no-effect (0) and as-good-as-self
    (1) lines."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        note_image(path, "No defined off-diagonal CLTM entries to draw.")
        return
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    bins = int(np.clip(np.sqrt(values.size) * 2, 10, 60))
    ax.hist(values, bins=bins, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", linewidth=1.0, label="0: no effect")
    ax.axvline(1.0, color="tab:red", linewidth=1.0, linestyle="--",
               label="1: as good as target data")
    ax.set_xlabel("CLTM[target, donor], target ≠ donor")
    ax.set_ylabel("entries")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def plot_vs_cltm(cltm: pd.DataFrame, others: Mapping[str, pd.DataFrame], path: Path, *,
                 title: str) -> None:
    """One scatter per measure: each defined off-diagonal CLTM cell against the measure."""
    langs = list(cltm.index)
    mask = ~np.eye(len(langs), dtype=bool)
    y = cltm.reindex(index=langs, columns=langs).to_numpy(dtype=float)[mask]
    fig = Figure(figsize=(4.5 * len(others), 4), layout="constrained")
    for k, (name, matrix) in enumerate(others.items(), start=1):
        ax = fig.add_subplot(1, len(others), k)
        x = matrix.reindex(index=langs, columns=langs).to_numpy(dtype=float)[mask]
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=18, color="tab:blue")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.axhline(1.0, color="tab:red", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"{name} distance (mean over seeds)")
        ax.set_ylabel("CLTM[target, donor]")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)


def plot_performance_gap(scores: Mapping[str, pd.Series], gaps: Mapping[str, Mapping],
                         path: Path, *, names: Mapping[str, str], title: str) -> None:
    """Per-language scores of each condition side by side, with each condition's SD and mean
    RPD over languages in the legend."""
    langs = sorted(set().union(*(s.index for s in scores.values())))
    width = 0.8 / max(1, len(scores))
    fig = Figure(figsize=(max(6.0, 0.6 * len(langs) + 3), 4), layout="constrained")
    ax = fig.add_subplot()
    for k, (cond, s) in enumerate(scores.items()):
        g = gaps[cond]
        label = f"{cond}: SD {g['std']:.3f}, mean RPD {g['mean_rpd']:.1f}%"
        ax.bar(np.arange(len(langs)) + (k - (len(scores) - 1) / 2) * width,
               s.reindex(langs).to_numpy(dtype=float), width=width, label=label)
    ax.set_xticks(range(len(langs)), [names.get(x, x) for x in langs], rotation=90, fontsize=8)
    ax.set_ylabel("score (mean over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over bars
    fig.savefig(path, dpi=120)


def plot_similarity(matrix: pd.DataFrame, path: Path, *, families: Mapping[str, str],
                    names: Mapping[str, str], title: str) -> None:
    """A target x donor similarity matrix in [0, 1], ordered by family like the CLTM."""
    order = language_order(matrix.index, families, names)
    data = matrix.loc[order, order].to_numpy(dtype=float)
    n = len(order)
    side = max(4.5, 0.34 * n + 3.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="similarity")
    labels = [names.get(loc, loc) for loc in order]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("donor")
    ax.set_ylabel("target")
    ax.set_title(title, fontsize=9)
    if n <= ANNOTATE_MAX:
        for r in range(n):
            for k in range(n):
                if np.isfinite(data[r, k]):
                    ax.text(k, r, f"{data[r, k]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if data[r, k] < 0.5 else "black")
    fig.savefig(path, dpi=120)
