"""The analysis: CLTM from a run store, delta-method SEs, diagnostics, plots, report (no torch)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cltm.analysis.cltm import cell_se, compute_cltm, read_run_store
from cltm.analysis.diagnostics import KEYS, diagnostics, format_table
from cltm.analysis.languages import family_map, load_languages
from cltm.errors import CltmError
from cltm.stages.diagnostics import run_diagnostics
from cltm.stages.report import run_report
from tests.conftest import paper_contrasts, paper_tasks, run_cltm

PAPER_LOCALES = (
    "ab ar be bn ca ckb cnh cs cy de dv en eo es et eu fa fr fy-NL ga-IE gl hu hy-AM id it ja ka "
    "kab kmr ky lg lt lv mhr mn mt nl pl pt ro ru rw sl sv-SE sw ta th tr ug uk ur uz yue zh-CN "
    "zh-HK zh-TW ltg"
).split()

# run_diagnostics without the family permutation test (as `cltm diagnostics` runs it).
NO_FAMILY_TEST = {"permutations": 0, "stats_seed": 0}


def _records(scores: dict[tuple[str, str, str], list[float]], task: str = "gender") -> list[dict]:
    out = []
    for (target, condition, donor), values in scores.items():
        for seed, score in enumerate(values):
            run_id = f"{target}-{condition}-{donor}-{seed}"
            out.append({"task": task, "target": target, "condition": condition, "donor": donor,
                        "seed": seed, "run_id": run_id, "hash": run_id, "score": score,
                        "loss_final": 0.1, "steps": 10, "device": "cpu"})
    return out


def _write_store(directory: Path, records: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "runs.jsonl", "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    return directory


def _random_scores(languages: list[str], seeds: int = 4, undefined: tuple[str, ...] = (),
                   seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    scores = {}
    for i in languages:
        gain = -0.05 if i in undefined else 0.2
        scores[(i, "base", i)] = list(0.5 + rng.normal(0, 0.02, seeds))
        scores[(i, "self", i)] = list(0.5 + gain + rng.normal(0, 0.02, seeds))
        for j in languages:
            if j != i:
                scores[(i, "cross", j)] = list(0.5 + rng.uniform(-0.15, 0.25)
                                               + rng.normal(0, 0.02, seeds))
    return scores


# --- diagnostics ------------------------------------------------------------------------------


def test_all_ones_is_the_agnostic_ideal():
    locs = ["es", "it", "de", "nl"]
    d = diagnostics(pd.DataFrame(1.0, index=locs, columns=locs))
    assert d["n_languages"] == 4
    assert d["rfd1"] == pytest.approx(0.0)
    assert d["asym_rel"] == pytest.approx(0.0)
    assert d["prop_pos"] == 1.0
    assert d["reciprocity_pos"] == 1.0
    assert d["cos_rows"] == pytest.approx(1.0)
    assert d["rms"] == pytest.approx(1.0)
    assert list(d) == list(KEYS)


def test_hand_made_3x3():
    locs = ["es", "it", "de"]
    c = pd.DataFrame([[1.0, 0.5, -0.5],
                      [3.0, 1.0, 0.0],
                      [0.5, -1.0, 1.0]], index=locs, columns=locs)
    se = pd.DataFrame([[0.0, 0.1, 0.2],
                       [0.3, 0.0, 0.4],
                       [0.5, 0.9, 0.0]], index=locs, columns=locs)
    families = {"es": "Romance", "it": "Romance", "de": "Germanic"}
    d = diagnostics(c, se, families, self_gain={"es": 0.2, "it": 0.4, "de": 0.3})
    # C - 1 squared: 0.25 + 2.25 + 4 + 1 + 0.25 + 4 = 11.75
    assert d["rfd1"] == pytest.approx(math.sqrt(11.75) / 3)
    # ||C||² = 1 + 0.25 + 0.25 + 9 + 1 + 0 + 0.25 + 1 + 1 = 13.75
    assert d["rms"] == pytest.approx(math.sqrt(13.75) / 3)
    # C - Cᵀ: ±2.5, ±1, ±1 -> 2 * (6.25 + 1 + 1) = 16.5
    assert d["asym_rel"] == pytest.approx(math.sqrt(16.5 / 13.75))
    # off-diagonal: 0.5, -0.5, 3, 0, 0.5, -1 -> three positive of six
    assert d["prop_pos"] == pytest.approx(0.5)
    # positive edges es<-it (reverse 3 > 0), it<-es (reverse 0.5 > 0), de<-es (reverse -0.5)
    assert d["reciprocity_pos"] == pytest.approx(2 / 3)
    # rows (1, .5, -.5), (3, 1, 0), (.5, -1, 1): dots 3.5, -0.5, 0.5; norms² 1.5, 10, 2.25
    cos = (3.5 / math.sqrt(1.5 * 10) + -0.5 / math.sqrt(1.5 * 2.25)
           + 0.5 / math.sqrt(10 * 2.25)) / 3
    assert d["cos_rows"] == pytest.approx(cos)
    # positive mass 0.5 + 3 + 0.5 = 4, of which es<->it (Romance) 0.5 + 3 = 3.5
    assert d["intra_family_pos"] == pytest.approx(3.5 / 4)
    # off-diagonal SEs 0.1 0.2 0.3 0.4 0.5 0.9
    assert d["se_median"] == pytest.approx(0.35)
    assert d["se_mean"] == pytest.approx(2.4 / 6)
    # gains 0.2 0.4 0.3: mean 0.3, squared deviations 0.01 + 0.01 + 0 over n - 1 = 2
    assert d["self_gain_mean"] == pytest.approx(0.3)
    assert d["self_gain_std"] == pytest.approx(0.1)
    assert d["undefined_targets"] == []


def test_undefined_row_is_left_out():
    locs = ["es", "it", "de"]
    c = pd.DataFrame([[1.0, 0.5, 0.2],
                      [np.nan, np.nan, np.nan],
                      [0.5, 0.3, 1.0]], index=locs, columns=locs)
    d = diagnostics(c)
    assert d["n_languages"] == 2
    assert d["undefined_targets"] == ["it"]
    # Only es, de remain: off-diagonal 0.2 and 0.5.
    assert d["prop_pos"] == 1.0
    assert d["rms"] == pytest.approx(math.sqrt(1 + 0.04 + 0.25 + 1) / 2)


def test_unknown_locale_warns_and_gives_null(caplog):
    locs = ["es", "qq"]
    c = pd.DataFrame([[1.0, 0.5], [0.5, 1.0]], index=locs, columns=locs)
    with caplog.at_level(logging.WARNING):
        d = diagnostics(c, families=family_map("genus"))
    assert d["intra_family_pos"] is None
    assert "qq" in caplog.text


def test_no_positive_mass_gives_null_shares():
    locs = ["es", "it"]
    c = pd.DataFrame([[1.0, -0.5], [-0.2, 1.0]], index=locs, columns=locs)
    d = diagnostics(c, families={"es": "Romance", "it": "Romance"})
    assert d["prop_pos"] == 0.0
    assert d["reciprocity_pos"] is None
    assert d["intra_family_pos"] is None


# --- the CLTM from a run table ----------------------------------------------------------------


def test_cltm_from_runs_matches_hand_ratios():
    scores = {
        ("es", "base", "es"): [0.5, 0.7], ("es", "self", "es"): [0.9, 0.7],
        ("es", "cross", "it"): [0.7, 0.7], ("es", "cross", "de"): [0.5, 0.5],
        ("it", "base", "it"): [0.4, 0.4], ("it", "self", "it"): [0.8, 0.8],
        ("it", "cross", "es"): [0.6, 0.6], ("it", "cross", "de"): [1.0, 1.0],
        ("de", "base", "de"): [0.5, 0.5], ("de", "self", "de"): [0.5, 0.4],
        ("de", "cross", "es"): [0.6, 0.6], ("de", "cross", "it"): [0.6, 0.6],
    }  # fmt: skip
    result = compute_cltm(pd.DataFrame(_records(scores)), pair_seeds=False)
    m = result.matrix
    # es: base 0.6, self 0.8 -> gain 0.2; it: base 0.4, self 0.8 -> gain 0.4
    assert m.at["es", "it"] == pytest.approx(0.1 / 0.2)
    assert m.at["es", "de"] == pytest.approx(-0.1 / 0.2)
    assert m.at["it", "es"] == pytest.approx(0.2 / 0.4)
    assert m.at["it", "de"] == pytest.approx(0.6 / 0.4)
    assert m.at["es", "es"] == 1.0 and m.at["it", "it"] == 1.0
    # de: base 0.5, self 0.45 -> gain -0.05: the whole row is undefined, nothing imputed
    assert m.loc["de"].isna().all()
    assert list(result.undefined.index) == ["de"]
    assert result.undefined["de"] == pytest.approx(-0.05)
    # es<-it: va = 0, vb = vc = 0.02 / 2 = 0.01, num 0.1, den 0.2:
    # 0.01 / 0.04 + 0.01 * 0.02 / 0.0016 - 2 * 0.1 * 0.01 / 0.008 = 0.25 + 0.125 - 0.25
    assert result.se.at["es", "it"] == pytest.approx(math.sqrt(0.125))
    assert result.se.at["es", "es"] == 0.0
    perf = result.performance.set_index(["target", "condition", "donor"])
    assert perf.at[("es", "base", "es"), "seeds"] == 2
    assert perf.at[("es", "base", "es"), "std"] == pytest.approx(math.sqrt(0.02))


def test_delta_se_matches_monte_carlo():
    rng = np.random.default_rng(7)
    seeds, reps, sd = 10, 20_000, 0.03
    mean_a, mean_b, mean_c = 0.75, 0.5, 0.9  # numerator 0.25, denominator 0.4: far from 0
    a = rng.normal(mean_a, sd, (reps, seeds))
    b = rng.normal(mean_b, sd, (reps, seeds))
    c = rng.normal(mean_c, sd, (reps, seeds))
    ratios = (a.mean(1) - b.mean(1)) / (c.mean(1) - b.mean(1))
    mc = ratios.std(ddof=1)
    v = sd**2 / seeds
    assert cell_se(mean_a, mean_b, mean_c, v, v, v) == pytest.approx(mc, rel=0.10)
    # And as estimated from each repetition's own seeds (the way the stage uses it).
    estimates = [
        cell_se(a[r].mean(), b[r].mean(), c[r].mean(), a[r].var(ddof=1) / seeds,
                b[r].var(ddof=1) / seeds, c[r].var(ddof=1) / seeds)
        for r in range(2000)
    ]
    assert np.median(estimates) == pytest.approx(mc, rel=0.15)


def test_incomplete_store_is_an_error():
    scores = _random_scores(["es", "it"])
    del scores[("es", "cross", "it")]
    with pytest.raises(CltmError, match="incomplete"):
        compute_cltm(pd.DataFrame(_records(scores)), pair_seeds=False)


def test_repeated_seed_is_an_error():
    records = _records(_random_scores(["es", "it"]))
    records.append({**records[0], "hash": "another", "score": 0.1})
    with pytest.raises(CltmError, match="repeat"):
        compute_cltm(pd.DataFrame(records), pair_seeds=False)


def test_store_reader_skips_torn_line_and_keeps_last_record(tmp_path):
    records = _records(_random_scores(["es", "it"]))
    store = _write_store(tmp_path / "runs", [*records, {**records[0], "score": 0.123}])
    with open(store / "runs.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"task": "gender", "targ')
    runs = read_run_store(store, "gender")
    assert len(runs) == len(records)
    assert runs.loc[runs["hash"] == records[0]["hash"], "score"].item() == 0.123
    with pytest.raises(CltmError, match="no run store"):
        read_run_store(tmp_path / "nowhere", "gender")


# --- the stage, the diagnostics command, plots and report --------------------------------------


@pytest.fixture(scope="module")
def gender_stage(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("metrics")
    langs = ["es", "it", "de", "nl", "ru", "pl", "en"]
    store = _write_store(root / "runs" / "gender",
                         _records(_random_scores(langs, undefined=("en",))))
    diag = run_cltm("gender", store, root / "gender")
    return root, diag


def test_stage_writes_every_output(gender_stage):
    root, diag = gender_stage
    out = root / "gender"
    for name in ("cltm.csv", "cltm_se.csv", "performance.csv", "diagnostics.json",
                 "undefined.csv", "self_gain.csv", "offdiag.csv"):
        assert (out / name).is_file(), name
    for name in ("heatmap.png", "heatmap_highlight.png", "self_gain.png", "offdiag_hist.png"):
        assert (out / name).stat().st_size > 5000, name
    saved = json.loads((out / "diagnostics.json").read_text())
    assert list(saved) == list(KEYS)
    assert saved == diag
    assert saved["n_languages"] == 6 and saved["undefined_targets"] == ["en"]
    assert 0 <= saved["prop_pos"] <= 1
    m = pd.read_csv(out / "cltm.csv", index_col="target")
    assert m.loc["en"].isna().all()
    assert np.allclose([m.at[t, t] for t in m.index if t != "en"], 1.0)
    undefined = pd.read_csv(out / "undefined.csv")
    assert list(undefined["target"]) == ["en"] and (undefined["self_gain"] <= 0).all()
    assert "undefined_targets" in format_table(diag)


def test_run_diagnostics_equals_stage(gender_stage, tmp_path):
    root, diag = gender_stage
    out = tmp_path / "d.json"
    again = run_diagnostics(root / "gender" / "cltm.csv", root / "gender" / "cltm_se.csv",
                            "genus", out, **NO_FAMILY_TEST)
    assert again == diag
    assert json.loads(out.read_text()) == diag


def test_run_diagnostics_reorders_columns(gender_stage, tmp_path):
    root, diag = gender_stage
    m = pd.read_csv(root / "gender" / "cltm.csv", index_col="target")
    path = tmp_path / "cltm.csv"
    m[list(reversed(m.columns))].to_csv(path, index_label="target")
    again = run_diagnostics(path, root / "gender" / "cltm_se.csv", "genus", None, **NO_FAMILY_TEST)
    assert {k: again[k] for k in ("rfd1", "asym_rel", "cos_rows", "se_median")} == \
        {k: diag[k] for k in ("rfd1", "asym_rel", "cos_rows", "se_median")}


def _bad_csv(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index_label="target")
    return path


def test_run_diagnostics_bad_inputs(tmp_path):
    locs = ["es", "it"]
    not_square = pd.DataFrame([[1.0, 0.5, 0.2], [0.3, 1.0, 0.1]], index=locs,
                              columns=[*locs, "de"])
    with pytest.raises(CltmError, match="not square"):
        run_diagnostics(_bad_csv(tmp_path, not_square), None, "genus", None, **NO_FAMILY_TEST)
    mismatch = pd.DataFrame([[1.0, 0.5], [0.3, 1.0]], index=locs, columns=["es", "de"])
    with pytest.raises(CltmError, match="differ"):
        run_diagnostics(_bad_csv(tmp_path, mismatch), None, "genus", None, **NO_FAMILY_TEST)
    diagonal = pd.DataFrame([[1.0, 0.5], [0.3, 0.9]], index=locs, columns=locs)
    with pytest.raises(CltmError, match="diagonal"):
        run_diagnostics(_bad_csv(tmp_path, diagonal), None, "genus", None, **NO_FAMILY_TEST)
    no_target = tmp_path / "no_target.csv"
    pd.DataFrame([[1.0, 0.5], [0.3, 1.0]], index=locs, columns=locs).to_csv(no_target)
    with pytest.raises(CltmError, match="'target'"):
        run_diagnostics(no_target, None, "genus", None, **NO_FAMILY_TEST)
    ok = _bad_csv(tmp_path, pd.DataFrame([[1.0, 0.5], [0.3, 1.0]], index=locs, columns=locs))
    with pytest.raises(CltmError, match="family level"):
        run_diagnostics(ok, None, "branch", None, **NO_FAMILY_TEST)
    with pytest.raises(CltmError, match="does not exist"):
        run_diagnostics(tmp_path / "missing.csv", None, "genus", None, **NO_FAMILY_TEST)


def test_families_csv_overrides_metadata(tmp_path):
    locs = ["es", "de"]
    path = _bad_csv(tmp_path, pd.DataFrame([[1.0, 0.5], [0.3, 1.0]], index=locs, columns=locs))
    assert run_diagnostics(path, None, "family", None, **NO_FAMILY_TEST)["intra_family_pos"] == 1.0
    assert run_diagnostics(path, None, "genus", None, **NO_FAMILY_TEST)["intra_family_pos"] == 0.0
    families = tmp_path / "families.csv"
    families.write_text("locale,family\nes,Planted\nde,Planted\n")
    d = run_diagnostics(path, None, "genus", None, families_csv=families, **NO_FAMILY_TEST)
    assert d["intra_family_pos"] == 1.0


def test_highlight_without_any_language_writes_a_note(tmp_path):
    store = _write_store(tmp_path / "runs", _records(_random_scores(["nl", "pl"])))
    run_cltm("gender", store, tmp_path / "out", highlight=["zh-CN"])
    assert (tmp_path / "out" / "heatmap_highlight.png").stat().st_size > 1000


def test_report_has_table_and_links(gender_stage):
    root, _ = gender_stage
    report = root / "report.md"
    run_report(root, root / "curves", root / "contrasts", report, paper_tasks(),
               paper_contrasts(), null_control=False, planted=False)
    text = report.read_text()
    assert "| metric | gender | gender (paper) |" in text
    assert "speaker" not in text.split("##")[0].split("| metric")[1].split("\n")[0]
    assert "| RFD₁ (`rfd1`) |" in text and "| 0.162 |" in text
    assert "](gender/heatmap.png)" in text and "](gender/heatmap_highlight.png)" in text
    assert "English (`en`)" in text  # the undefined target
    assert "strongest positive" in text and "most negative" in text
    assert "| cross | 42 | 4 | 168 |" in text


# --- metadata and isolation -------------------------------------------------------------------


def test_languages_cover_the_common_voice_list():
    table = load_languages()
    missing = sorted(set(PAPER_LOCALES) - set(table.index))
    assert not missing
    assert (table.loc[PAPER_LOCALES, ["name", "family", "genus"]] != "").all().all()
    assert table.at["lt", "name"] == "Lithuanian" and table.at["ltg", "name"] == "Latgalian"
    assert table.at["es", "genus"] == "Romance" and table.at["tr", "family"] == "Turkic"
    assert table.at["zh-CN", "genus"] == "Sinitic"
    assert not table.index.has_duplicates


def test_analysis_imports_no_training_stack():
    code = ("import sys, cltm.stages.cltm, cltm.stages.report, cltm.stages.gaps\n"
            "import cltm.stages.geometry, cltm.stages.contrast, cltm.stages.compare\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')\n"
            "       or m.startswith(('cltm.train', 'cltm.data'))]\n"
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_health_counts_one_class_and_chance_runs():
    from cltm.analysis.cltm import run_health
    from cltm.tasks.gender import TASK as GENDER
    from cltm.tasks.speaker import TASK as SPEAKER

    runs = pd.DataFrame({
        "condition": ["base", "base", "self", "cross"], "seed": [0, 1, 0, 1],
        "score": [0.333, 0.9, 0.5, 0.7], "pred_classes": [1, 2, 2, 1],
    })
    # gender: the recorded predicted-class count decides, not the score
    assert GENDER.degenerate(runs).tolist() == [True, False, False, True]
    h = run_health(runs, GENDER.degenerate(runs), GENDER.degenerate_what)
    assert h["what"] == "runs predicting a single class"
    assert (h["runs"], h["degenerate"], h["degenerate_share"]) == (4, 2, 0.5)
    assert h["by_condition"] == {"base": 0.5, "cross": 1.0, "self": 0.0}
    assert h["by_seed"] == {"0": 0.5, "1": 0.5}
    # a store from before pred_classes was recorded: one class on a balanced set is F1 1/3
    old = runs.drop(columns="pred_classes")
    assert GENDER.degenerate(old).tolist() == [True, False, False, False]
    # speaker: an AUC at or below chance
    assert SPEAKER.degenerate(runs).tolist() == [True, False, True, False]
