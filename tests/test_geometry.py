"""Centroid and Sinkhorn distances, and the Table 2 extreme pairs (geometry.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import ot
import pandas as pd
import pytest

from cltm.analysis.geometry import centroid_distance, extreme_pairs, sinkhorn_distance


def cloud(seed: int = 0, n: int = 150, d: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def shifted(x: np.ndarray, by: float, axis: int = 0) -> np.ndarray:
    y = x.copy()
    y[:, axis] += by
    return y


def test_centroid_distance_of_a_shift():
    x = cloud()
    shift = np.array([3.0, -4.0, 0.0, 0.0, 12.0])
    assert centroid_distance(x, x + shift) == pytest.approx(13.0)
    assert centroid_distance(x, x) == 0.0


def test_sinkhorn_self_is_small_and_grows_with_shift():
    x = cloud()
    far = sinkhorn_distance(x, shifted(x, 10.0), reg=0.05)
    assert sinkhorn_distance(x, x, reg=0.05) < 0.05 * far
    costs = [sinkhorn_distance(x, shifted(x, s), reg=0.05) for s in (0.0, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in itertools.pairwise(costs))
    # A rigid shift's exact OT cost is the shift itself (the identity plan is optimal); the
    # entropic cost sits above it.
    assert far == pytest.approx(10.0, rel=0.05) and far >= 10.0


def test_sinkhorn_matches_pot_with_the_scaled_reg():
    x, y = cloud(1, n=40), cloud(2, n=60) + 0.5
    m = ot.dist(x, y, metric="euclidean")
    reg = 0.1 * np.median(m)
    expected = ot.sinkhorn2(np.full(40, 1 / 40), np.full(60, 1 / 60), m, reg)
    assert sinkhorn_distance(x, y, reg=0.1) == pytest.approx(float(expected), rel=1e-9)
    # reg is relative to the median distance, so the cost scales with the data.
    assert sinkhorn_distance(7 * x, 7 * y, reg=0.1) == pytest.approx(7 * float(expected), rel=1e-6)


def test_sinkhorn_degenerate_and_bad_reg():
    same = np.zeros((5, 3))
    assert sinkhorn_distance(same, same, reg=0.05) == 0.0
    with pytest.raises(ValueError, match="positive reg"):
        sinkhorn_distance(cloud(), cloud(), reg=0.0)


def test_extreme_pairs_table2():
    langs = ["a", "b", "c", "d"]
    cltm = pd.DataFrame([[1.0, 0.8, -0.3, 0.1],
                         [0.5, 1.0, np.nan, -1.2],
                         [-0.1, 0.9, 1.0, 0.2],
                         [0.0, -0.4, 0.3, 1.0]], index=langs, columns=langs)
    cltm.loc["c", "c"] = 5.0  # a diagonal value never counts, however large
    cent = pd.DataFrame(np.arange(16.0).reshape(4, 4), index=langs, columns=langs)
    # Only the upper triangle filled: the lookup is symmetric.
    sink = pd.DataFrame(np.triu(np.full((4, 4), 2.0)), index=langs, columns=langs)
    sink = sink.where(np.triu(np.ones((4, 4), bool)))
    out = extreme_pairs(cltm, {"d_cent": cent, "sinkhorn": sink}, k=2)
    assert [(r["target"], r["donor"], r["sign"]) for r in out] == [
        ("c", "b", "positive"), ("a", "b", "positive"),
        ("b", "d", "negative"), ("d", "b", "negative")]
    assert [r["cltm"] for r in out] == [0.9, 0.8, -1.2, -0.4]
    assert out[0]["d_cent"] == 9.0  # row c, column b
    assert out[2]["d_cent"] == 7.0  # row b, column d
    assert out[0]["sinkhorn"] == 2.0  # (c, b) from the (b, c) cell
    assert set(out[0]) == {"target", "donor", "cltm", "sign", "d_cent", "sinkhorn"}


def test_extreme_pairs_without_negative_transfer():
    langs = ["a", "b"]
    cltm = pd.DataFrame([[1.0, 0.4], [0.2, 1.0]], index=langs, columns=langs)
    out = extreme_pairs(cltm, {}, k=2)
    assert [r["sign"] for r in out] == ["positive", "positive"]
    missing = extreme_pairs(cltm, {"d": pd.DataFrame()}, k=1)
    assert math.isnan(missing[0]["d"])
