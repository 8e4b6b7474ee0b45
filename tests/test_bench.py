"""The speed benchmark runs on a machine without a GPU (its tiny configuration) and measures."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
