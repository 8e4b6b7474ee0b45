"""The grid stage: resumable after a kill, one MLflow run per grid run, Ray equals inline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cltm.config import load_config
from cltm.train import executors
from cltm.train.runner import pending, worker_settings
from tests.conftest import TINY_HUBERT, write_synthetic_subsets

REPO = Path(__file__).resolve().parents[1]


#: Where make_project's grid reads and writes (dvc.yaml's paths for the gender task).
GENDER = (Path("data/subsets/gender"), Path("metrics/runs/gender"))
ROOTS = (Path("data/subsets"), Path("metrics/runs"))


def make_project(root: Path, seeds=(0, 1)) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update({"seeds": list(seeds), "threads": 1, "device": "cpu"})
    for task in params["tasks"].values():
        task["seeds"] = None  # every task on train.seeds
    params["model"]["random_init"] = TINY_HUBERT
    params["pretrain"]["enabled"] = False
    # Fine-tuning runs: slow enough (about 0.1 s each) for a kill to land mid-grid.
    params["tasks"]["gender"].update({"encoder": "finetune", "epochs": 1, "lr": 3e-4})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_synthetic_subsets(root / "data" / "subsets" / "gender", "gender")
    return root


def _env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    return env


def _grid(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cltm", "--no-progress", "grid", "--task",
                             "gender", "--subsets", "data/subsets/gender", "--runs",
                             "metrics/runs/gender", "--models", "models/gender"],
                            cwd=root, env=_env(root), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _records(root: Path) -> dict[str, dict]:
    path = root / "metrics" / "runs" / "gender" / "runs.jsonl"
    out = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[rec["run_id"]] = rec
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("whole"))
    proc = _grid(root)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return root


def test_store_holds_one_record_per_run(uninterrupted):
    records = _records(uninterrupted)
    assert len(records) == (3 * 3 + 3) * 2
    assert all(0.0 <= r["score"] <= 1.0 and r["wall_s"] > 0 for r in records.values())


def test_mlflow_has_one_run_per_grid_run(uninterrupted):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_env(uninterrupted)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("cltm-gender")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(children) == 24
    one = children[0].data
    assert {"task", "target", "condition", "donor", "seed", "train.lr", "N", "model"} <= set(
        one.params)
    assert {"score", "loss_final", "wall_s"} <= set(one.metrics)
    assert one.tags["run_hash"]


def test_killed_grid_resumes_without_retraining(uninterrupted, tmp_path):
    root = make_project(tmp_path)
    proc = _grid(root)
    store = root / "metrics" / "runs" / "gender" / "runs.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if store.is_file() and len(store.read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _records(root)
    assert 4 <= len(before) < 24, "the kill should land part-way through the grid"

    resumed = _grid(root)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"{len(before)} already done" in out
    after = _records(root)
    for run_id, rec in before.items():
        assert after[run_id] == rec  # kept as it was: same wall time, not retrained
    reference = _records(uninterrupted)
    assert set(after) == set(reference)
    for run_id, rec in reference.items():
        assert after[run_id]["score"] == rec["score"]
        assert after[run_id]["loss_final"] == rec["loss_final"]
        assert after[run_id]["hash"] == rec["hash"]
    # MLflow is complete: every stored run logged once, with its metrics (what the kill left
    # in the logging queue was logged by the resumed execution)
    assert _logged(root) == sorted(r["hash"] for r in after.values())


def _logged(root: Path) -> list[str]:
    """Run hashes of the MLflow runs that hold a score, one entry per run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(_env(root)["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("cltm-gender")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return sorted(r.data.tags["run_hash"] for r in runs
                  if "run_hash" in r.data.tags and "score" in r.data.metrics)


def test_tracker_finds_the_stored_runs_that_mlflow_lacks(tmp_path, monkeypatch):
    from cltm.train.tracking import Tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    records = [{"hash": f"h{i}", "run_id": f"gender/aa/base/{i}", "task": "gender",
                "target": "aa", "condition": "base", "donor": "aa", "seed": i,
                "score": 0.5 + i / 10} for i in range(5)]
    first = Tracker("gender", {"lr": 1e-3})
    assert first.missing([]) == []
    first.start()
    for record in records[:3]:
        first.log_run(record)
    first.close()
    # a second execution (after a kill lost the last two) logs exactly those
    second = Tracker("gender", {"lr": 1e-3})
    assert [r["hash"] for r in second.missing(records)] == ["h3", "h4"]
    second.start()
    for record in second.missing(records):
        second.log_run(record)
    second.close()
    assert Tracker("gender", {"lr": 1e-3}).missing(records) == []


def test_plan_counts_runs_done_and_left(uninterrupted, monkeypatch):
    from cltm.train.runner import plan

    monkeypatch.chdir(uninterrupted)
    gender = next(r for r in plan(load_config("params.yaml"), *ROOTS) if r["task"] == "gender")
    assert (gender["runs"], gender["done"], gender["left"]) == (24, 24, 0)
    assert gender["s_per_run"] > 0 and gender["eta_h"] == 0


def test_adding_a_language_trains_only_its_runs(uninterrupted, tmp_path, monkeypatch):
    import shutil

    root = make_project(tmp_path)
    shutil.copytree(uninterrupted / "metrics", root / "metrics")
    # the same three languages (drawn first, so identical) plus a fourth
    shutil.rmtree(root / "data" / "subsets" / "gender")
    write_synthetic_subsets(root / "data" / "subsets" / "gender", "gender",
                            languages=("aa", "bb", "cc", "dd"))
    monkeypatch.chdir(root)
    jobs, done, total = pending(load_config("params.yaml"), "gender", *GENDER)
    assert total == (16 + 4) * 2 and len(done) == 24
    assert len(jobs) == (20 - 12) * 2
    assert all("dd" in (spec.target, spec.donor) for spec, _ in jobs)


def test_changed_training_param_makes_runs_stale(uninterrupted, monkeypatch):
    monkeypatch.chdir(uninterrupted)
    config = load_config("params.yaml")
    jobs, done, total = pending(config, "gender", *GENDER)
    assert jobs == [] and len(done) == total == 24
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["tasks"]["gender"]["lr"] = 5e-4
    Path("params2.yaml").write_text(yaml.safe_dump(params))
    jobs, done, _ = pending(load_config("params2.yaml"), "gender", *GENDER)
    assert len(jobs) == 24 and not done
    # train.lr does not reach a task with its own lr: nothing goes stale
    params["tasks"]["gender"]["lr"] = config.tasks["gender"].lr
    params["train"]["lr"] = 5e-4 if config.tasks["gender"].lr is not None else params["train"]["lr"]
    Path("params3.yaml").write_text(yaml.safe_dump(params))
    assert pending(load_config("params3.yaml"), "gender", *GENDER)[0] == []


@pytest.mark.slow
def test_ray_executor_gives_inline_results(uninterrupted, monkeypatch, tmp_path):
    """Every run comes back once, equal to the inline run, even when a worker process dies in
    the middle of a chunk of runs (the first chunk it gets kills it; Ray restarts it and the
    chunk is redone)."""
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(uninterrupted)
    config = load_config("params.yaml")
    settings = worker_settings(config, "gender", Path("data/subsets/gender"),
                               Path("models/gender"), checkpoints=None)
    specs = _some_jobs(config)
    inline = {r["run_id"]: r for r in executors.run_inline(settings, specs)}
    died = tmp_path / "died"

    class DiesOnce(executors._RayWorker):
        def run_many(self, jobs):
            if not died.exists():
                died.touch()
                os._exit(1)
            return super().run_many(jobs)

    monkeypatch.setattr(executors, "_RayWorker", DiesOnce)
    try:
        records = list(executors.run_ray(
            settings, specs, gpus_per_worker=1.0, cpus_per_worker=1, cpu_workers=2,
            max_retries=1))
        # Without retries the worker's death is the error the caller sees.
        died.unlink()
        with pytest.raises(ray.exceptions.RayActorError):
            list(executors.run_ray(settings, specs, gpus_per_worker=1.0, cpus_per_worker=1,
                                   cpu_workers=2, max_retries=0))
        # Fused on the workers (train.fuse: 2): the same records to float tolerance
        fused = {r["run_id"]: r for r in executors.run_ray(
            replace(settings, fuse=2), specs, gpus_per_worker=1.0, cpus_per_worker=1,
            cpu_workers=2, max_retries=0)}
    finally:
        ray.shutdown()
    assert max(r["fused"] for r in fused.values()) == 2
    for run_id, rec in inline.items():
        assert fused[run_id]["hash"] == rec["hash"]
        assert fused[run_id]["score"] == pytest.approx(rec["score"], abs=1e-5)
        assert fused[run_id]["loss_final"] == pytest.approx(rec["loss_final"], abs=1e-5)
    remote = {r["run_id"]: r for r in records}
    assert died.exists()  # a worker did die
    assert len(records) == len(remote) and set(remote) == set(inline)  # each run once
    for run_id, rec in inline.items():
        assert remote[run_id]["score"] == rec["score"]
        assert remote[run_id]["loss_final"] == rec["loss_final"]


@pytest.mark.slow
def test_ray_grid_spreads_over_nodes_and_survives_losing_one(uninterrupted, tmp_path,
                                                            monkeypatch):
    """The whole grid stage on a local three-node Ray cluster (Ray's own test cluster, each
    node a raylet of its own): runs land on more than one node; the node of a worker that
    has stored runs is removed mid-grid; every run still ends in the store once, logged to
    MLflow once, with the inline results."""
    import threading

    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from cltm.train.runner import run_grid

    root = make_project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update({"executor": "ray", "ray": {
        "cpu_workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 1.0, "max_retries": 3}})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")

    class Where(executors._RayWorker):  # records where each run ran
        def run_many(self, jobs):
            import ray as r

            node = r.get_runtime_context().get_node_id()
            return [{**record, "node": node} for record in super().run_many(jobs)]

    monkeypatch.setattr(executors, "_RayWorker", Where)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]  # 2 workers and a spare node
    store = root / "metrics" / "runs" / "gender" / "runs.jsonl"
    removed: list[str] = []

    def remove_a_busy_node() -> None:
        deadline = time.time() + 600
        while time.time() < deadline:
            nodes = [json.loads(x).get("node") for x in
                     (store.read_text().splitlines() if store.is_file() else [])]
            if len(nodes) >= 6:
                node = next(n for n in workers if n.node_id == nodes[-1])
                cluster.remove_node(node)
                removed.append(node.node_id)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=remove_a_busy_node, daemon=True)
    try:
        ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
        watcher.start()
        run_grid(load_config("params.yaml"), "gender", Path("data/subsets/gender"),
                 Path("metrics/runs/gender"), Path("models/gender"), progress=False)
        watcher.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    records = _records(root)
    reference = _records(uninterrupted)
    assert set(records) == set(reference)
    for run_id, rec in reference.items():
        assert records[run_id]["score"] == rec["score"]
        assert records[run_id]["loss_final"] == rec["loss_final"]
    nodes = {r["node"] for r in records.values()}
    assert len(removed) == 1 and removed[0] in nodes and len(nodes) >= 2
    # every run logged exactly once (a run redone after the node loss is not logged twice)
    assert _logged(root) == sorted(r["hash"] for r in records.values())


def _some_jobs(config):
    from cltm.train.grid import Fingerprints, grid_specs
    from cltm.train.runner import settings_of

    fp = Fingerprints(Path("data/subsets/gender"), settings_of(config, "gender"))
    specs = grid_specs("gender", ["aa", "bb"], [7])
    return [(s, fp(s)) for s in specs]
