"""The uncertainty outputs: cell tests, BH, bootstrap intervals, family permutations (stats.py)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cltm import layout
from cltm.analysis import stats as st
from cltm.analysis.cltm import compute_cltm, shared_seeds
from cltm.analysis.diagnostics import KEYS, diagnostics
from cltm.analysis.headline import HEADLINE_KEYS
from cltm.analysis.plots import plot_heatmap, plot_highlight
from cltm.errors import CltmError
from cltm.stages import report as report_mod
from cltm.stages.contrast import run_contrast
from cltm.stages.diagnostics import run_diagnostics
from cltm.stages.report import run_report
from tests.conftest import paper_contrasts, paper_tasks, run_cltm

LANGS = ["l0", "l1", "l2", "l3", "l4", "l5"]
#: Two planted families, alternating, so that every language has same-family partners.
FAMILIES = {loc: "AB"[k % 2] for k, loc in enumerate(LANGS)}

STATS_FILES = (layout.SIGNIFICANCE_FILE, layout.CI_FILE, layout.FAMILY_FILE, layout.INFO_FILE)


def make_runs(rng: np.random.Generator, langs: list[str], gains: np.ndarray,
              cross: np.ndarray | None = None, *, seeds: int = 8, sd: float = 0.03,
              seed_sd: float = 0.0) -> pd.DataFrame:
    """Seed-level runs: base 0.5, self 0.5 + gain_i, cross 0.5 + cross[i, j] (default: gain_i,
    i.e. a true CLTM of ones), Gaussian seed noise; `seed_sd` adds a Gaussian effect per seed
    number shared by every run of that seed (a seed that trains badly everywhere)."""
    n = len(langs)
    cross = np.repeat(np.asarray(gains, float)[:, None], n, axis=1) if cross is None else cross
    shared = rng.normal(0.0, seed_sd, seeds) if seed_sd else np.zeros(seeds)
    rows = []
    for a, i in enumerate(langs):
        cells = [("base", i, 0.0), ("self", i, gains[a])]
        cells += [("cross", j, cross[a, b]) for b, j in enumerate(langs) if b != a]
        for cond, donor, shift in cells:
            noise = rng.normal(0.0, sd, seeds) + shared
            rows += [(i, cond, donor, s, 0.5 + shift + e) for s, e in enumerate(noise)]
    return pd.DataFrame(rows, columns=["target", "condition", "donor", "seed", "score"])


def write_store(directory: Path, runs: pd.DataFrame, task: str = "gender") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "runs.jsonl", "w", encoding="utf-8") as fh:
        for k, rec in enumerate(runs.to_dict("records")):
            fh.write(json.dumps({**rec, "task": task, "hash": f"h{k}"}) + "\n")
    return directory


# --- Benjamini–Hochberg and the cell tests -------------------------------------------------------


def test_bh_hand_worked():
    # Sorted p: 0.001 0.02 0.021 0.5, m = 4; p·m/rank: 0.004 0.04 0.028 0.5; the running minimum
    # from the top lowers 0.04 to 0.028 (step-up). The NaN is not counted in m.
    p = np.array([0.021, 0.5, np.nan, 0.001, 0.02])
    q = st.benjamini_hochberg(p)
    assert q[:2] == pytest.approx([0.028, 0.5])
    assert math.isnan(q[2])
    assert q[3:] == pytest.approx([0.004, 0.028])
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, 40)
    assert st.benjamini_hochberg(p) == pytest.approx(sps.false_discovery_control(p))
    assert np.isnan(st.benjamini_hochberg(np.array([np.nan, np.nan]))).all()


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    for nx, ny in ((2, 2), (2, 5), (4, 3)):
        x, y = rng.normal(0.6, 0.05, nx), rng.normal(0.5, 0.02, ny)
        p = st.welch_p(x.mean(), x.var(ddof=1), nx, y.mean(), y.var(ddof=1), ny)
        assert p == pytest.approx(sps.ttest_ind(x, y, equal_var=False).pvalue, rel=1e-10)
    # Fewer than 2 seeds, or no spread on either side: no p-value rather than a false certainty.
    assert np.isnan(st.welch_p(0.6, np.nan, 1, 0.5, 0.01, 3))
    assert np.isnan(st.welch_p(0.6, 0.0, 2, 0.5, 0.0, 2))
    # Constant cells from the seed arrays: 0.7 three times has a rounded mean whose naive
    # variance is 1.8e-32, which would pass for measured noise and give p = 0.
    mean, var = st._moments(np.array([[0.7, 0.7, 0.7], [0.1, 0.1, 0.1]]), np.array([3, 3]))
    assert (var == 0.0).all()
    assert np.isnan(st.welch_p(mean[0], var[0], 3, mean[1], var[1], 3))


def test_cell_tests_against_scipy():
    scores = {("a", "base", "a"): [0.50, 0.52, 0.49], ("a", "self", "a"): [0.70, 0.74, 0.69],
              ("a", "cross", "b"): [0.61, 0.66], ("b", "base", "b"): [0.40, 0.45],
              ("b", "self", "b"): [0.42, 0.41], ("b", "cross", "a"): [0.9, 0.95]}  # b undefined
    runs = pd.DataFrame([(t, c, d, s, v) for (t, c, d), vals in scores.items()
                         for s, v in enumerate(vals)],
                        columns=["target", "condition", "donor", "seed", "score"])
    result = compute_cltm(runs, pair_seeds=False)
    tests = st.cell_tests(st.seed_cells(runs), 0.05, result).set_index(["target", "donor"])
    assert list(tests.reset_index().columns) == list(st.SIGNIFICANCE_COLUMNS)
    cross, base, self_ = (scores[("a", c, d)] for c, d in (("cross", "b"), ("base", "a"),
                                                           ("self", "a")))
    row = tests.loc[("a", "b")]
    assert row["p_vs0"] == pytest.approx(sps.ttest_ind(cross, base, equal_var=False).pvalue)
    assert row["p_vs1"] == pytest.approx(sps.ttest_ind(cross, self_, equal_var=False).pvalue)
    # One tested cell per family: BH leaves its p as it is.
    assert row["q_vs0"] == pytest.approx(row["p_vs0"]) and row["q_vs1"] == row["p_vs1"]
    assert row["cltm"] == pytest.approx(result.matrix.at["a", "b"])
    assert row["se"] == pytest.approx(result.se.at["a", "b"])
    assert row["direction"] == ("below 1" if row["differs_from_1"] else "")
    undefined = tests.loc[("b", "a")]
    assert undefined[["p_vs0", "q_vs0", "p_vs1", "q_vs1", "cltm"]].isna().all()
    assert not undefined["differs_from_0"] and not undefined["differs_from_1"]
    assert undefined["direction"] == ""


def test_paired_tests_against_scipy():
    rng = np.random.default_rng(12)
    diff = rng.normal(0.1, 0.05, (7, 4))
    expected = [sps.ttest_1samp(d, 0.0).pvalue for d in diff]
    assert st.paired_p(diff) == pytest.approx(expected, rel=1e-10)
    assert np.isnan(st.paired_p(np.full((1, 3), 0.2))).all()  # no spread: no p-value
    assert np.isnan(st.paired_p(np.ones((2, 1)))).all()  # one seed

    runs = make_runs(rng, LANGS[:3], np.array([0.2, 0.25, 0.3]), seeds=4, seed_sd=0.2)
    result = compute_cltm(runs, pair_seeds=True)
    cells = st.seed_cells(runs)
    assert st.pairing(cells, True) and not st.pairing(cells, False)
    tests = st.cell_tests(cells, 0.05, result, paired=True).set_index(["target", "donor"])
    score = runs.set_index(["target", "condition", "donor", "seed"])["score"].sort_index()
    for (t, d), row in tests.iterrows():
        cross, base, self_ = (score.loc[(t, c, dd)].sort_index().to_numpy()
                              for c, dd in (("cross", d), ("base", t), ("self", t)))
        assert row["p_vs0"] == pytest.approx(sps.ttest_rel(cross, base).pvalue, rel=1e-10)
        assert row["p_vs1"] == pytest.approx(sps.ttest_rel(cross, self_).pvalue, rel=1e-10)
        diff = self_ - base
        assert result.self_gain_se[t] == pytest.approx(diff.std(ddof=1) / 2.0)
    # Unpaired, the shared seed effect (SD 0.2 against 0.03 within a seed) swamps the gains.
    unpaired = compute_cltm(runs, pair_seeds=False)
    assert (unpaired.self_gain_se > 2 * result.self_gain_se).all()
    assert result.self_gain_se_paired and not unpaired.self_gain_se_paired


def test_seeds_that_differ_between_cells_are_not_paired(store, tmp_path):
    runs = make_runs(np.random.default_rng(13), LANGS[:3], np.array([0.2, 0.25, 0.3]), seeds=3)
    moved = (runs["target"] == "l0") & (runs["condition"] == "self") & (runs["seed"] == 2)
    runs.loc[moved, "seed"] = 7  # l0's self cell has seeds 0, 1, 7; every other 0, 1, 2
    cells = st.seed_cells(runs)
    assert cells.seeds is None and not st.pairing(cells, True)
    with pytest.raises(CltmError, match="same seeds"):
        st.cell_tests(cells, 0.05, paired=True)
    # compute_cltm pairs by the same rule: with one cell off, no self-gain SE is paired (l1's
    # base and self share all three seeds, yet get the unpaired SE); the stage says which
    # design it used.
    assert shared_seeds(runs) is None
    result = compute_cltm(runs, pair_seeds=True)
    assert not result.self_gain_se_paired
    for target in ("l0", "l1"):
        base, self_ = (runs[(runs["target"] == target) & (runs["condition"] == c)]["score"]
                       for c in ("base", "self"))
        assert result.self_gain_se[target] == pytest.approx(
            math.sqrt(base.var() / 3 + self_.var() / 3))
    run_cltm("gender", write_store(tmp_path / "runs", runs), tmp_path / "out", bootstrap=20,
             permutations=10)
    info = json.loads((tmp_path / "out" / layout.INFO_FILE).read_text())
    assert info["seed_design"] == "independent seeds"
    run_cltm("gender", store, tmp_path / "paired", bootstrap=20, permutations=10)
    info = json.loads((tmp_path / "paired" / layout.INFO_FILE).read_text())
    assert info["seed_design"] == "paired by seed" and info["seeds_per_cell"] == 4


def test_one_seed_gives_nan_tests_and_null_se_intervals():
    rng = np.random.default_rng(2)
    runs = make_runs(rng, LANGS[:3], np.array([0.2, 0.25, 0.3]), seeds=1)
    result = compute_cltm(runs, pair_seeds=False)
    cells = st.seed_cells(runs)
    tests = st.cell_tests(cells, 0.05, result)
    assert tests[["p_vs0", "p_vs1", "q_vs0", "q_vs1"]].isna().all().all()
    assert not tests["differs_from_1"].any()
    point = diagnostics(result.matrix, result.se, FAMILIES, self_gain=result.self_gain)
    ci, _ = st.diagnostic_intervals(cells, FAMILIES, point, replicates=50, level=0.9,
                                    rng=np.random.default_rng(0))
    assert ci["se_median"] == {"low": None, "high": None}  # one seed: no SE to resample
    assert ci["rms"] == {"low": point["rms"], "high": point["rms"]}  # nothing to resample


# --- the bootstrap ------------------------------------------------------------------------------


def _same(a: object, b: float) -> bool:
    return (a is None and math.isnan(b)) or (a is not None and a == pytest.approx(b))


def test_replicate_diagnostics_equal_diagnostics():
    rng = np.random.default_rng(4)
    gains = np.array([0.2, 0.3, -0.05, 0.25, 0.15, 0.2])  # l2 undefined
    runs = make_runs(rng, LANGS, gains, rng.uniform(-0.2, 0.4, (6, 6)), seeds=3)
    result = compute_cltm(runs, pair_seeds=False)
    cells = st.seed_cells(runs)
    rep = st.point_estimate(cells)
    np.testing.assert_allclose(rep.cltm[0], result.matrix.to_numpy(), equal_nan=True)
    np.testing.assert_allclose(rep.se[0], result.se.to_numpy(), equal_nan=True)
    for families in (FAMILIES, {"l0": "A"}):  # the second leaves intra_family_pos null
        d = diagnostics(result.matrix, result.se, families, self_gain=result.self_gain)
        got = st.replicate_diagnostics(rep, st.family_codes(cells.languages, families))
        for key in st.NUMERIC_KEYS:
            assert _same(d[key], got[key][0]), key


def test_bootstrap_covers_a_ones_matrix():
    """True CLTM all ones: every cross condition drawn as its self condition.

    rfd1, asym_rel and cos_rows sit on a boundary there (0, 0, 1) that noisy estimates never
    reach, and the percentile interval of such a distance sits above its noisy value too (the
    module docstring says so); the check is on the diagnostics whose true value is interior:
    rms (1), self_gain_mean (the planted mean), intra_family_pos (the same-family pair share,
    as every entry is equal). 8 seeds, as the bootstrap of very few seeds is known to be narrow:
    the variance of a resampled k-seed mean is (k − 1)/k of the usual estimate, which alone
    brings a nominal 95% down to about 93%; simulations give about 90% here.
    """
    rng = np.random.default_rng(11)
    gains = np.linspace(0.15, 0.3, 6)
    truth = {"rms": 1.0, "self_gain_mean": gains.mean(), "intra_family_pos": 12 / 30}
    reps = 80
    hits = {level: dict.fromkeys(truth, 0) for level in (0.95, 0.5)}
    discoveries = []
    for _ in range(reps):
        runs = make_runs(rng, LANGS, gains)
        cells = st.seed_cells(runs)
        point = st.replicate_diagnostics(st.point_estimate(cells),
                                         st.family_codes(LANGS, FAMILIES))
        point = {k: float(v[0]) for k, v in point.items()}
        boot = np.random.default_rng(int(rng.integers(2**32)))
        for level in hits:  # the same resamples for both levels
            ci, _ = st.diagnostic_intervals(cells, FAMILIES, point, replicates=300, level=level,
                                            rng=copy.deepcopy(boot))
            for key, value in truth.items():
                hits[level][key] += ci[key]["low"] <= value <= ci[key]["high"]
        tests = st.cell_tests(cells, 0.05)  # the CLTM from the seeds, as compute_cltm's
        discoveries.append(int(tests["differs_from_1"].sum()))
    for key in truth:
        # Nominal 0.95, about 0.90 expected (binomial sd 0.035 over 80): a band, not a number.
        assert 0.8 <= hits[0.95][key] / reps <= 1.0, (key, hits)
        # A 50% interval must miss about half the time: the intervals are not merely wide.
        assert 0.25 <= hits[0.5][key] / reps <= 0.75, (key, hits)
    # Under the global null BH at 0.05 makes at least one discovery in about 5% of the data
    # sets; allow a generous margin for the dependence between the cells of a row.
    assert np.mean(np.array(discoveries) > 0) <= 0.2, discoveries
    assert np.mean(discoveries) <= 0.5


def test_paired_bootstrap_covers_a_ones_matrix_under_a_seed_effect():
    """As above, with a shared seed effect 3x the within-seed noise: the paired bootstrap
    (whole seeds resampled) keeps the nominal coverage with intervals far narrower than the
    unpaired one, which counts the seed effect as noise in every difference."""
    rng = np.random.default_rng(14)
    gains = np.linspace(0.15, 0.3, 6)
    reps, hits, widths = 60, 0, {True: [], False: []}
    for _ in range(reps):
        cells = st.seed_cells(make_runs(rng, LANGS, gains, seed_sd=0.09))
        point = {"self_gain_mean": 0.0, "rms": 1.0}
        for paired in (True, False):
            ci, _ = st.diagnostic_intervals(cells, FAMILIES, point, replicates=300, level=0.95,
                                            rng=np.random.default_rng(int(rng.integers(2**32))),
                                            paired=paired)
            iv = ci["self_gain_mean"]
            widths[paired].append(iv["high"] - iv["low"])
            if paired:
                hits += iv["low"] <= gains.mean() <= iv["high"]
    assert 0.8 <= hits / reps <= 1.0, hits
    assert np.median(widths[True]) < 0.5 * np.median(widths[False]), widths


def test_bootstrap_follows_a_target_that_becomes_undefined():
    rng = np.random.default_rng(5)
    runs = make_runs(rng, LANGS[:4], np.array([0.2, 0.25, 0.0, 0.3]), seeds=4, sd=0.02)
    # l2's self-gain: +0.005, well within its seed noise (written out, not left to the draw).
    l2 = runs["target"] == "l2"
    runs.loc[l2 & (runs["condition"] == "base"), "score"] = [0.50, 0.52, 0.48, 0.51]
    runs.loc[l2 & (runs["condition"] == "self"), "score"] = [0.53, 0.49, 0.51, 0.50]
    result = compute_cltm(runs, pair_seeds=False)
    assert result.self_gain["l2"] == pytest.approx(0.005)
    point = diagnostics(result.matrix, result.se, FAMILIES, self_gain=result.self_gain)
    ci, info = st.diagnostic_intervals(st.seed_cells(runs), FAMILIES, point, replicates=400,
                                       level=0.9, rng=np.random.default_rng(0))
    share = info["all_defined_stayed_defined_share"]
    assert 0.05 < share < 0.95
    assert info["defined_share"]["l2"] == pytest.approx(share)
    assert ci["n_languages"] == {"low": 3.0, "high": 4.0}
    assert all(ci[k]["low"] <= ci[k]["high"] for k in ("rfd1", "cos_rows", "rms"))


# --- family structure ---------------------------------------------------------------------------


def _block_matrix(rng: np.random.Generator, labels: list[str], same: float,
                  cross: float) -> pd.DataFrame:
    langs = [f"x{k}" for k in range(len(labels))]
    grp = np.array(labels)
    c = np.where(grp[:, None] == grp[None, :], same, cross) + rng.normal(0, 0.1, (len(grp),) * 2)
    np.fill_diagonal(c, 1.0)
    return pd.DataFrame(c, index=langs, columns=langs)


def test_planted_family_blocks_are_found():
    rng = np.random.default_rng(6)
    labels = list("AAAABBBBCCCC")
    m = _block_matrix(rng, labels, same=0.9, cross=0.1)
    families = dict(zip(m.index, labels))
    fs = st.family_structure(m, families, family_level="genus", permutations=500,
                             rng=np.random.default_rng(0))
    assert list(fs) == list(st.FAMILY_KEYS)
    assert fs["contrast"] == pytest.approx(0.8, abs=0.1)
    assert fs["contrast_p"] == pytest.approx(1 / 501)
    assert fs["intra_family_pos_p"] == pytest.approx(1 / 501)
    assert abs(fs["contrast_chance"]) < 0.05
    assert fs["same_family_pair_share"] == pytest.approx(3 * 4 * 3 / (12 * 11))
    # Shuffling labels keeps family sizes: the permutation mean is the analytic share.
    assert fs["intra_family_pos_chance"] == pytest.approx(fs["same_family_pair_share"], abs=0.02)
    assert fs["n_families"] == 3 and fs["permutations"] == 500
    d = diagnostics(m, families=families)
    assert fs["intra_family_pos"] == pytest.approx(d["intra_family_pos"])


def test_rank_contrast_ignores_each_rows_scale():
    rng = np.random.default_rng(16)
    labels = list("AAAABBBBCCCC")
    m = _block_matrix(rng, labels, same=0.9, cross=0.1)
    families = dict(zip(m.index, labels))
    kw = {"family_level": "genus", "permutations": 500}
    fs = st.family_structure(m, families, rng=np.random.default_rng(0), **kw)
    assert fs["rank_contrast"] > 0.5 and fs["rank_contrast_p"] == pytest.approx(1 / 501)
    # A target with a tiny self-gain: its cells are the same gains over a denominator 40 times
    # smaller. The plain contrast moves; the ranks, and so the rank contrast and its p, do not.
    scaled = m.copy()
    scaled.loc["x0"] = 40 * scaled.loc["x0"]
    scaled.loc["x0", "x0"] = 1.0
    fs2 = st.family_structure(scaled, families, rng=np.random.default_rng(0), **kw)
    assert fs2["contrast"] != pytest.approx(fs["contrast"], abs=0.05)
    assert fs2["rank_contrast"] == pytest.approx(fs["rank_contrast"])
    assert fs2["rank_contrast_p"] == pytest.approx(fs["rank_contrast_p"])


def test_weighted_contrast_weighs_each_row_by_its_self_gain():
    rng = np.random.default_rng(18)
    labels = list("AAABBBCCC")
    m = _block_matrix(rng, labels, same=0.9, cross=0.1)
    families = dict(zip(m.index, labels))
    gain = pd.Series(rng.uniform(0.02, 0.08, len(labels)), index=m.index)
    kw = {"family_level": "genus", "permutations": 500}
    fs = st.family_structure(m, families, rng=np.random.default_rng(0), self_gain=gain, **kw)
    # by hand: the self-gain-weighted mean of the same-family cells minus that of the others
    same_num = same_den = cross_num = cross_den = 0.0
    for i, t in enumerate(m.index):
        for j, d in enumerate(m.columns):
            if i == j:
                continue
            if labels[i] == labels[j]:
                same_num, same_den = same_num + gain[t] * m.loc[t, d], same_den + gain[t]
            else:
                cross_num, cross_den = cross_num + gain[t] * m.loc[t, d], cross_den + gain[t]
    assert fs["weighted_contrast"] == pytest.approx(same_num / same_den - cross_num / cross_den)
    assert fs["weighted_contrast_p"] < 0.01
    assert abs(fs["weighted_contrast_chance"]) < 0.1
    # the same shuffles as without self-gains: the other statistics do not move
    bare = st.family_structure(m, families, rng=np.random.default_rng(0), **kw)
    assert bare["weighted_contrast"] is None and bare["weighted_contrast_p"] is None
    assert {k: fs[k] for k in ("contrast_p", "rank_contrast_p", "intra_family_pos_p")} == \
        {k: bare[k] for k in ("contrast_p", "rank_contrast_p", "intra_family_pos_p")}
    # a target with a self-gain 40 times smaller, its cells 40 times larger (the same raw
    # gains): it moves the plain contrast by units, the weighted one by a fraction of that
    scaled, small = m.copy(), gain.copy()
    scaled.loc["x0"] = 40 * scaled.loc["x0"]
    scaled.loc["x0", "x0"] = 1.0
    small["x0"] = gain["x0"] / 40
    fs2 = st.family_structure(scaled, families, rng=np.random.default_rng(0), self_gain=small,
                              **kw)
    moved = abs(fs2["contrast"] - fs["contrast"])
    assert moved > 1.0
    assert abs(fs2["weighted_contrast"] - fs["weighted_contrast"]) < 0.1 * moved


def test_weighted_contrast_draws_centre_on_the_data_and_drop_undefined_replicates():
    rng = np.random.default_rng(19)
    gains = np.array([0.08, 0.08, 0.08, 0.08, 0.004, 0.08])
    fam = np.array([k % 2 for k in range(len(LANGS))])
    cross = np.where(fam[:, None] == fam[None, :], 1.0, 0.2) * gains[:, None]
    runs = make_runs(rng, LANGS, gains, cross, seeds=8, sd=0.02)
    cells = st.seed_cells(runs)
    point, draws = st.weighted_contrast_draws(cells, FAMILIES, replicates=400,
                                              rng=np.random.default_rng(1), paired=True)
    result = compute_cltm(runs, pair_seeds=True)
    fs = st.family_structure(result.matrix, FAMILIES, family_level="genus", permutations=0,
                             rng=np.random.default_rng(0), self_gain=result.self_gain)
    assert point == pytest.approx(fs["weighted_contrast"])
    assert draws.shape == (400,)
    # l4's self-gain (0.004 against seed noise 0.02) is not positive in some replicates: those
    # are NaN, the rest spread around the data's value
    assert 0 < np.isnan(draws).sum() < 400
    finite = draws[np.isfinite(draws)]
    assert np.quantile(finite, 0.05) < point < np.quantile(finite, 0.95)
    assert st.weighted_contrast_draws(cells, None, replicates=10, rng=np.random.default_rng(1),
                                      paired=True)[0] is None


def test_donor_ranks_match_a_sort():
    rng = np.random.default_rng(17)
    c = rng.normal(size=(5, 5))
    c[1, 3] = c[1, 4]  # a tie
    np.fill_diagonal(c, 0.0)
    r = st.donor_ranks(c)
    assert np.all(np.diag(r) == 0)
    for i in range(5):
        donors = [j for j in range(5) if j != i]
        order = sorted(donors, key=lambda j: c[i, j])
        assert r[i, order[0]] == 0 and r[i, order[-1]] == 1
    assert r[1, 3] == r[1, 4]  # tied donors share their average rank
    assert r.sum(axis=1) == pytest.approx(np.full(5, 2.0))  # ranks 0, 1/3, 2/3, 1 per row


def test_unrelated_labels_give_uniform_p():
    rng = np.random.default_rng(7)
    labels = list("AAAABBBBCCCC")
    ps = []
    for _ in range(40):
        m = _block_matrix(rng, labels, same=0.5, cross=0.5)  # no structure at all
        fs = st.family_structure(m, dict(zip(m.index, labels)), family_level="genus",
                                 permutations=200, rng=rng)
        ps.append((fs["contrast_p"], fs["rank_contrast_p"]))
    for p in np.array(ps).T:
        assert 0.3 <= p.mean() <= 0.7, p
        assert np.mean(p < 0.05) <= 0.2, p


def test_family_structure_nulls():
    rng = np.random.default_rng(8)
    m = _block_matrix(rng, list("AABB"), same=0.9, cross=0.1)
    kw = {"family_level": "genus", "permutations": 50, "rng": rng}
    uncovered = st.family_structure(m, {"x0": "A", "x1": "A", "x2": "B"}, **kw)
    assert uncovered["contrast"] is None and uncovered["n_families"] is None
    one = st.family_structure(m, dict.fromkeys(m.index, "A"), **kw)
    assert one["contrast"] is None and one["n_families"] == 1
    singletons = st.family_structure(m, dict(zip(m.index, "ABCD")), **kw)
    assert singletons["contrast"] is None and singletons["n_families"] == 4
    off = st.family_structure(m, dict(zip(m.index, "AABB")), family_level="genus",
                              permutations=0, rng=rng)
    assert off["contrast"] is not None and off["same_family_pair_share"] == pytest.approx(1 / 3)
    assert off["contrast_p"] is None and off["intra_family_pos_chance"] is None


# --- the stage: files, determinism, plots, report ------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    rng = np.random.default_rng(9)
    gains = np.array([0.2, 0.3, -0.05, 0.25, 0.15, 0.2])  # l2 undefined
    cross = gains[:, None] * rng.uniform(-0.5, 1.6, (6, 6))
    root = tmp_path_factory.mktemp("runs")
    return write_store(root / "gender", make_runs(rng, LANGS, gains, cross, seeds=4))


def _families_csv(directory: Path) -> Path:
    path = directory / "families.csv"
    path.write_text("locale,family\n" + "".join(f"{k},{v}\n" for k, v in FAMILIES.items()))
    return path


def test_stage_writes_stats_and_keeps_diagnostics(store, tmp_path):
    fam = _families_csv(tmp_path)
    plain = run_cltm("gender", store, tmp_path / "off", families_csv=fam, bootstrap=0,
                     permutations=0)
    diag = run_cltm("gender", store, tmp_path / "on", families_csv=fam, bootstrap=200,
                    permutations=300)
    on, off = tmp_path / "on", tmp_path / "off"
    assert diag == plain
    assert (on / "diagnostics.json").read_bytes() == (off / "diagnostics.json").read_bytes()
    assert list(json.loads((on / "diagnostics.json").read_text())) == list(KEYS)
    for name in STATS_FILES:
        assert (on / name).is_file() and (off / name).is_file(), name

    tests = pd.read_csv(on / "cltm_significance.csv")
    assert list(tests.columns) == list(st.SIGNIFICANCE_COLUMNS) and len(tests) == 30
    assert tests.loc[tests["target"] == "l2", "p_vs1"].isna().all()
    ci = json.loads((on / "diagnostics_ci.json").read_text())
    assert list(ci) == [k for k in KEYS if k != "undefined_targets"]
    assert all(ci[k]["low"] <= ci[k]["high"] for k in ci if ci[k]["low"] is not None)
    assert ci["intra_family_pos"]["low"] is not None
    fs = json.loads((on / "family_structure.json").read_text())
    assert list(fs) == [*st.FAMILY_KEYS, "family_test"] and fs["contrast_p"] is not None
    # the verdict the report and the calibration read, computed here once
    assert fs["family_test"] == st.family_verdict(fs)
    assert fs["family_test"]["families_found"] == st.families_found(*st.family_test(fs))

    # Switched off: the files exist, with nulls where the resampling would be.
    ci_off = json.loads((off / "diagnostics_ci.json").read_text())
    assert all(v == {"low": None, "high": None} for v in ci_off.values())
    fs_off = json.loads((off / "family_structure.json").read_text())
    assert fs_off["contrast_p"] is None and fs_off["permutations"] == 0


def test_same_seed_same_files(store, tmp_path):
    outs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        run_cltm("gender", store, tmp_path / name, bootstrap=100, permutations=100,
                 stats_seed=seed, families_csv=_families_csv(tmp_path))
        outs.append({f: (tmp_path / name / f).read_bytes() for f in STATS_FILES})
    assert outs[0] == outs[1]
    assert outs[0]["diagnostics_ci.json"] != outs[2]["diagnostics_ci.json"]
    assert outs[0]["cltm_significance.csv"] == outs[2]["cltm_significance.csv"]  # no randomness


def test_heatmap_marks_are_drawn(tmp_path):
    locs = ["es", "it", "de"]
    m = pd.DataFrame([[1.0, 1.4, 0.2], [0.5, 1.0, 0.9], [0.1, 0.3, 1.0]], index=locs,
                     columns=locs)
    marks = pd.DataFrame(0.0, index=locs, columns=locs)
    marks.loc["es", "it"], marks.loc["es", "de"] = 1.0, -1.0
    common = {"families": {}, "names": {}}
    plot_heatmap(m, tmp_path / "plain.png", **common)
    plot_heatmap(m, tmp_path / "marked.png", marks=marks, marks_note="+ / −: differs", **common)
    assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "marked.png").read_bytes()
    drawn = plot_highlight(m, tmp_path / "hl.png", ["es", "it"], marks=marks, **common)
    assert drawn == ["es", "it"] and (tmp_path / "hl.png").stat().st_size > 5000


def test_report_has_the_trust_section(store, tmp_path):
    root = tmp_path / "metrics"
    run_cltm("gender", store, root / "gender", families_csv=_families_csv(tmp_path),
             bootstrap=100, permutations=100)
    run_report(root, root / "curves", root / "contrasts", root / "report.md", paper_tasks(),
               paper_contrasts(), null_control=False, planted=False)
    text = (root / "report.md").read_text()
    assert "### Can these numbers be trusted?" in text
    assert "| target | self-gain | SE | gain / SE | defined |" in text
    assert "| key | value | low | high |" in text and "| `rfd1` |" in text
    assert "testable differ from 0" in text and "testable differ from 1" in text
    assert "two-sided permutation p" in text and "share of same-family pairs" in text
    assert "| metric | gender | gender (paper) |" in text  # what was there stays
    # A value outside its own interval is marked and explained; one inside is not.
    d = json.loads((root / "gender" / "diagnostics.json").read_text())
    ci = json.loads((root / "gender" / "diagnostics_ci.json").read_text())
    ci = {k: {"low": d[k] - 1, "high": d[k] + 1} for k in ci if d.get(k) is not None}
    ci["rfd1"] = {"low": d["rfd1"] + 1, "high": d["rfd1"] + 2}
    (root / "gender" / "diagnostics_ci.json").write_text(json.dumps(ci))
    run_report(root, root / "curves", root / "contrasts", root / "report.md", paper_tasks(),
               paper_contrasts(), null_control=False, planted=False)
    text = (root / "report.md").read_text()
    assert "| `rfd1` † |" in text and "† The value lies outside its own interval" in text
    assert "| `cos_rows` |" in text and text.count(" † |") == 1


#: Where _report's contrast stage writes, relative to its root (dvc.yaml's layout).
CONTRAST_FILE = Path("contrasts") / "speaker-gender.json"
CONTRAST_FIGURE = Path("contrasts") / "speaker-gender.png"


def _report(root: Path, name: str, runs_dir: Path | None = None, planted: bool = False) -> str:
    """The contrast stage, then the report, as dvc.yaml runs them (the contrast's JSON and
    figure under `root/contrasts`); returns the report's text."""
    run_contrast("gender", "speaker", root, runs_dir or root / "no-runs-here",
                 root / CONTRAST_FILE, root / CONTRAST_FIGURE)
    run_report(root, root / "curves", root / "contrasts", root / name, paper_tasks(),
               paper_contrasts(), null_control=False, planted=planted)
    return (root / name).read_text()


def _headline(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"- `{key}`"))


def test_report_states_the_headline_contrast_and_the_planted_check(tmp_path):
    """Two tasks from synthetic seeds: gender near a CLTM of ones, speaker with planted family
    blocks (same family 1.0, other families 0.2). The report must find the difference
    speaker − gender with an interval that excludes 0 in the paper's direction, keep each
    task's own interval, write contrast.json, and find the speaker families with p < 0.05."""
    rng = np.random.default_rng(21)
    langs = [f"l{k}" for k in range(8)]
    families = {loc: "ABCD"[k // 2] for k, loc in enumerate(langs)}
    gains = np.full(8, 0.2)
    same = np.equal.outer([families[t] for t in langs], [families[t] for t in langs])
    blocks = np.where(same, 1.0, 0.2) * gains[:, None]
    root, runs_dir = tmp_path / "metrics", tmp_path / "runs"
    fam_csv = tmp_path / "families.csv"
    fam_csv.write_text("locale,family\n" + "".join(f"{k},{v}\n" for k, v in families.items()))
    runs = {}
    for task, cross in (("gender", None), ("speaker", blocks)):
        runs[task] = make_runs(rng, langs, gains, cross, seeds=4, sd=0.01)
        store = write_store(runs_dir / task, runs[task], task)
        run_cltm(task, store, root / task, families_csv=fam_csv, bootstrap=200,
                 permutations=500)
    text = _report(root, "report.md", runs_dir, planted=True)
    assert "## Contrast speaker-gender: speaker − gender" in text
    contrast = json.loads((root / CONTRAST_FILE).read_text())
    assert (contrast["a"], contrast["b"], contrast["bootstrap"]) == ("gender", "speaker", 200)
    assert contrast["seed_design"] == {"gender": st.PAIRED_DESIGN, "speaker": st.PAIRED_DESIGN}
    diags = {t: json.loads((root / t / "diagnostics.json").read_text()) for t in runs}
    for key, way in (("rfd1", "higher"), ("cos_rows", "lower")):
        d = contrast["diagnostics"][key]
        # The points are the cltm stage's; the difference is B − A = speaker − gender.
        assert (d["a"], d["b"]) == (diags["gender"][key], diags["speaker"][key])
        assert d["difference"] == pytest.approx(d["b"] - d["a"], abs=2e-6)
        assert d["excludes_zero"] and (d["low"] > 0 if way == "higher" else d["high"] < 0)
        line = _headline(text, key)
        assert f"speaker − gender = {d['difference']:.3f}" in line
        assert f"[{d['low']:.3f}, {d['high']:.3f}]" in line
        assert line.endswith("excludes 0: gender is nearer the language-agnostic ideal, as "
                             "expected (gender)")
        for task in runs:  # each task's own interval stays on the line
            ci = json.loads((root / task / "diagnostics_ci.json").read_text())[key]
            assert f"{task} {diags[task][key]:.3f} [{ci['low']:.3f}, {ci['high']:.3f}]" in line
    assert "seeds_needed.py" not in text  # every difference excludes 0: no advice to add seeds
    assert "![contrast speaker-gender](contrasts/speaker-gender.png)" in text
    figure = (root / CONTRAST_FIGURE).read_bytes()
    assert len(figure) > 10_000
    assert "- gender: 8 of 8 self-gains positive (no undefined row)" in text
    planted = next(line for line in text.splitlines() if "planted genera in the speaker" in line)
    assert "detected; same-genus donors transfer more than others" in planted
    # The same files without the planted flag: the contrast stays, the demo check goes.
    plain = _report(root, "plain.md", runs_dir)
    assert "## Contrast speaker-gender" in plain and "planted genera" not in plain
    assert _headline(plain, "rfd1") == _headline(text, "rfd1")
    # No run stores where the contrast stage looks: no interval of the difference, and no
    # stale numbers in its file, only the reason.
    nostore = _report(root, "nostore.md")
    assert "no interval of the difference (the run stores could not be read" in _headline(
        nostore, "rfd1")
    assert "diagnostics" not in json.loads((root / CONTRAST_FILE).read_text())

    # Tasks swapped (their metrics and their stores): the verdict turns.
    swapped, swapped_runs = tmp_path / "swapped", tmp_path / "swapped_runs"
    shutil.copytree(root / "gender", swapped / "speaker")
    shutil.copytree(root / "speaker", swapped / "gender")
    write_store(swapped_runs / "gender", runs["speaker"], "gender")
    write_store(swapped_runs / "speaker", runs["gender"], "speaker")
    text = _report(swapped, "report.md", swapped_runs, planted=True)
    assert (swapped / CONTRAST_FIGURE).read_bytes() != figure  # the tasks' rows swapped
    for key in ("rfd1", "cos_rows"):
        assert _headline(text, key).endswith(
            "excludes 0: speaker is nearer the language-agnostic ideal, NOT as expected "
            "(gender)")
    assert "seeds_needed.py" not in text
    planted = next(line for line in text.splitlines() if "planted genera in the speaker" in line)
    assert planted.endswith("not detected")

    # One truth for both tasks (speaker's runs under both names): the difference is 0 and its
    # interval covers it, whatever the two tasks' own intervals; the pointer to more seeds.
    equal, equal_runs = tmp_path / "equal", tmp_path / "equal_runs"
    for task in runs:
        shutil.copytree(root / "speaker", equal / task)
        write_store(equal_runs / task, runs["speaker"], task)
    text = _report(equal, "report.md", equal_runs)
    for key in ("rfd1", "cos_rows"):
        d = json.loads((equal / CONTRAST_FILE).read_text())["diagnostics"][key]
        assert d["difference"] == 0.0 and d["low"] < 0 < d["high"] and not d["excludes_zero"]
        assert "speaker − gender = 0.000" in _headline(text, key)
        assert _headline(text, key).endswith(report_mod.COVERS_ZERO)
    assert "`benchmarks/seeds_needed.py` projects" in text


def test_run_diagnostics_family_test_only(store, tmp_path):
    out = tmp_path / "stage"
    fam = _families_csv(tmp_path)
    run_cltm("gender", store, out, families_csv=fam, bootstrap=0, permutations=300)
    plain = run_diagnostics(out / "cltm.csv", out / "cltm_se.csv", "genus", None,
                            families_csv=fam, permutations=0, stats_seed=0)
    with_test = run_diagnostics(out / "cltm.csv", out / "cltm_se.csv", "genus", None,
                                families_csv=fam, permutations=300,
                                family_json=tmp_path / "fs.json", stats_seed=0)
    assert with_test == plain
    # Same matrix, seed and permutations: the same result as the stage's.
    assert (tmp_path / "fs.json").read_text() == (out / "family_structure.json").read_text()


# --- the noise floor: what seed noise alone makes of the diagnostics ------------------------------


def test_null_cells_move_cross_means_to_self_and_keep_the_spread():
    rng = np.random.default_rng(3)
    gains = np.linspace(0.1, 0.3, 6)
    cross = rng.uniform(-0.2, 0.4, (6, 6))
    cells = st.seed_cells(make_runs(rng, LANGS, gains, cross))
    null = st.null_cells(cells)
    mean, var = st._moments(cells.values, cells.counts)
    nmean, nvar = st._moments(null.values, null.counts)
    for i in range(6):
        for j in range(6):
            if i != j:
                row = cells.cross[i, j]
                assert nmean[row] == pytest.approx(mean[cells.self_[i]])
                assert nvar[row] == pytest.approx(var[row])
    assert np.allclose(st.point_estimate(null).cltm[0], 1.0)


def test_noise_floor_covers_a_ones_matrix_and_not_a_structured_one():
    rng = np.random.default_rng(5)
    gains = np.linspace(0.15, 0.3, 6)
    inside = 0
    reps = 30
    for _ in range(reps):
        cells = st.seed_cells(make_runs(rng, LANGS, gains, sd=0.03))
        observed = float(st.replicate_diagnostics(st.point_estimate(cells),
                                                  st.family_codes(LANGS, None))["rfd1"][0])
        floor = st.noise_floor(cells, None, replicates=200, level=0.95,
                               rng=np.random.default_rng(int(rng.integers(2**32))))
        inside += floor["rfd1"]["low"] <= observed <= floor["rfd1"]["high"]
    assert inside / reps >= 0.8  # a ones matrix looks like noise
    structured = np.repeat(gains[:, None], 6, axis=1) * np.where(
        np.add.outer(range(6), range(6)) % 2 == 0, 1.0, 0.2)
    cells = st.seed_cells(make_runs(rng, LANGS, gains, structured, sd=0.03))
    observed = float(st.replicate_diagnostics(st.point_estimate(cells),
                                              st.family_codes(LANGS, None))["rfd1"][0])
    floor = st.noise_floor(cells, None, replicates=200, level=0.95,
                           rng=np.random.default_rng(0))
    assert observed > 2 * floor["rfd1"]["high"]


# --- the difference between two results ---------------------------------------------------------


def _seed_table(runs: pd.DataFrame, langs: list[str]) -> tuple[np.ndarray, ...]:
    """base, self (n, k) and cross (n, n, k; NaN on the diagonal) seed scores, seeds sorted."""
    wide = runs.pivot_table(index=["target", "condition", "donor"], columns="seed",
                            values="score").sort_index(axis=1)
    k = wide.shape[1]
    base = np.stack([wide.loc[(t, "base", t)].to_numpy() for t in langs])
    self_ = np.stack([wide.loc[(t, "self", t)].to_numpy() for t in langs])
    cross = np.stack([[wide.loc[(t, "cross", d)].to_numpy() if d != t else np.full(k, np.nan)
                       for d in langs] for t in langs])
    return base, self_, cross


def _rfd1_and_cos(table: tuple[np.ndarray, ...], pick: np.ndarray) -> tuple[float, float]:
    """rfd1 and cos_rows of the CLTM of the seeds `pick` (columns, with repeats), written out
    from the definitions; every row must be defined."""
    base, self_, cross = table
    b, c, a = base[:, pick].mean(1), self_[:, pick].mean(1), cross[:, :, pick].mean(2)
    assert (c > b).all()
    m = (a - b[:, None]) / (c - b)[:, None]
    np.fill_diagonal(m, 1.0)
    n = len(m)
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    return float(np.linalg.norm(m - 1.0) / n), float((unit @ unit.T)[~np.eye(n, dtype=bool)].mean())


def test_difference_of_a_planted_contrast_excludes_zero_with_its_sign():
    """Task A near a CLTM of ones, task B with planted family blocks (same family 1, other
    families 0.2), 8 seeds: B − A is far from 0 on rfd1 (up), cos_rows (down) and
    intra_family_pos (up). The points are checked against compute_cltm + diagnostics, and the
    interval against a bootstrap written out by hand with the documented draws (each replicate
    k seeds with replacement, taken in every cell; A's replicates drawn before B's)."""
    rng = np.random.default_rng(31)
    gains = np.linspace(0.2, 0.3, 6)
    labels = [FAMILIES[t] for t in LANGS]
    blocks = np.where(np.equal.outer(labels, labels), 1.0, 0.2) * gains[:, None]
    runs_a = make_runs(rng, LANGS, gains, seeds=8)
    runs_b = make_runs(rng, LANGS, gains, blocks, seeds=8)
    keys = ("rfd1", "cos_rows", "intra_family_pos", "prop_pos")
    reps, boot = 60, np.random.default_rng(5)
    diff = st.difference_intervals(st.seed_cells(runs_a), st.seed_cells(runs_b), FAMILIES,
                                   keys=keys, replicates=reps, ci_level=0.9,
                                   rng=copy.deepcopy(boot), pair_seeds=True)
    assert list(diff) == list(keys)
    points = []
    for runs in (runs_a, runs_b):
        result = compute_cltm(runs, pair_seeds=True)
        points.append(diagnostics(result.matrix, result.se, FAMILIES,
                                  self_gain=result.self_gain))
    for key in keys:
        assert diff[key]["a"] == pytest.approx(points[0][key], abs=1e-12)
        assert diff[key]["b"] == pytest.approx(points[1][key], abs=1e-12)
        assert diff[key]["difference"] == pytest.approx(points[1][key] - points[0][key],
                                                        abs=1e-12)
        assert diff[key]["replicates_used"] == reps and diff[key]["replicates_dropped"] == 0
    assert diff["rfd1"]["low"] > 0 and diff["rfd1"]["excludes_zero"] is True
    assert diff["cos_rows"]["high"] < 0 and diff["cos_rows"]["excludes_zero"] is True
    assert diff["intra_family_pos"]["low"] > 0 and diff["intra_family_pos"]["excludes_zero"]

    k = 8
    picks = [(boot.random((reps, 1, k)) * k).astype(int)[:, 0] for _ in range(2)]
    by_hand = [np.array([_rfd1_and_cos(_seed_table(runs, LANGS), p) for p in side])
               for runs, side in zip((runs_a, runs_b), picks, strict=True)]
    differences = by_hand[1] - by_hand[0]
    for col, key in enumerate(("rfd1", "cos_rows")):
        low, high = np.quantile(differences[:, col], [0.05, 0.95])
        assert diff[key]["low"] == pytest.approx(low, rel=1e-9)
        assert diff[key]["high"] == pytest.approx(high, rel=1e-9)


def test_difference_of_two_results_of_one_truth_covers_zero():
    """Both results drawn from one structured truth (not all ones, so that no diagnostic sits
    on its boundary), with their own noise: the difference's interval covers 0 in nearly every
    repetition (8 seeds: the bootstrap's known narrowness leaves about 90% coverage)."""
    rng = np.random.default_rng(32)
    gains = np.linspace(0.15, 0.3, 6)
    cross = gains[:, None] * rng.uniform(0.3, 1.3, (6, 6))
    reps, covers = 12, {"rfd1": 0, "cos_rows": 0}
    for _ in range(reps):
        a, b = (st.seed_cells(make_runs(rng, LANGS, gains, cross, seeds=8)) for _ in range(2))
        diff = st.difference_intervals(a, b, None, keys=tuple(covers), replicates=200,
                                       ci_level=0.95, pair_seeds=True,
                                       rng=np.random.default_rng(int(rng.integers(2**32))))
        for key, d in diff.items():
            inside = d["low"] <= 0 <= d["high"]
            assert d["excludes_zero"] is (not inside)
            assert d["low"] <= d["difference"] <= d["high"] or not inside
            covers[key] += inside
    assert all(c >= reps - 2 for c in covers.values()), covers


def test_difference_without_a_defined_point_has_no_interval():
    rng = np.random.default_rng(33)
    langs = LANGS[:4]
    # A: one language learns, three do not: a single defined row has no row cosine.
    cells_a = st.seed_cells(make_runs(rng, langs, np.array([0.3, -0.2, -0.2, -0.3]), seeds=4,
                                      sd=0.01))
    runs_b = make_runs(rng, langs, np.full(4, 0.3), seeds=4, sd=0.01)
    cells_b = st.seed_cells(runs_b)
    keys = ("rfd1", "cos_rows", "intra_family_pos")
    diff = st.difference_intervals(cells_a, cells_b, None, keys=keys, replicates=50,
                                   ci_level=0.95, rng=np.random.default_rng(0), pair_seeds=True)
    cos = diff["cos_rows"]
    assert cos["a"] is None and cos["difference"] is None
    assert cos["low"] is None and cos["high"] is None and cos["excludes_zero"] is None
    result = compute_cltm(runs_b, pair_seeds=False)
    assert cos["b"] == pytest.approx(diagnostics(result.matrix, result.se)["cos_rows"])
    # No families: intra_family_pos undefined in both results and in every replicate.
    fam = diff["intra_family_pos"]
    assert fam["low"] is None and fam["replicates_used"] == 0 and fam["replicates_dropped"] == 50
    # rfd1 is defined on the single row (0: a 1 x 1 CLTM of one) and keeps its interval.
    assert diff["rfd1"]["a"] == 0.0 and diff["rfd1"]["low"] is not None
    # No bootstrap: the point difference alone.
    off = st.difference_intervals(cells_a, cells_b, None, keys=keys, replicates=0,
                                  ci_level=0.95, rng=np.random.default_rng(0), pair_seeds=True)
    assert off["rfd1"]["difference"] == diff["rfd1"]["difference"]
    assert off["rfd1"]["low"] is None and off["rfd1"]["replicates_used"] == 0
    with pytest.raises(CltmError, match="no bootstrap of"):
        st.difference_intervals(cells_a, cells_b, None, keys=("undefined_targets",),
                                replicates=5, ci_level=0.95, rng=np.random.default_rng(0),
                                pair_seeds=True)


def test_difference_drops_and_counts_undefined_replicates():
    """A's second language learns by +0.005 against a seed spread of 0.02: resamples where its
    self-gain is not positive leave one row, no row cosine, and are dropped from cos_rows'
    difference; their number is counted by hand from the same draws."""
    rng = np.random.default_rng(34)
    langs = LANGS[:2]
    runs_a = make_runs(rng, langs, np.array([0.3, 0.0]), seeds=4, sd=0.02)
    l1 = runs_a["target"] == "l1"
    runs_a.loc[l1 & (runs_a["condition"] == "base"), "score"] = [0.50, 0.52, 0.48, 0.51]
    runs_a.loc[l1 & (runs_a["condition"] == "self"), "score"] = [0.53, 0.49, 0.51, 0.50]
    cells_b = st.seed_cells(make_runs(rng, langs, np.full(2, 0.3), seeds=4, sd=0.01))
    reps, boot = 100, np.random.default_rng(8)
    diff = st.difference_intervals(st.seed_cells(runs_a), cells_b, None, keys=("cos_rows",),
                                   replicates=reps, ci_level=0.9, rng=copy.deepcopy(boot),
                                   pair_seeds=True)
    pick = (boot.random((reps, 1, 4)) * 4).astype(int)[:, 0]
    base, self_, _ = _seed_table(runs_a, langs)
    gain = self_[1][pick].mean(1) - base[1][pick].mean(1)
    dropped = int((gain <= 0).sum())
    assert 0 < dropped < reps
    d = diff["cos_rows"]
    assert d["replicates_dropped"] == dropped and d["replicates_used"] == reps - dropped
    assert d["a"] is not None and d["low"] is not None


def test_difference_summary_is_reproducible_and_json_ready():
    rng = np.random.default_rng(35)
    a, b = (st.seed_cells(make_runs(rng, LANGS[:4], np.full(4, 0.25), seeds=4))
            for _ in range(2))
    written = []
    for seed in (3, 3, 4):
        out = st.difference_summary(a, b, labels=("gender", "speaker"), keys=HEADLINE_KEYS,
                                    replicates=50, ci_level=0.95, stats_seed=seed,
                                    pair_seeds=True)
        assert json.loads(json.dumps(out)) == out
        written.append(json.dumps(out))
    assert written[0] == written[1] and written[0] != written[2]
    assert (out["a"], out["b"], out["difference"]) == ("gender", "speaker", "speaker - gender")
    assert out["seed_design"] == {"gender": st.PAIRED_DESIGN, "speaker": st.PAIRED_DESIGN}
    assert list(out["diagnostics"]) == ["rfd1", "cos_rows"]
    direct = st.difference_intervals(a, b, None, keys=("rfd1", "cos_rows"), replicates=50,
                                     ci_level=0.95, rng=st.contrast_stream(4), pair_seeds=True)
    for key, d in out["diagnostics"].items():
        assert set(d) == {"a", "b", "difference", "low", "high", "excludes_zero",
                          "replicates_used", "replicates_dropped"}
        for field in ("a", "b", "difference", "low", "high"):
            assert d[field] == pytest.approx(direct[key][field], abs=1e-6)


def test_the_ones_verdict_joins_the_parts_it_could_judge():
    v = st.ones_verdict(2, 28, 0.05, {"low": 0.1, "high": 0.5}, {"mean": 0.3}, 0.5)
    assert v["cells_allowed"] == pytest.approx(1.4)
    assert (v["cells_consistent"], v["rfd1_covers_noise"], v["no_family_structure"]) == (
        False, True, True)
    assert v["consistent"] is False
    v = st.ones_verdict(1, 28, 0.05, None, None, None)
    assert (v["rfd1_covers_noise"], v["no_family_structure"], v["consistent"]) == (
        None, None, True)
    assert st.ones_verdict(0, 28, 0.05, {"low": 0.4, "high": 0.5}, {"mean": 0.3},
                           0.01)["consistent"] is False


def test_run_health_gives_the_limit_and_its_verdict():
    from cltm.analysis.cltm import DEGENERATE_LIMIT, run_health

    runs = pd.DataFrame({"score": [0.9] * 19 + [0.4], "condition": "base", "seed": range(20)})
    h = run_health(runs, runs["score"] <= 0.5, "runs at chance")
    assert h["limit"] == DEGENERATE_LIMIT and h["degenerate_share"] == pytest.approx(0.05)
    assert h["within_limit"] is True
    assert run_health(runs, runs["score"] <= 0.95, "runs below 0.95")["within_limit"] is False
