"""`cltm compare A B`: two results of the pipeline side by side, with intervals.

A result is a run store (a directory holding `runs.jsonl`, as `metrics/runs/<task>/`). The same
comparison serves two tasks of one grid (gender against speaker, the paper's headline contrast)
and two variants of one task (N, learning rate, corpus, encoder). Writes, into one folder:

  compare.md, compare.json   Table 1 for each result with its bootstrap interval; the difference
                             B − A of each diagnostic with the interval of the difference; the
                             cells whose difference is significant after Benjamini–Hochberg
  compare_cells.csv          every common off-diagonal cell: A, B, B − A, interval, p, q
  compare_heatmap.png        the cell-wise difference B − A on a symmetric colour scale

Common languages
    Languages present in only one result are named and left out: both stores are restricted to
    the common languages before anything is computed, so both CLTMs and every diagnostic cover
    the same language set (a diagnostic over different sets would compare the sets, not the
    transfer). A CLTM cell depends only on its own target's runs, so the common cells keep the
    values each result's own `cltm.csv` holds; the aggregate diagnostics may not.

Intervals
    As stats.py's `difference_intervals` (the report's contrast.json): each result is
    bootstrapped on its own seeds (paired by seed where `pair_seeds` and all its cells hold the
    same seeds), the two independently, and B − A is taken replicate by replicate. The draws come
    from `stats.contrast_stream(stats_seed)`, A's before B's, so the differences here equal those
    `difference_intervals` and `difference_summary` give for the same stores and settings. Each
    result's own interval is the percentile interval of the same draws.

Per-cell test of B − A
    A bootstrap test, not Welch's t-test on per-seed cell values: a CLTM cell is a ratio of two
    seed-mean gains, and a per-seed ratio (one seed's cross gain over its own self-gain) is
    unbounded where that seed's self-gain is near 0, so its seed values are heavy-tailed, far
    from the normality a t-test leans on; it also exists only where a result's seeds are paired.
    stats.py's own cell tests avoid the ratio by testing differences of means (cross vs self,
    cross vs base), but the difference of two results' ratios has no such restatement. The
    bootstrap replicates behind the diagnostic intervals already hold each result's CLTM, paired
    or not, so the cell's replicate differences B − A give its percentile interval and a
    two-sided p-value, p = 2 min(1 + #{d ≤ 0}, 1 + #{d ≥ 0}) / (1 + R) capped at 1 (the
    inversion of the percentile interval; the +1 keeps p above 0). Benjamini–Hochberg over the
    tested cells at `fdr`. Tested: cells whose row is defined (self-gain > 0) in both results;
    replicates where either row is undefined are left out of that cell. Limits: the bootstrap
    interval of a k-seed mean is too narrow by (k − 1)/k, and p cannot go below 1 / (R + 1), so
    with few resamples and many cells BH finds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cltm.analysis.cltm import compute_cltm, read_run_store
from cltm.analysis.diagnostics import diagnostics
from cltm.analysis.languages import display_names
from cltm.analysis.plots import ANNOTATE_MAX, language_order, note_image
from cltm.analysis.stats import (
    NUMERIC_KEYS,
    PAIRED_DESIGN,
    SeedCells,
    benjamini_hochberg,
    bootstrap_replicates,
    contrast_stream,
    difference_of_draws,
    family_codes,
    pairing,
    percentile_interval,
    replicate_diagnostics,
    seed_cells,
)
from cltm.config import AnalysisConfig
from cltm.errors import CltmError
from cltm.layout import STORE_NAME

log = logging.getLogger(__name__)

JSON_FILE = "compare.json"
MARKDOWN_FILE = "compare.md"
CELLS_FILE = "compare_cells.csv"
HEATMAP_FILE = "compare_heatmap.png"

CELL_COLUMNS = ("target", "donor", "a", "b", "difference", "low", "high", "p", "q",
                "significant")
CELL_TEST = ("percentile bootstrap test of B - A (each result's seeds resampled independently, "
             "difference taken replicate by replicate), Benjamini-Hochberg over the tested cells")


@dataclass(frozen=True)
class Side:
    """One result restricted to the common languages: its seed cells, CLTM and diagnostics."""

    label: str
    store: str
    languages: list[str]  # every language of the store, before the restriction
    cells: SeedCells
    matrix: pd.DataFrame  # compute_cltm's CLTM over the common languages
    diagnostics: dict[str, object]  # diagnostics.diagnostics of that matrix
    paired: bool


@dataclass(frozen=True)
class Comparison:
    """What `compare` found; `summary` is compare.json's content before rounding."""

    summary: dict[str, object]
    difference: pd.DataFrame  # B − A, target x donor, NaN where a row is undefined in either
    cells: pd.DataFrame  # CELL_COLUMNS, one row per common off-diagonal cell


def store_languages(runs: pd.DataFrame) -> list[str]:
    """Every language a run table names, as a target or a donor."""
    return sorted(set(runs["target"].astype(str)) | set(runs["donor"].astype(str)))


def read_store(path: Path) -> pd.DataFrame:
    """A run store (a directory holding runs.jsonl, or the file), read without the training
    package as `cltm cltm` reads it; a missing path is a CltmError that names it."""
    path = Path(path)
    if not path.exists():
        raise CltmError(f"no run store at {path}: give a directory holding {STORE_NAME} (as "
                        "metrics/runs/<task>); a store of another revision can be brought back "
                        "with `dvc get` or `git worktree`")
    return read_run_store(path)


def _side(label: str, store: str, runs: pd.DataFrame, common: list[str],
          families: Mapping[str, str] | None, pair_seeds: bool) -> Side:
    kept = runs[runs["target"].astype(str).isin(common) & runs["donor"].astype(str).isin(common)]
    kept = kept.assign(target=kept["target"].astype(str), donor=kept["donor"].astype(str))
    result = compute_cltm(kept, pair_seeds=pair_seeds)  # also refuses repeated or missing runs
    diag = diagnostics(result.matrix, result.se, families, self_gain=result.self_gain)
    cells = seed_cells(kept, common)
    return Side(label, store, store_languages(runs), cells, result.matrix, diag,
                pairing(cells, pair_seeds))


def _draws(cells: SeedCells, families: Mapping[str, str] | None, replicates: int,
           rng: np.random.Generator, paired: bool) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """stats.diagnostic_draws' draws (same generator use, so the same values) and, for the cell
    test, the replicates' CLTMs (R, n, n; NaN rows where undefined)."""
    codes = family_codes(cells.languages, families)
    n = len(cells.languages)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in NUMERIC_KEYS}
    matrices = [np.empty((0, n, n))]
    if replicates > 0:
        for rep in bootstrap_replicates(cells, replicates, rng, paired):
            for k, v in replicate_diagnostics(rep, codes).items():
                parts[k].append(v)
            matrices.append(rep.cltm)
    draws = {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}
    return draws, np.concatenate(matrices)


def _value(v: object) -> float:
    return float("nan") if v is None else float(v)


def _cell_tests(a: Side, b: Side, reps_a: np.ndarray, reps_b: np.ndarray, *, level: float,
                fdr: float) -> pd.DataFrame:
    """The module docstring's bootstrap test of every common off-diagonal cell, BH-adjusted."""
    langs = a.cells.languages
    n = len(langs)
    tgt, don = np.nonzero(~np.eye(n, dtype=bool))
    point_a = a.matrix.reindex(index=langs, columns=langs).to_numpy(dtype=float)[tgt, don]
    point_b = b.matrix.reindex(index=langs, columns=langs).to_numpy(dtype=float)[tgt, don]
    point = point_b - point_a  # NaN where either row is undefined: such a cell is not tested
    d = reps_b[:, tgt, don] - reps_a[:, tgt, don]  # (R, cells)
    finite = np.isfinite(d)
    used = finite.sum(0)
    below = (finite & (d <= 0)).sum(0)
    above = (finite & (d >= 0)).sum(0)
    testable = np.isfinite(point) & (used > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.minimum(1.0, 2.0 * np.minimum(below + 1, above + 1) / (used + 1))
    p = np.where(testable, p, np.nan)
    low, high = np.full(len(tgt), np.nan), np.full(len(tgt), np.nan)
    for c in np.flatnonzero(testable):
        low[c], high[c] = percentile_interval(d[:, c], level)
    q = benjamini_hochberg(p)
    return pd.DataFrame({
        "target": np.array(langs)[tgt], "donor": np.array(langs)[don], "a": point_a,
        "b": point_b, "difference": point, "low": low, "high": high, "p": p, "q": q,
        "significant": q <= fdr,  # NaN compares False: an untested cell is never a discovery
    }, columns=list(CELL_COLUMNS))


def compare_runs(
    runs_a: pd.DataFrame,
    runs_b: pd.DataFrame,
    *,
    labels: tuple[str, str] = ("A", "B"),
    stores: tuple[str, str] = ("", ""),
    families: Mapping[str, str] | None = None,
    settings: AnalysisConfig,
) -> Comparison:
    """Compare two run tables (one row per run, as compute_cltm takes them): B − A.

    `families` (locale -> group) gives intra_family_pos; of `settings`, the analysis params the
    cltm stage uses, this reads fdr, bootstrap (resamples of each result; 0: no intervals and
    no cell tests), ci_level, stats_seed and pair_seeds. Raises CltmError when the results
    share fewer than 2 languages or a store is incomplete over the common languages.
    """
    fdr, bootstrap, ci_level = settings.fdr, settings.bootstrap, settings.ci_level
    stats_seed, pair_seeds = settings.stats_seed, settings.pair_seeds
    if not 0 < fdr < 1 or not 0 < ci_level < 1:
        raise CltmError(f"fdr and ci_level must lie strictly between 0 and 1, not {fdr} and "
                        f"{ci_level}")
    langs_a, langs_b = store_languages(runs_a), store_languages(runs_b)
    common = sorted(set(langs_a) & set(langs_b))
    only_a = sorted(set(langs_a) - set(common))
    only_b = sorted(set(langs_b) - set(common))
    if len(common) < 2:
        raise CltmError(f"{labels[0]} and {labels[1]} share {len(common)} language(s) "
                        f"({', '.join(common) or 'none'}); a comparison of two CLTMs needs at "
                        f"least 2 common languages ({labels[0]}: {', '.join(langs_a)}; "
                        f"{labels[1]}: {', '.join(langs_b)})")
    if only_a or only_b:
        log.warning("languages in only one result, left out of the comparison: %s",
                    "; ".join(f"only in {lab}: {', '.join(x)}" for lab, x in
                              zip(labels, (only_a, only_b), strict=True) if x))
    a, b = (_side(lab, store, runs, common, families, pair_seeds) for lab, store, runs in
            zip(labels, stores, (runs_a, runs_b), strict=True))

    rng = contrast_stream(stats_seed)
    draws_a, reps_a = _draws(a.cells, families, bootstrap, rng, a.paired)  # A first, as
    draws_b, reps_b = _draws(b.cells, families, bootstrap, rng, b.paired)  # difference_intervals
    table = {}
    for key in NUMERIC_KEYS:
        va, vb = a.diagnostics[key], b.diagnostics[key]
        row = difference_of_draws(_value(va), _value(vb), draws_a[key], draws_b[key], ci_level)
        for side, v, draws in (("a", va, draws_a[key]), ("b", vb, draws_b[key])):
            bounds = percentile_interval(draws, ci_level, defined=v is not None)
            row[f"{side}_low"], row[f"{side}_high"] = bounds or (None, None)
        table[key] = row

    cells = _cell_tests(a, b, reps_a, reps_b, level=ci_level, fdr=fdr)
    difference = (b.matrix.reindex(index=common, columns=common)
                  - a.matrix.reindex(index=common, columns=common))
    significant = cells[cells["significant"]].sort_values(["q", "target", "donor"])

    def describe(side: Side, only: list[str]) -> dict[str, object]:
        return {"label": side.label, "store": side.store, "languages": side.languages,
                "only_here": only,
                "seed_design": PAIRED_DESIGN if side.paired else "independent seeds",
                "seeds_per_cell": int(side.cells.counts.max()),
                "undefined_targets": side.diagnostics["undefined_targets"]}

    summary = {
        "a": describe(a, only_a), "b": describe(b, only_b),
        "difference": f"{b.label} - {a.label}",
        "common_languages": common, "only_in_a": only_a, "only_in_b": only_b,
        "settings": {"bootstrap": int(bootstrap), "ci_level": ci_level, "fdr": fdr,
                     "stats_seed": int(stats_seed), "pair_seeds": bool(pair_seeds)},
        "diagnostics": table,
        "cells": {"test": CELL_TEST, "tested": int(cells["p"].notna().sum()),
                  "significant": int(cells["significant"].sum()),
                  "significant_cells": significant.drop(columns="significant").to_dict(
                      "records")},
        "heatmap": HEATMAP_FILE,
    }
    return Comparison(summary, difference, cells)


# --- the files ----------------------------------------------------------------------------------


def _num(v: object, signed: bool = False, count: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if count:  # a language count, or a bootstrap quantile of one (which may fall between two)
        return f"{float(v):+g}" if signed else f"{float(v):g}"
    return f"{float(v):+.3f}" if signed else f"{float(v):.3f}"


def _interval(low: object, high: object, count: bool = False) -> str:
    return ("" if low is None or high is None else
            f" [{_num(low, count=count)}, {_num(high, count=count)}]")


def _languages_line(s: Mapping[str, object]) -> list[str]:
    a, b = s["a"], s["b"]
    common = s["common_languages"]
    if not s["only_in_a"] and not s["only_in_b"]:
        return [f"Both results cover the same {len(common)} languages: {', '.join(common)}.", ""]
    parts = [f"only in {side['label']}: {', '.join(only)}"
             for side, only in ((a, s["only_in_a"]), (b, s["only_in_b"])) if only]
    return [f"**Languages in only one result, left out of the comparison**: {'; '.join(parts)}. "
            f"Both CLTMs are restricted to the {len(common)} common languages "
            f"({', '.join(common)}) before any diagnostic is computed.", ""]


def markdown(summary: Mapping[str, object]) -> str:
    """compare.md from compare.json's content."""
    a, b = summary["a"], summary["b"]
    la, lb = a["label"], b["label"]
    st = summary["settings"]
    lines = [f"# {lb} − {la}", "",
             f"A = {la} (`{a['store']}`), B = {lb} (`{b['store']}`).", "",
             f"| | A: {la} | B: {lb} |", "|---|---|---|"]
    for what, key in (("languages in the store", "languages"), ("seeds per cell", "seeds_per_cell"),
                      ("seed design", "seed_design"),
                      ("undefined targets (common languages)", "undefined_targets")):
        va, vb = a[key], b[key]
        if isinstance(va, list):
            va, vb = (", ".join(v) or "none" for v in (va, vb))
        lines.append(f"| {what} | {va} | {vb} |")
    lines += ["", *_languages_line(summary)]

    level, reps = st["ci_level"], st["bootstrap"]
    lines += ["## Table 1 with intervals", ""]
    if reps:
        lines += [f"Values with their {100 * level:g}% percentile bootstrap intervals ({reps} "
                  "resamples of each result's seeds, the two results resampled independently). "
                  "B − A is the difference of the point values; its interval is the percentile "
                  "interval of the differences taken resample by resample. Where that interval "
                  "excludes 0 the two results differ in that diagnostic beyond seed noise; two "
                  "overlapping intervals of A and B do not say they do not.", ""]
    else:
        lines += ["The bootstrap is off (`analysis.bootstrap: 0`): point values only.", ""]
    lines += [f"| diagnostic | A: {la} | B: {lb} | B − A | interval of B − A | verdict |",
              "|---|---|---|---|---|---|"]
    for key, d in summary["diagnostics"].items():
        verdict = ("" if d["excludes_zero"] is None else
                   "excludes 0" if d["excludes_zero"] else "covers 0")
        n = key == "n_languages"  # the defined languages: a count
        lines.append(f"| `{key}` | {_num(d['a'], count=n)}"
                     f"{_interval(d['a_low'], d['a_high'], n)} | {_num(d['b'], count=n)}"
                     f"{_interval(d['b_low'], d['b_high'], n)} | "
                     f"{_num(d['difference'], signed=True, count=n)} | "
                     f"{_interval(d['low'], d['high'], n).strip() or 'n/a'} | {verdict} |")
    lines += ["", "Distances from the ideal (rfd1, asym_rel, 1 − cos_rows) only grow with seed "
              "noise, so a difference between two of them mixes two noise-inflated values; with "
              "few seeds every interval is somewhat too narrow.", ""]

    c = summary["cells"]
    lines += ["## Cells", "",
              f"Each common off-diagonal cell (target, donor) with a defined row in both results "
              f"is tested: {c['test']}, at FDR {st['fdr']:g}. {c['significant']} of "
              f"{c['tested']} tested cells differ.", ""]
    if c["significant_cells"]:
        lines += [f"| target | donor | A | B | B − A | {100 * level:g}% interval | q |",
                  "|---|---|---|---|---|---|---|"]
        for r in c["significant_cells"]:
            lines.append(f"| {r['target']} | {r['donor']} | {_num(r['a'])} | {_num(r['b'])} | "
                         f"{_num(r['difference'], signed=True)} | "
                         f"{_interval(r['low'], r['high']).strip()} | {r['q']:.4g} |")
        lines.append("")
    lines += [f"All cells: `{CELLS_FILE}`.", "",
              f"![{lb} − {la}, cell by cell]({summary['heatmap']})", "",
              "The heatmap shows CLTM_B − CLTM_A on a colour scale symmetric around 0; `*` marks "
              "the cells that differ at the FDR; grey: the diagonal and the rows undefined in "
              "either result.", ""]
    return "\n".join(lines)


def plot_difference(difference: pd.DataFrame, path: Path, *, significant: pd.DataFrame,
                    families: Mapping[str, str], title: str) -> None:
    """B − A (target x donor) on a colour scale symmetric around 0 that reaches the largest
    |difference|, ordered by family as the CLTM heatmaps; `significant` (same labels; > 0 where
    a cell differs, 0 or NaN elsewhere) puts a `*` in the cells that differ. Built on Figure
    directly, as plots.py's figures are."""
    names = display_names(difference.index)
    order = language_order(difference.index, families, names)
    data = difference.loc[order, order].to_numpy(dtype=float, copy=True)
    np.fill_diagonal(data, np.nan)  # 1 − 1 by construction: nothing was compared there
    if not np.isfinite(data).any():
        note_image(path, "No cell is defined in both results: no difference to draw.")
        return
    vlim = float(np.nanmax(np.abs(data))) or 1.0
    marks = significant.reindex(index=order, columns=order).to_numpy(dtype=float) > 0
    n = len(order)
    side = max(4.5, 0.34 * n + 3.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=-vlim, vmax=vlim,
                      interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="CLTM B − A\n*: the difference is significant "
                 "(BH, at the FDR)")
    labels = [names.get(loc, loc) for loc in order]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("donor")
    ax.set_ylabel("target")
    ax.set_title(title)
    for r in range(n):
        for k in range(n):
            v = data[r, k]
            if not np.isfinite(v):
                continue
            text = (f"{v:.2f}" if n <= ANNOTATE_MAX else "") + ("*" if marks[r, k] else "")
            if text:
                ax.text(k, r, text, ha="center", va="center", fontsize=7,
                        color="white" if abs(v) > 0.7 * vlim else "black")
    fig.savefig(path, dpi=120)
