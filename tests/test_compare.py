"""`cltm compare A B` (analysis/compare.py) on synthetic run stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cltm.analysis import compare as cp
from cltm.analysis import stats as st
from cltm.analysis.cltm import compute_cltm
from cltm.analysis.diagnostics import diagnostics
from cltm.cli import main
from cltm.errors import CltmError
from cltm.stages.compare import default_labels, run_compare
from tests.conftest import analysis_config
from tests.test_stats import FAMILIES, LANGS, _seed_table, make_runs, write_store

GAINS = np.linspace(0.2, 0.3, 6)


def _diag(runs: pd.DataFrame, families: dict | None = FAMILIES) -> dict:
    """Table 1 of a run table, computed directly (compute_cltm + diagnostics)."""
    result = compute_cltm(runs, pair_seeds=True)
    return diagnostics(result.matrix, result.se, families, self_gain=result.self_gain)


def _covers(d: dict) -> bool:
    return d["low"] <= 0 <= d["high"]


def test_planted_difference_is_found_with_its_sign():
    """A's cross runs gain 30% of the self-gain, B's 90% (B's cross cells moved toward the
    self runs): B is nearer the ideal, so rfd1 falls and cos_rows rises, beyond noise, and every
    cell's difference is found. Points against diagnostics.py directly; the intervals against
    stats.difference_intervals with the same generator; one cell's test written out by hand."""
    rng = np.random.default_rng(41)
    k, reps, seed = 8, 200, 3
    runs_a = make_runs(rng, LANGS, GAINS, np.outer(GAINS, np.full(6, 0.3)), seeds=k)
    runs_b = make_runs(rng, LANGS, GAINS, np.outer(GAINS, np.full(6, 0.9)), seeds=k)
    out = cp.compare_runs(runs_a, runs_b, labels=("far", "near"), families=FAMILIES,
                          settings=analysis_config(bootstrap=reps, ci_level=0.95, fdr=0.05,
                                                   stats_seed=seed, pair_seeds=True))
    diag = out.summary["diagnostics"]
    assert list(diag) == list(st.NUMERIC_KEYS)
    direct = [_diag(runs_a), _diag(runs_b)]
    for key, d in diag.items():
        if direct[0][key] is None:
            assert d["a"] is None and d["difference"] is None
            continue
        assert d["a"] == pytest.approx(direct[0][key], abs=1e-12)
        assert d["b"] == pytest.approx(direct[1][key], abs=1e-12)
        assert d["difference"] == pytest.approx(direct[1][key] - direct[0][key], abs=1e-12)
    assert diag["rfd1"]["difference"] < 0 and diag["rfd1"]["high"] < 0
    assert diag["rfd1"]["excludes_zero"] is True
    assert diag["cos_rows"]["difference"] > 0 and diag["cos_rows"]["low"] > 0
    assert diag["cos_rows"]["excludes_zero"] is True
    for side in ("a", "b"):  # each result's own interval holds its value here
        assert diag["rfd1"][f"{side}_low"] <= diag["rfd1"][side] <= diag["rfd1"][f"{side}_high"]

    # The same draws as the report's contrast (difference_intervals, contrast_stream).
    same = st.difference_intervals(st.seed_cells(runs_a), st.seed_cells(runs_b), FAMILIES,
                                   keys=st.NUMERIC_KEYS, replicates=reps, ci_level=0.95,
                                   rng=st.contrast_stream(seed), pair_seeds=True)
    for key, d in same.items():
        for field in ("low", "high", "replicates_used", "replicates_dropped"):
            assert diag[key][field] == d[field], (key, field)

    cells = out.cells
    assert len(cells) == 30 and cells["significant"].all()
    assert (cells["difference"] > 0).all() and (cells["low"] > 0).all()
    assert out.summary["cells"]["significant"] == 30

    # Cell (l2, l4) by hand: the documented paired draws (k seeds with replacement, taken in
    # every cell; A's replicates before B's), the cell's CLTM in each, B − A per replicate.
    boot = st.contrast_stream(seed)
    picks = [(boot.random((reps, 1, k)) * k).astype(int)[:, 0] for _ in range(2)]
    t, dn = LANGS.index("l2"), LANGS.index("l4")
    per_rep = []
    for runs, pick in zip((runs_a, runs_b), picks, strict=True):
        base, self_, cross = _seed_table(runs, LANGS)
        b, c, a = base[t][pick].mean(1), self_[t][pick].mean(1), cross[t, dn][pick].mean(1)
        per_rep.append((a - b) / (c - b))
    d = per_rep[1] - per_rep[0]
    row = cells.set_index(["target", "donor"]).loc[("l2", "l4")]
    low, high = np.quantile(d, [0.025, 0.975])
    assert row["low"] == pytest.approx(low, rel=1e-9)
    assert row["high"] == pytest.approx(high, rel=1e-9)
    p = min(1.0, 2 * min(1 + (d <= 0).sum(), 1 + (d >= 0).sum()) / (1 + reps))
    assert row["p"] == pytest.approx(p)
    matrices = [compute_cltm(r, pair_seeds=False).matrix for r in (runs_a, runs_b)]
    assert row["difference"] == pytest.approx(matrices[1].at["l2", "l4"]
                                              - matrices[0].at["l2", "l4"], abs=1e-12)
    assert out.difference.at["l2", "l4"] == pytest.approx(row["difference"], abs=1e-12)


def test_a_result_against_itself_covers_zero_everywhere():
    """A store compared with itself: two independent bootstraps of the same seeds, so every
    diagnostic's interval of B − A covers 0, its point difference is 0, and no cell differs."""
    rng = np.random.default_rng(42)
    cross = GAINS[:, None] * rng.uniform(0.3, 1.3, (6, 6))
    runs = make_runs(rng, LANGS, GAINS, cross, seeds=8)
    out = cp.compare_runs(runs, runs, families=FAMILIES,
                          settings=analysis_config(bootstrap=300, stats_seed=5))
    diag = out.summary["diagnostics"]
    checked = [k for k, d in diag.items() if d["low"] is not None]
    assert {"rfd1", "asym_rel", "cos_rows", "rms", "intra_family_pos", "se_median"} <= set(checked)
    for key in checked:
        assert diag[key]["difference"] == 0.0
        assert _covers(diag[key]) and diag[key]["excludes_zero"] is False, (key, diag[key])
    assert out.summary["cells"]["tested"] == 30
    assert out.summary["cells"]["significant"] == 0 and not out.cells["significant"].any()
    assert out.summary["cells"]["significant_cells"] == []
    assert (out.cells["difference"] == 0).all() and (out.cells["p"] > 0.05).all()


def test_two_draws_of_one_truth_cover_zero():
    """Two stores drawn from one structured truth (not all ones, so that no diagnostic sits on
    its boundary), each with its own seed noise, 10 times: each diagnostic's interval covers 0
    in nearly every repetition (at 95% with 8 seeds the bootstrap's known narrowness leaves
    about 93% coverage each, and 11 diagnostics rarely all cover at once), and the cells at
    FDR 0.05 find a difference in at most 2 repetitions (BH keeps the chance of any discovery
    near 5% when no cell differs)."""
    rng = np.random.default_rng(46)
    cross = GAINS[:, None] * rng.uniform(0.3, 1.3, (6, 6))
    reps, covers, found = 10, {}, 0
    for r in range(reps):
        a, b = (make_runs(rng, LANGS, GAINS, cross, seeds=8) for _ in range(2))
        out = cp.compare_runs(a, b, families=FAMILIES,
                              settings=analysis_config(bootstrap=200, stats_seed=r))
        for key, d in out.summary["diagnostics"].items():
            if d["low"] is not None:
                assert d["excludes_zero"] is not _covers(d)
                covers[key] = covers.get(key, 0) + _covers(d)
        found += out.summary["cells"]["significant"] > 0
    assert {"rfd1", "asym_rel", "cos_rows", "intra_family_pos"} <= set(covers)
    assert all(c >= reps - 2 for c in covers.values()), covers
    assert found <= 2


def test_languages_in_one_result_are_named_and_left_out(tmp_path):
    """A covers l0..l4, B covers l1..l5: l0 and l5 are named in both outputs and no matrix or
    diagnostic holds them; the diagnostics are those of the stores restricted to l1..l4."""
    rng = np.random.default_rng(43)
    runs_a = make_runs(rng, LANGS[:5], GAINS[:5], seeds=6)
    runs_b = make_runs(rng, LANGS[1:], GAINS[1:], np.outer(GAINS[1:], np.full(5, 0.5)), seeds=6)
    a, b = write_store(tmp_path / "a", runs_a), write_store(tmp_path / "b", runs_b)
    summary = run_compare(a, b, tmp_path / "out", (None, None), FAMILIES,
                          analysis_config(bootstrap=100))
    common = LANGS[1:5]
    assert summary["common_languages"] == common
    assert summary["only_in_a"] == ["l0"] and summary["only_in_b"] == ["l5"]
    assert summary["a"]["only_here"] == ["l0"] and summary["b"]["languages"] == LANGS[1:]
    written = json.loads((tmp_path / "out" / cp.JSON_FILE).read_text())
    assert written == summary
    md = (tmp_path / "out" / cp.MARKDOWN_FILE).read_text()
    assert "only in a: l0" in md and "only in b: l5" in md and "left out" in md

    def within(runs: pd.DataFrame) -> pd.DataFrame:
        return runs[runs["target"].isin(common) & runs["donor"].isin(common)]

    direct = [_diag(within(runs_a)), _diag(within(runs_b))]
    for key, d in summary["diagnostics"].items():
        if direct[0][key] is not None and direct[1][key] is not None:
            assert d["difference"] == pytest.approx(direct[1][key] - direct[0][key], abs=1e-6)
    assert summary["diagnostics"]["n_languages"]["a"] == 4
    cells = pd.read_csv(tmp_path / "out" / cp.CELLS_FILE)
    assert set(cells["target"]) == set(cells["donor"]) == set(common) and len(cells) == 12
    # A cell depends on its own target's runs alone: the restriction leaves it as it was.
    full_a = compute_cltm(runs_a, pair_seeds=False).matrix
    for row in cells.itertuples():
        assert row.a == pytest.approx(full_a.at[row.target, row.donor], abs=1e-12)

    # Default labels: the shortest ends of the two paths that tell the stores apart.
    assert default_labels([tmp_path / "a" / "gender", tmp_path / "b" / "gender"]) == (
        "a/gender", "b/gender")
    assert default_labels([a / "runs.jsonl", b]) == ("a", "b")
    assert default_labels([a, a]) == ("A", "B")
    with pytest.raises(CltmError, match="share 1 language"):
        cp.compare_runs(runs_a, make_runs(rng, ["l0", "zz"], GAINS[:2], seeds=4),
                        settings=analysis_config())


def test_cli_writes_the_files_and_names_a_missing_store(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(44)
    stores = tmp_path / "stores"
    gender = write_store(stores / "gender", make_runs(rng, LANGS[:4], GAINS[:4], seeds=4))
    speaker = write_store(stores / "speaker", make_runs(
        rng, LANGS[:4], GAINS[:4], np.outer(GAINS[:4], np.full(4, 0.2)), seeds=4), "speaker")
    # The repository's params with the analysis settings changed: the command must use them.
    raw = yaml.safe_load(Path(__file__).parent.parent.joinpath("params.yaml").read_text())
    raw["analysis"].update(bootstrap=60, stats_seed=7, fdr=0.1, ci_level=0.95, pair_seeds=True)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)  # the default --out and nothing of the repository's data

    assert main(["--params", str(params), "compare", str(gender), str(speaker), "--out",
                 "metrics/compare"]) == 0
    out = tmp_path / "metrics" / "compare"
    for name in (cp.MARKDOWN_FILE, cp.JSON_FILE, cp.CELLS_FILE, cp.HEATMAP_FILE):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / cp.HEATMAP_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / cp.JSON_FILE).read_text())
    assert (summary["a"]["label"], summary["b"]["label"]) == ("gender", "speaker")
    assert summary["difference"] == "speaker - gender"
    assert summary["settings"] == {"bootstrap": 60, "ci_level": 0.95, "fdr": 0.1,
                                   "stats_seed": 7, "pair_seeds": True}
    md = (out / cp.MARKDOWN_FILE).read_text()
    assert md.startswith("# speaker − gender") and f"]({cp.HEATMAP_FILE})" in md
    assert "`rfd1`" in md and "interval of B − A" in md

    labelled = tmp_path / "labelled"
    assert main(["--params", str(params), "compare", str(gender), str(speaker), "--label-a",
                 "base", "--label-b", "variant", "--out", str(labelled)]) == 0
    again = json.loads((labelled / cp.JSON_FILE).read_text())
    assert (again["a"]["label"], again["b"]["label"]) == ("base", "variant")
    assert again["diagnostics"] == summary["diagnostics"]  # same settings, same numbers

    capsys.readouterr()
    missing = tmp_path / "nowhere" / "gender"
    assert main(["--params", str(params), "compare", str(missing), str(speaker),
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cltm: error:") and str(missing) in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    with pytest.raises(CltmError, match=str(missing)):
        run_compare(missing, speaker, tmp_path / "y", (None, None), None, analysis_config())


def test_no_bootstrap_gives_points_only(tmp_path):
    rng = np.random.default_rng(45)
    runs = make_runs(rng, LANGS[:3], GAINS[:3], seeds=3)
    out = cp.compare_runs(runs, runs, settings=analysis_config(bootstrap=0))
    d = out.summary["diagnostics"]["rfd1"]
    assert d["difference"] == 0.0 and d["low"] is None and d["a_low"] is None
    assert out.summary["cells"]["tested"] == 0 and out.cells["p"].isna().all()
    assert "bootstrap is off" in cp.markdown(out.summary)


def test_analysis_compare_imports_no_training_stack():
    import subprocess
    import sys

    code = ("import sys, cltm.analysis.compare\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')\n"
            "       or m.startswith(('cltm.train', 'cltm.data'))]\n"
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
