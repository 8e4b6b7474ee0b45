"""Performance gap, linear CKA and the gap correlations (gaps.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.stats import ortho_group

from cltm.analysis.gaps import correlations, linear_cka, performance_gap, rpd

# --- RPD and the performance gap -----------------------------------------------------------------


def test_rpd_worked_examples():
    # |0.8 − 0.6| / 0.7 × 100 = 0.2 / 0.7 × 100 = 28.5714…
    assert rpd(0.8, 0.6) == pytest.approx(200 / 7)
    assert rpd(0.6, 0.8) == rpd(0.8, 0.6)
    assert rpd(0.5, 0.5) == 0.0
    assert rpd(1.0, 0.0) == pytest.approx(200.0)  # the maximum for non-negative scores
    assert math.isnan(rpd(0.0, 0.0))


def test_performance_gap_three_languages():
    gap = performance_gap(pd.Series({"en": 0.9, "de": 0.8, "eu": 0.6}))
    assert gap["scores"] == {"en": 0.9, "de": 0.8, "eu": 0.6}
    # mean 0.7667; squared deviations 0.017778, 0.001111, 0.027778 → sum 0.046667; / 2 → SD 0.15275
    assert gap["std"] == pytest.approx(math.sqrt(0.14 / 6))
    # RPDs: en–de 0.1/0.85 = 11.7647, en–eu 0.3/0.75 = 40, de–eu 0.2/0.7 = 28.5714
    assert gap["mean_rpd"] == pytest.approx((100 / 8.5 + 40 + 200 / 7) / 3)
    assert gap["mean_rpd"] == pytest.approx(26.7787, abs=1e-4)


def test_performance_gap_drops_missing_and_needs_two():
    gap = performance_gap(pd.Series({"en": 0.9, "de": math.nan, "eu": 0.6}))
    assert set(gap["scores"]) == {"en", "eu"}
    assert gap["mean_rpd"] == pytest.approx(40.0)
    assert gap["std"] == pytest.approx(0.3 / math.sqrt(2))
    one = performance_gap(pd.Series({"en": 0.9}))
    assert math.isnan(one["std"]) and math.isnan(one["mean_rpd"])


# --- linear CKA ----------------------------------------------------------------------------------


def cka_gram(x: np.ndarray, y: np.ndarray) -> float:
    """CKA through HSIC with centred linear kernels: tr(KcLc) / sqrt(tr(KcKc) tr(LcLc))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    kc = h @ (x @ x.T) @ h
    lc = h @ (y @ y.T) @ h
    return float(np.trace(kc @ lc) / math.sqrt(np.trace(kc @ kc) * np.trace(lc @ lc)))


def test_cka_identical_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q = ortho_group.rvs(12, random_state=1)
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-12)  # centring removes shifts


def test_cka_independent_noise_is_small():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(500, 10)), rng.normal(size=(500, 10))
    # Under independence E[CKA] ≈ d / n-ish: well under 0.1 for n = 500, d = 10.
    assert linear_cka(x, y) < 0.1


@pytest.mark.parametrize("shape", [(50, 8, 5), (30, 40, 3), (100, 1, 6)])
def test_cka_matches_gram_form(shape):
    n, dx, dy = shape
    rng = np.random.default_rng(n + dx)
    x = rng.normal(size=(n, dx)) * rng.uniform(0.1, 5, dx) + rng.normal(size=dx)
    y = x[:, :1] @ rng.normal(size=(1, dy)) + rng.normal(size=(n, dy))  # partly related
    assert linear_cka(x, y) == pytest.approx(cka_gram(x, y), abs=1e-10)


def test_cka_errors_and_degenerate():
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(rng.normal(size=(10, 3)), rng.normal(size=(11, 3)))
    constant = np.ones((10, 3))
    assert math.isnan(linear_cka(constant, rng.normal(size=(10, 3))))


# --- correlations --------------------------------------------------------------------------------


def test_correlations_match_scipy_on_finite_pairs():
    a = np.array([0.1, 0.4, np.nan, 0.3, 0.9, 0.5, 0.2])
    b = np.array([1.0, 3.0, 2.0, np.inf, 5.0, 4.0, 1.5])
    out = correlations(a, b)
    keep = [0, 1, 4, 5, 6]
    rho, rho_p = sps.spearmanr(a[keep], b[keep])
    tau, tau_p = sps.kendalltau(a[keep], b[keep])
    assert out["n"] == 5
    # a and b are in the same order on the kept pairs: both coefficients are exactly 1.
    assert out["spearman"] == pytest.approx(1.0) and out["kendall"] == pytest.approx(1.0)
    assert out["spearman_p"] == pytest.approx(rho_p)
    assert out["kendall_p"] == pytest.approx(tau_p)
    assert (rho, tau) == pytest.approx((1.0, 1.0))
    # Kendall's exact p for n = 5, τ = 1: 2 / 5! = 1/60.
    assert out["kendall_p"] == pytest.approx(2 / 120)


def test_correlations_negative_and_too_few():
    out = correlations(np.arange(10.0), -np.arange(10.0) ** 3)
    assert out["spearman"] == pytest.approx(-1.0) and out["kendall"] == pytest.approx(-1.0)
    few = correlations(np.array([1.0, 2.0, np.nan]), np.array([1.0, 2.0, 3.0]))
    assert few["n"] == 2
    assert all(math.isnan(few[k]) for k in ("spearman", "spearman_p", "kendall", "kendall_p"))
