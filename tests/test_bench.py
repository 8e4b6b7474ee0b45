"""The speed benchmark runs on a machine without a GPU (its tiny configuration) and measures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_falls_back_to_tiny_cpu_config_and_compares_with_reference_style():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_worker.py"), "--task", "gender",
         "--targets", "1", "--reference-runs", "1", "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    by = {x["measure"]: x for x in lines}
    assert "no GPU" in by["note"]["message"]
    worker = by["worker_slice"]
    assert worker["config"] == "tiny" and worker["runs"] == 3 and worker["finite_losses"]
    assert worker["train_clips_per_run"] == [4, 8, 8]  # base (D), self and cross (2 D)
    assert worker["model_tflop_per_s"] > 0 and worker["share_of_peak"] is None
    reference = by["reference_style"]
    assert reference["runs"] == 1 and reference["s_per_run"] > reference["in_process_s_per_run"]
    # a fresh process per run, weights from disk and decoding per step cannot beat a warm worker
    assert by["throughput_ratio"]["worker_over_reference"] > 1


def _seeds_needed(runs_dir: Path, *args: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "seeds_needed.py"), "--runs", str(runs_dir),
         "--families", str(runs_dir / "absent.csv"), *args],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def test_seeds_needed_separates_a_planted_contrast_and_not_two_equal_tasks(tmp_path):
    from tests.test_stats import LANGS, make_runs, write_store

    rng = np.random.default_rng(0)
    gains = np.full(len(LANGS), 0.3)
    # Speaker: donors of the other half of the languages give nothing (CLTM 0 there).
    half = np.arange(len(LANGS)) < len(LANGS) // 2
    cross = np.where(half[:, None] == half[None, :], 0.3, 0.0)
    contrast, equal = tmp_path / "contrast", tmp_path / "equal"
    write_store(contrast / "gender", make_runs(rng, LANGS, gains, seeds=4), "gender")
    write_store(contrast / "speaker", make_runs(rng, LANGS, gains, cross, seeds=4), "speaker")
    # The same runs for both tasks: the projection takes the observed values for the truth, so
    # only tasks that observe the same values must never separate, at any seed count.
    same_runs = make_runs(rng, LANGS, gains, seeds=4)
    write_store(equal / "gender", same_runs, "gender")
    write_store(equal / "speaker", same_runs, "speaker")
    args = ("--k", "4", "16", "--experiments", "20", "--bootstrap", "200")

    planted = {x["seeds"]: x for x in _seeds_needed(contrast, *args)}
    assert planted[16]["rfd1_disjoint_share"] == 1.0
    assert planted[16]["rfd1_difference_share"] == 1.0
    assert planted[16]["cos_rows_difference_share"] == 1.0
    # More seeds narrow the intervals.
    width = {k: x["gender_rfd1_median_ci"][1] - x["gender_rfd1_median_ci"][0]
             for k, x in planted.items()}
    assert width[16] < width[4]

    same = {x["seeds"]: x for x in _seeds_needed(equal, *args)}
    for k in (4, 16):
        assert same[k]["gender_rfd1_median_ci"] is not None
        for key in ("rfd1", "cos_rows"):
            assert same[k][f"{key}_disjoint_share"] == 0.0
            assert same[k][f"{key}_difference_share"] == 0.0


@pytest.mark.slow
def test_fused_benchmark_prints_every_figure_on_a_cpu():
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "fused.py")],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert "no GPU" in lines[0]["text"] and lines[0]["device"] == "cpu"
    paces = {(x["mode"], x["k"]): x for x in lines if x["figure"] == "pace"}
    assert {("serial", 1), ("fused", 1), ("fused", 4)} <= set(paces)
    assert any(mode == "processes" for mode, _ in paces)
    for pace in (p for p in paces.values() if p.get("works", True)):
        assert pace["clip_steps_per_s"] > 0 and pace["model_flops_per_s"] > 0
    assert 0 < paces[("fused", 4)]["padding_share"] < 1
    assert paces[("fused", 4)]["eval_s_per_run"] > 0
    assert paces[("serial-compiled", 1)]["works"] is False  # said, not silently left out
    figures = {x["figure"]: x for x in lines}
    assert figures["optimizer"]["bytes_per_parameter"] <= 36
    assert figures["device_peak"]["device"] == "cpu"
    cv = {x["k"]: x["padding_share"] for x in lines if x["figure"] == "padding_cv"}
    assert cv[1] == 0 and 0 < cv[4] < cv[32] < 1
    profiles = {x["k"]: x for x in lines if x["figure"] == "step_profile"}
    assert set(profiles) == {1, 4}
    assert all(p["host_reads"] == 0 for p in profiles.values())
    assert profiles[4]["aten_ops"] <= 1.02 * profiles[1]["aten_ops"]
    projections = {(x["mode"], x["k"], x["task"]): x for x in lines
                   if x["figure"] == "grid_projection"}
    for mode, k in (key for key, p in paces.items() if p.get("works", True)):
        for task, steps in (("gender", 240), ("speaker", 2000)):
            p = projections[(mode, k, task)]
            assert p["runs"] == 19800 and p["steps_per_run"] == steps and p["device_hours"] > 0
