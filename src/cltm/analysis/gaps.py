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
