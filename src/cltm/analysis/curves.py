"""Learning curves of the base condition and the paper's dynamic interval [N, 2N] (§2.2).

A candidate N is good when the curve still rises steeply between N and 2N: the gain
Δ = P(2N) − P(N) must be large relative to the level P(N) (τ), to the seed noise (z) and in
absolute slope per doubling (ε). Each candidate N gets

    score = min(Δ / (τ·P(N)), Δ / (z·SE_Δ), (Δ / ln 2) / ε)

per language; the median over languages is smoothed over log N and its peak is the chosen N.

SE_Δ is the standard error of Δ across seeds, sqrt(var P(N)/k₁ + var P(2N)/k₂) (var with
ddof=1). The reference divided by the seed SD instead (PROTOCOL.md, "Dynamic interval"): an SD
describes one run's spread and does not shrink with more seeds, so its term was not the
signal-to-noise ratio of the estimated Δ that z = 1.3 implies. With the SE, the noise term
constrains less than in the reference (by about √(k/2) for k seeds at each end), and more seeds
loosen it as they should.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cltm.errors import CltmError

CURVE_COLUMNS = ["target", "n", "seeds", "mean", "sd", "se"]
SCORE_COLUMNS = ["target", "n", "p_n", "p_2n", "delta", "se_delta", "rel_term", "snr_term",
                 "slope_term", "score"]


def curve_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (target, n): seeds, mean, sd (ddof=1, NaN for one seed) and se = sd / √seeds.

    `runs` has columns target, n, seed, score. Runs with a missing score are not counted as seeds
    (a failed run carries no information about the curve).
    """
    missing = {"target", "n", "seed", "score"} - set(runs.columns)
    if missing:
        raise CltmError(f"learning-curve runs lack the column(s) {sorted(missing)}; "
                        "expected target, n, seed, score")
    valid = runs.dropna(subset=["score"]).astype({"n": int, "score": float})
    grouped = valid.groupby(["target", "n"])["score"]
    table = grouped.agg(seeds="count", mean="mean", sd=lambda s: s.std(ddof=1)).reset_index()
    table["se"] = table["sd"] / np.sqrt(table["seeds"])
    return table[CURVE_COLUMNS].sort_values(["target", "n"]).reset_index(drop=True)


def _ratio(num: float, den: float) -> float:
    # A zero or undefined denominator means the term cannot constrain: NaN drops out of the min.
    if not math.isfinite(den) or den == 0:
        return math.nan
    return num / den


def interval_scores(runs: pd.DataFrame, *, tau: float, z: float, eps: float) -> pd.DataFrame:
    """The dynamic-interval score of every (target, n) whose 2n is also on that target's grid.

    Terms with a zero or non-finite denominator (one seed, P(n) = 0) are left out of the min;
    a cell with no usable term scores NaN. A non-positive Δ gives a non-positive score, kept as
    computed: a falling curve should rank below any rising one, by how much it falls.
    """
    table = curve_table(runs)
    rows = []
    for target, curve in table.groupby("target", sort=True):
        by_n = curve.set_index("n")
        for n in by_n.index:
            if 2 * n not in by_n.index:
                continue
            lo, hi = by_n.loc[n], by_n.loc[2 * n]
            delta = hi["mean"] - lo["mean"]
            se_delta = math.sqrt(lo["sd"] ** 2 / lo["seeds"] + hi["sd"] ** 2 / hi["seeds"])
            rel = _ratio(delta, tau * lo["mean"])
            snr = _ratio(delta, z * se_delta)
            slope = _ratio(delta / math.log(2), eps)
            terms = [t for t in (rel, snr, slope) if math.isfinite(t)]
            score = min(terms) if terms else math.nan
            rows.append((target, int(n), lo["mean"], hi["mean"], delta, se_delta, rel, snr,
                         slope, score))
    return pd.DataFrame(rows, columns=SCORE_COLUMNS).astype({"n": int})


def _smooth_log(ns: np.ndarray, values: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian-kernel average over ln n; NaN values carry no weight."""
    logn = np.log(ns.astype(float))
    weights = np.exp(-0.5 * ((logn[:, None] - logn[None, :]) / bandwidth) ** 2)
    weights = weights * np.isfinite(values)[None, :]
    total = weights.sum(axis=1)
    smoothed = (weights @ np.nan_to_num(values)) / np.where(total > 0, total, np.nan)
    return smoothed


def choose_n(scores: pd.DataFrame, *, bandwidth: float) -> tuple[int, pd.DataFrame]:
    """The N at the peak of the smoothed median score (ties: the smaller N).

    Returns (N, table) with table columns n, median (over targets), smoothed (Gaussian kernel over
    ln n with SD `bandwidth`), chosen. Only an n with a defined median can be chosen.
    """
    if scores.empty:
        raise CltmError(
            "no candidate N has 2N on the learning-curve grid: the grid needs at least two "
            "values where one is double the other (e.g. 30, 60, 120)")
    if bandwidth <= 0:
        raise CltmError(f"the smoothing bandwidth must be positive, got {bandwidth}")
    medians = scores.groupby("n")["score"].median().sort_index()
    ns = medians.index.to_numpy(dtype=int)
    values = medians.to_numpy(dtype=float)
    if not np.isfinite(values).any():
        raise CltmError("every candidate N has an undefined interval score (no usable seeds); "
                        "check the learning-curve runs")
    smoothed = _smooth_log(ns, values, bandwidth)
    eligible = np.where(np.isfinite(values), smoothed, -np.inf)
    best = int(np.argmax(eligible))  # the first maximum, i.e. the smaller n on a tie
    table = pd.DataFrame({"n": ns, "median": values, "smoothed": smoothed,
                          "chosen": np.arange(len(ns)) == best})
    return int(ns[best]), table
