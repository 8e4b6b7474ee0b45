"""Performance gap and linguistic gap across languages (phonemic-representations-gap, §3.3–3.4).

The performance gap is how unevenly one model scores across languages (SD and mean pairwise
relative percentage difference); the linguistic gap is how dissimilar its representations of two
languages are (linear CKA; a smaller CKA is a larger gap). `correlations` relates the two, as that
paper's Table 3 does with Spearman's ρ and Kendall's τ.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats


def rpd(a: float, b: float) -> float:
    """Relative percentage difference |a − b| / ((a + b) / 2) × 100 (eq. 1); NaN when a + b = 0."""
    total = a + b
    if total == 0:
        return math.nan
    return abs(a - b) / (total / 2) * 100


def performance_gap(scores: pd.Series) -> dict:
    """{"scores": language → score, "std": SD over languages, "mean_rpd": mean pairwise RPD}.

    The SD uses ddof=1 (the languages are a sample of the languages one could have picked; the
    paper does not say which it used). The mean RPD is over all unordered pairs of languages,
    leaving out pairs whose RPD is undefined. Missing scores are dropped first; with fewer than
    two languages both summaries are NaN.
    """
    clean = scores.dropna().astype(float)
    values = clean.to_numpy()
    std = float(np.std(values, ddof=1)) if len(values) >= 2 else math.nan
    pairs = [rpd(a, b) for a, b in itertools.combinations(values, 2)]
    defined = [p for p in pairs if math.isfinite(p)]
    mean_rpd = float(np.mean(defined)) if defined else math.nan
    return {"scores": {str(k): float(v) for k, v in clean.items()}, "std": std,
            "mean_rpd": mean_rpd}


def _as_matrix(a: np.ndarray) -> np.ndarray:
    # A 1-D input is one feature over the samples, not one sample.
    m = np.asarray(a, dtype=np.float64)
    return m[:, None] if m.ndim == 1 else m


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two (samples × features) matrices on the same samples.

    Columns are centred, then ||YᵀX||²_F / (||XᵀX||_F · ||YᵀY||_F). This feature-space form
    equals the HSIC form with linear kernels and costs O(n·d²) instead of O(n²). NaN when either
    centred matrix is all zero (a constant representation has no similarity structure).
    """
    x, y = _as_matrix(x), _as_matrix(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"linear_cka needs the same samples in both: got {x.shape[0]} and "
                         f"{y.shape[0]} rows")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    if den == 0:
        return math.nan
    return float(np.linalg.norm(y.T @ x) ** 2 / den)


def correlations(a: np.ndarray, b: np.ndarray) -> dict:
    """Spearman's ρ and Kendall's τ (with p-values) over the pairs where both are finite.

    {"n", "spearman", "spearman_p", "kendall", "kendall_p"}; NaN statistics below 3 pairs, and
    for a constant input (scipy's NaN, its warning silenced: NaN already says it).
    """
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"correlations needs paired values: got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    out = {"n": int(keep.sum()), "spearman": math.nan, "spearman_p": math.nan,
           "kendall": math.nan, "kendall_p": math.nan}
    if out["n"] < 3:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rho, rho_p = stats.spearmanr(a, b)
        tau, tau_p = stats.kendalltau(a, b)
    out.update(spearman=float(rho), spearman_p=float(rho_p), kendall=float(tau),
               kendall_p=float(tau_p))
    return out


def cross_matrix(values: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Mean over seeds of a per-run value of cross runs, as a target x donor matrix."""
    mean = values.groupby(["target", "donor"])["value"].mean().unstack("donor")
    return mean.reindex(index=languages, columns=languages)


def offdiag_pairs(cltm: pd.DataFrame, other: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The off-diagonal cells of `cltm` and of `other` (reindexed to it), paired."""
    langs = list(cltm.index)
    other = other.reindex(index=langs, columns=langs)
    mask = ~np.eye(len(langs), dtype=bool)
    return cltm[langs].to_numpy(float)[mask], other.to_numpy(float)[mask]


def _seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.groupby(["target", "condition", "donor"])["score"].mean().reset_index()


def condition_scores(runs: pd.DataFrame) -> dict[str, pd.Series]:
    means = _seed_means(runs)
    by = {c: means[means["condition"] == c] for c in ("base", "self", "cross")}
    return {
        "base": by["base"].set_index("target")["score"],
        "self": by["self"].set_index("target")["score"],
        # a target's cross score: the mean over its donors of the seed-mean score
        "cross": by["cross"].groupby("target")["score"].mean(),
    }


def cka_matrix(runs: pd.DataFrame,
               load: Callable[[str], np.ndarray]) -> tuple[pd.DataFrame, pd.Series]:
    """Linear CKA between the self model's and each cross model's embeddings of the target's
    probe clips (same seed), mean over seeds; and the same for base vs self per target.
    `load(run hash)` gives a run's embeddings of its target's probe clips."""
    rows = []
    for (target, seed), group in runs.groupby(["target", "seed"]):
        own = group[group["condition"] == "self"]
        if own.empty:
            continue
        reference = load(own["hash"].iloc[0])  # read once per group
        for r in group[group["condition"] != "self"].itertuples():
            value = linear_cka(reference, load(r.hash))
            rows.append({"target": target, "condition": r.condition, "donor": r.donor,
                         "seed": seed, "value": value})
    per_run = pd.DataFrame(rows)
    languages = sorted(runs["target"].unique())
    matrix = cross_matrix(per_run[per_run["condition"] == "cross"], languages)
    for lang in languages:
        matrix.loc[lang, lang] = 1.0  # the self model against itself
    base = per_run[per_run["condition"] == "base"].groupby("target")["value"].mean()
    return matrix, base
