"""The task interface: a task defined outside the package (tests/toy_task.py) runs through
`cltm subsets`, `cltm grid` and `cltm cltm` with nothing but its module and its params block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cltm.config import config_from_dict
from cltm.data.demo import write_demo_corpus
from cltm.errors import CltmError
from tests.conftest import TINY_HUBERT, demo_spec

REPO = Path(__file__).resolve().parents[1]
TOY = {"module": "tests.toy_task", "positive": "female", "N": 2, "clips_per_speaker": 1,
       "lr": 1.0e-2, "epochs": 30, "seeds": [0, 1], "head_init": "zero", "head_lr_scale": 1.0,
       "encoder": "frozen"}


def _params(root: Path, corpus: Path) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"languages": ["es", "de"], "workers": 1})
    params["data"]["commonvoice"]["root"] = str(corpus)
    params["tasks"] = {"toy": dict(TOY)}
    params["curve"]["N_grid"] = {}
    params["analysis"]["contrasts"] = {}
    params["train"].update({"threads": 1, "device": "cpu"})
    params["model"]["random_init"] = TINY_HUBERT
    params["pretrain"]["enabled"] = False
    params["analysis"].update({"bootstrap": 20, "permutations": 10, "probe_clips": 0})
    return params


def _cltm(root: Path, *args: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "cltm", "--no-progress", *args], cwd=root,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_task_outside_the_package_runs_through_subsets_grid_and_cltm(tmp_path):
    corpus = tmp_path / "corpus"
    write_demo_corpus(corpus, demo_spec(("es", "de"), speakers_per_language=16,
                                        clips_per_speaker=2, dev_speakers=1, test_speakers=4,
                                        clip_seconds=1.0, seed=5), workers=1, progress=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_params(tmp_path, corpus)))
    for locale in ("es", "de"):
        _cltm(tmp_path, "metadata", "--locale", locale, "--root", str(corpus), "--out",
              "data/metadata")
    _cltm(tmp_path, "subsets", "--task", "toy", "--metadata", "data/metadata", "--curve",
          "metrics/curves/toy.json", "--out", "data/subsets/toy")
    _cltm(tmp_path, "grid", "--task", "toy", "--subsets", "data/subsets/toy", "--runs",
          "metrics/runs/toy", "--models", "models/toy")
    _cltm(tmp_path, "cltm", "--task", "toy", "--runs", "metrics/runs/toy", "--out",
          "metrics/toy", "--corpus", str(corpus))

    runs = [json.loads(line) for line in
            (tmp_path / "metrics/runs/toy/runs.jsonl").read_text().splitlines()]
    # 2 targets x (base + self + 2 cross... one donor each) x 2 seeds
    assert len(runs) == 2 * (1 + 1 + 1) * 2
    assert {r["task"] for r in runs} == {"toy"}
    # the toy's own score (accuracy over its own eval clips) and its own record fields
    manifest = pd.read_csv(tmp_path / "data/subsets/toy/manifest.csv")
    evals = manifest[manifest["role"] == "eval"].groupby("language").size().to_dict()
    for r in runs:
        assert r["eval_clips"] == evals[r["target"]]
        assert 0.0 <= r["score"] <= 1.0 and "pred_classes" not in r
    matrix = pd.read_csv(tmp_path / "metrics/toy/cltm.csv", index_col="target")
    assert sorted(matrix.index) == ["de", "es"]
    health = json.loads((tmp_path / "metrics/toy/run_health.json").read_text())
    assert health["what"] == "runs at or below chance accuracy" and health["runs"] == len(runs)
    assert health["degenerate"] == sum(r["score"] <= 0.5 for r in runs)


def test_a_task_block_is_validated_as_its_modules_settings():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"]["toy"] = dict(TOY)
    config = config_from_dict(params)
    assert list(config.tasks) == ["gender", "speaker", "toy"]
    assert config.tasks["toy"].positive == "female"
    assert config.task("toy").title == "Toy task (accuracy)"
    params["tasks"]["toy"]["positive"] = "both"
    with pytest.raises(CltmError, match=r"tasks\.toy\.positive must be female or male"):
        config_from_dict(params)
    params["tasks"]["toy"] = {k: v for k, v in TOY.items() if k != "positive"}
    with pytest.raises(CltmError, match=r"missing key tasks\.toy\.positive"):
        config_from_dict(params)
    params["tasks"]["toy"] = {**TOY, "module": "tests.no_such_task"}
    with pytest.raises(CltmError, match=r"tasks.toy.module: task module 'tests.no_such_task' "
                                        "cannot be imported"):
        config_from_dict(params)
    params["tasks"]["toy"] = {**TOY, "module": "cltm.layout"}
    with pytest.raises(CltmError, match="defines no TASK"):
        config_from_dict(params)
    params["tasks"]["toy"] = dict(TOY)
    params["analysis"]["contrasts"]["toy-gender"] = {"first": "gender", "second": "toy",
                                                     "expected_nearer": "speaker"}
    with pytest.raises(CltmError, match=r"expected_nearer is one of the pair \(gender, toy\)"):
        config_from_dict(params)
    params["analysis"]["contrasts"]["toy-gender"]["second"] = "nothing"
    with pytest.raises(CltmError, match="compares two different tasks of `tasks:`"):
        config_from_dict(params)
    del params["analysis"]["contrasts"]["toy-gender"]
    del params["tasks"]["toy"]
    with pytest.raises(CltmError, match=r"no task 'toy' in the params \(tasks: gender, speaker"):
        config_from_dict(params).task("toy")


def test_a_task_s_own_settings_enter_its_runs_hash():
    from cltm.train.runner import settings_of

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tasks"] = {"toy": dict(TOY)}
    params["curve"]["N_grid"] = {}
    params["analysis"]["contrasts"] = {}
    params["model"]["random_init"] = TINY_HUBERT
    params["pretrain"]["enabled"] = False
    first = settings_of(config_from_dict(params), "toy")
    params["tasks"]["toy"]["positive"] = "male"
    second = settings_of(config_from_dict(params), "toy")
    assert first["task_settings"] == {"positive": "female"}
    assert second["task_settings"] == {"positive": "male"}
    assert first["task_code"] == second["task_code"]
