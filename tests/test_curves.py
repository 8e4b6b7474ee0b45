"""Learning curves and the dynamic interval (curves.py, curve_plots.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from cltm.analysis.curve_plots import plot_curves, plot_interval_scores
from cltm.analysis.curves import choose_n, curve_table, interval_scores
from cltm.errors import CltmError

GRID = [2, 4, 8, 16, 32, 64, 128]
TAU, Z, EPS, BANDWIDTH = 0.05, 1.3, 0.05, 0.5
SETTINGS = {"tau": TAU, "z": Z, "eps": EPS}


def truth(n: float) -> float:
    """The noiseless learning curve: saturates at 0.9, half-way near N = 11."""
    return 0.5 + 0.4 * (1 - math.exp(-n / 16))


def offset_runs(offsets: dict[str, list[float]], grid: list[int] = GRID) -> pd.DataFrame:
    """Runs on the noiseless curve plus zero-mean seed offsets: the seed means are exactly the
    curve, and the seed SD is that of the offsets."""
    rows = [(t, n, s, truth(n) + e) for t, offs in offsets.items() for n in grid
            for s, e in enumerate(offs)]
    return pd.DataFrame(rows, columns=["target", "n", "seed", "score"])


OFFSETS = {"aa": [-0.002, 0.0, 0.002], "bb": [-0.001, 0.001], "cc": [-0.003, 0.0, 0.0, 0.003]}


def cell_runs() -> pd.DataFrame:
    # One target, n = 4 and 8, three seeds each: means 0.62 / 0.73, SDs 0.02 / 0.03.
    rows = [("xx", 4, s, v) for s, v in enumerate([0.60, 0.62, 0.64])]
    rows += [("xx", 8, s, v) for s, v in enumerate([0.70, 0.73, 0.76])]
    return pd.DataFrame(rows, columns=["target", "n", "seed", "score"])


def test_curve_table_columns_and_one_seed():
    runs = pd.concat([cell_runs(), pd.DataFrame([("yy", 4, 0, 0.5)],
                                                columns=["target", "n", "seed", "score"])])
    table = curve_table(runs)
    assert list(table.columns) == ["target", "n", "seeds", "mean", "sd", "se"]
    assert list(zip(table["target"], table["n"])) == [("xx", 4), ("xx", 8), ("yy", 4)]
    row = table.iloc[0]
    assert row["seeds"] == 3
    assert row["mean"] == pytest.approx(0.62)
    assert row["sd"] == pytest.approx(0.02)
    assert row["se"] == pytest.approx(0.02 / math.sqrt(3))
    assert math.isnan(table.iloc[2]["sd"]) and math.isnan(table.iloc[2]["se"])


def test_interval_terms_hand_computed():
    scores = interval_scores(cell_runs(), tau=TAU, z=Z, eps=EPS)
    assert list(scores.columns) == ["target", "n", "p_n", "p_2n", "delta", "se_delta",
                                    "rel_term", "snr_term", "slope_term", "score"]
    assert len(scores) == 1  # n = 8 has no 16 on the grid
    row = scores.iloc[0]
    # Δ = 0.73 − 0.62 = 0.11; SE_Δ = sqrt(0.02²/3 + 0.03²/3) = sqrt(0.0013/3) = 0.0208167
    assert row["delta"] == pytest.approx(0.11)
    assert row["se_delta"] == pytest.approx(0.0208166600, rel=1e-8)
    assert row["rel_term"] == pytest.approx(0.11 / 0.031)  # τ·P(n) = 0.05·0.62
    assert row["snr_term"] == pytest.approx(0.11 / (1.3 * 0.0208166600), rel=1e-8)  # 4.0648
    assert row["slope_term"] == pytest.approx(0.11 / 0.69314718 / 0.05, rel=1e-8)  # 3.1739
    assert row["score"] == pytest.approx(row["slope_term"])  # 3.17 < 3.55 < 4.06


def test_se_delta_is_a_standard_error():
    base = cell_runs()
    one = interval_scores(base, **SETTINGS).iloc[0]
    # The seed SDs alone would give sqrt(0.02² + 0.03²); the SE divides each variance by k = 3.
    assert one["se_delta"] == pytest.approx(math.sqrt(0.0013 / 3))
    assert one["se_delta"] < math.sqrt(0.0013) / 1.7
    # Each seed value replicated r times: the SD (ddof=1) barely moves and the SE shrinks by
    # sqrt((k − 1) / (r·k − 1)), i.e. about 1/sqrt(r).
    r, k = 4, 3
    reps = pd.concat([base.assign(seed=base["seed"] + k * j) for j in range(r)])
    many = interval_scores(reps, **SETTINGS).iloc[0]
    assert many["delta"] == pytest.approx(one["delta"])
    assert many["se_delta"] / one["se_delta"] == pytest.approx(math.sqrt((k - 1) / (r * k - 1)))
    # Put differently: at a fixed seed SD, r times the seeds is sqrt(r) times less SE.
    sd = curve_table(base)["sd"].to_numpy()
    sd_many = curve_table(reps)["sd"].to_numpy()
    assert np.allclose(sd_many / sd, math.sqrt((k - 1) * r / (r * k - 1)))
    assert many["se_delta"] / one["se_delta"] == pytest.approx(sd_many[0] / sd[0] / math.sqrt(r))


def test_zero_denominators_and_falling_curves():
    rows = [("xx", 4, 0, 0.0), ("xx", 8, 0, 0.2), ("yy", 4, 0, 0.6), ("yy", 8, 0, 0.5)]
    scores = interval_scores(pd.DataFrame(rows, columns=["target", "n", "seed", "score"]),
                             **SETTINGS)
    xx, yy = scores.iloc[0], scores.iloc[1]
    # One seed: no SE, so the noise term drops out; P(n) = 0: the level term drops out too.
    assert math.isnan(xx["se_delta"]) and math.isnan(xx["snr_term"])
    assert math.isnan(xx["rel_term"])
    assert xx["score"] == pytest.approx(0.2 / math.log(2) / 0.05)
    # A falling curve keeps its negative score, the most negative of the defined terms.
    assert yy["delta"] == pytest.approx(-0.1)
    assert yy["score"] == pytest.approx(min(-0.1 / (0.05 * 0.6), -0.1 / math.log(2) / 0.05))
    assert yy["score"] < 0


def expected_choice(bandwidth: float) -> int:
    """The argmax from the noiseless curve, with an explicit loop as the smoother."""
    cand = GRID[:-1]
    medians = []
    for n in cand:
        d = truth(2 * n) - truth(n)
        per_target = []
        for offs in OFFSETS.values():
            k = len(offs)
            sd = float(np.std(offs, ddof=1))
            se = math.sqrt(2 * sd**2 / k)
            per_target.append(min(d / (TAU * truth(n)), d / (Z * se), d / math.log(2) / EPS))
        medians.append(float(np.median(per_target)))
    smoothed = []
    for a in cand:
        w = [math.exp(-0.5 * ((math.log(a) - math.log(b)) / bandwidth) ** 2) for b in cand]
        smoothed.append(sum(wi * m for wi, m in zip(w, medians)) / sum(w))
    return cand[int(np.argmax(smoothed))]


def test_choose_n_on_a_known_curve():
    scores = interval_scores(offset_runs(OFFSETS), tau=TAU, z=Z, eps=EPS)
    assert sorted(scores["n"].unique()) == GRID[:-1]
    # Δ(n) = 0.4(u − u²) with u = exp(−n/16) peaks at n = 16·ln 2 ≈ 11; on the grid Δ is largest
    # at n = 8, where the slope term (2.754) binds, against 2.47 at n = 16 and 1.99 at n = 4.
    n8 = scores[(scores["target"] == "aa") & (scores["n"] == 8)].iloc[0]
    assert n8["delta"] == pytest.approx(0.4 * (math.exp(-0.5) - math.exp(-1.0)))
    assert n8["score"] == pytest.approx(n8["slope_term"])
    assert n8["score"] == pytest.approx(2.7544, abs=1e-4)
    chosen, table = choose_n(scores, bandwidth=0.5)
    assert chosen == expected_choice(0.5) == 8
    assert list(table.columns) == ["n", "median", "smoothed", "chosen"]
    assert table["chosen"].sum() == 1 and int(table.loc[table["chosen"], "n"].iloc[0]) == 8
    # A very narrow kernel is no smoothing at all.
    _, narrow = choose_n(scores, bandwidth=1e-3)
    assert np.allclose(narrow["smoothed"], narrow["median"])
    # A wide kernel flattens the curve; its long low tail to the right (n = 32, 64) pulls the
    # smoothed peak down to n = 4.
    assert choose_n(scores, bandwidth=1.5)[0] == expected_choice(1.5) == 4


def test_choose_n_with_gaussian_seed_noise():
    rng = np.random.default_rng(7)
    rows = [(t, n, s, truth(n) + rng.normal(0, 0.002)) for t in ["aa", "bb", "cc", "dd", "ee"]
            for n in GRID for s in range(5)]
    runs = pd.DataFrame(rows, columns=["target", "n", "seed", "score"])
    assert choose_n(interval_scores(runs, **SETTINGS), bandwidth=BANDWIDTH)[0] == 8


def test_choose_n_ties_pick_the_smaller_n():
    scores = pd.DataFrame({"target": ["a", "a"], "n": [10, 20], "score": [1.0, 1.0]})
    chosen, table = choose_n(scores, bandwidth=BANDWIDTH)
    assert chosen == 10
    assert table["smoothed"].tolist() == pytest.approx([1.0, 1.0])


def test_nan_medians_are_ignored():
    scores = pd.DataFrame({"target": ["a", "a", "a"], "n": [4, 8, 16],
                           "score": [1.0, math.nan, 2.0]})
    chosen, table = choose_n(scores, bandwidth=0.5)
    assert chosen == 16
    assert math.isnan(table["median"].iloc[1])
    assert math.isfinite(table["smoothed"].iloc[1])  # smoothed from its neighbours
    w = math.exp(-0.5 * (math.log(4) / 0.5) ** 2)
    assert table["smoothed"].iloc[0] == pytest.approx((1.0 + 2.0 * w) / (1 + w))


def test_grid_without_doubling_raises():
    runs = offset_runs(OFFSETS, grid=[10, 15, 25, 45])
    scores = interval_scores(runs, **SETTINGS)
    assert scores.empty
    with pytest.raises(CltmError, match="double"):
        choose_n(scores, bandwidth=BANDWIDTH)


def test_curve_plots_write_png(tmp_path):
    runs = offset_runs(OFFSETS)
    scores = interval_scores(runs, **SETTINGS)
    chosen, table = choose_n(scores, bandwidth=BANDWIDTH)
    curves_png, scores_png = tmp_path / "curves.png", tmp_path / "scores.png"
    plot_curves(curve_table(runs), chosen, curves_png, "gender")
    plot_interval_scores(scores, table, scores_png)
    for png in (curves_png, scores_png):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
