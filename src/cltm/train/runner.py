"""The grid stage: what is left to run, who runs it, where the results go.

Resumable by construction: runs whose hash is in the store are skipped, stale ones (their
inputs changed) are rerun, and every finished run is on disk before the next one starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cltm import sources
from cltm.config import Config
from cltm.errors import CltmError
from cltm.layout import MANIFEST
from cltm.tasks.base import own_settings
from cltm.train import executors
from cltm.train.grid import Fingerprints, RunSpec, curve_specs, grid_specs
from cltm.train.loop import TrainParams
from cltm.train.store import RunStore
from cltm.train.worker import WorkerSettings

log = logging.getLogger(__name__)

#: What runs a run: the code its hash covers (with everything it imports, sources.closure),
#: so that editing any of it makes the stored results stale. The grid stage's deps in dvc.yaml
#: cover the same files (a test holds them so).
RESULT_MODULES = ("cltm.train.worker",)


def _model_digest(name_or_path: str) -> str | None:
    """Content hash of a local model directory: new weights under the same path are a new model."""
    path = Path(name_or_path)
    if not path.is_dir():
        return None  # a hub id names fixed weights (pin a revision by downloading it)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _architecture(name_or_path: str, random_init: dict[str, Any] | None) -> str | None:
    """The encoder's model type (hubert, wav2vec2, wavlm, data2vec-audio): from the random
    config, or a local directory's config.json; None for a hub id (the id names it)."""
    if random_init is not None:
        return random_init["model_type"]
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("model_type")
    return None


def train_params(config: Config, task: str | None = None) -> TrainParams:
    """The training params of `task`'s runs: `train.*`, with the task's own `lr`, `epochs`,
    `head_init`, `head_lr_scale` and `encoder` (`tasks.<task>.*`) where set."""
    t = config.train
    own = config.tasks[task] if task is not None else None

    def pick(key: str) -> Any:
        value = getattr(own, key) if own is not None else None
        return getattr(t, key) if value is None else value

    return TrainParams(lr=pick("lr"), weight_decay=t.weight_decay, grad_clip=t.grad_clip,
                       epochs=pick("epochs"), batch_size=t.batch_size, precision=t.precision,
                       head_init=pick("head_init"), head_lr_scale=pick("head_lr_scale"),
                       encoder=pick("encoder"))


def settings_of(config: Config, task: str, curve: bool = False) -> dict[str, Any]:
    """Everything besides the data that determines a run's result (hashed into every run).

    Curve runs leave out tasks.<task>.N: their sizes come from curve.N_grid, and the curve
    must not be retrained when the N it chose is written into the params.
    """
    m = config.model
    settings = {
        "task": task,
        "model": m.name_or_path if m.random_init is None else "random",
        "random_init": m.random_init,
        "init_seed": m.init_seed if m.random_init is not None else None,
        "weights": _model_digest(m.name_or_path) if m.random_init is None else None,
        "architecture": _architecture(m.name_or_path, m.random_init),
        **{f"train.{k}": v for k, v in asdict(train_params(config, task)).items()},
        "N": config.tasks[task].N,
        "probe_clips": config.analysis.probe_clips,
        "code": sources.digest(RESULT_MODULES),
        "task_code": sources.task_digest(config.tasks[task].module),
        "task_settings": own_settings(config.tasks[task]),
    }
    if curve:
        del settings["N"]
    return settings


def worker_settings(config: Config, task: str, data_dir: Path, models_dir: Path | None, *,
                    checkpoints: str | None) -> WorkerSettings:
    """The worker's settings for `task`'s runs on the subsets in `data_dir`, writing any
    checkpoints to `models_dir`; `checkpoints` overrides train.checkpoints (None: train's)."""
    t, m = config.train, config.model
    return WorkerSettings(
        task=task, task_module=config.tasks[task].module, task_settings=config.tasks[task],
        subsets_dir=str(Path(data_dir).resolve()),
        name_or_path=m.name_or_path, random_init=m.random_init, init_seed=m.init_seed,
        train=train_params(config, task), device=t.device, threads=t.threads,
        checkpoints=checkpoints or t.checkpoints,
        checkpoints_dir=str(Path(models_dir).resolve()) if models_dir else None,
        first_seed=config.seeds_of(task)[0],
        probe_clips=config.analysis.probe_clips, probe_seed=config.data.selection_seed,
        fuse=t.fuse,
    )


def pending(config: Config, task: str, subsets: Path, runs: Path,
            settings: dict[str, Any] | None = None
            ) -> tuple[list[tuple[RunSpec, str]], dict[str, dict], int]:
    """(jobs still to run, stored records of the current grid by hash, grid size), for the
    subsets in `subsets` and the run store `runs`.

    `settings` is settings_of(config, task), computed here when not given (it hashes the
    model's weights, so a caller that needs it too passes it in).
    """
    if not (Path(subsets) / MANIFEST).is_file():
        raise CltmError(f"{subsets}/{MANIFEST} is missing: run `dvc repro subsets@{task}` "
                        "first")
    if settings is None:
        settings = settings_of(config, task)
    fingerprint = Fingerprints(subsets, settings)
    languages = sorted(fingerprint.manifest["language"].unique())
    specs = grid_specs(task, languages, config.seeds_of(task))
    return _split(specs, fingerprint, RunStore(runs))


def _split(specs: list[RunSpec], fingerprint: Fingerprints,
           store: RunStore) -> tuple[list[tuple[RunSpec, str]], dict[str, dict], int]:
    stored = store.load()
    jobs, done = [], {}
    for spec in specs:
        h = fingerprint(spec)
        if h in stored:
            done[h] = stored[h]
        else:
            jobs.append((spec, h))
    return jobs, done, len(specs)


def run_grid(config: Config, task: str, subsets: Path, runs: Path, models: Path,
             progress: bool = True) -> None:
    """Run what is left of `task`'s grid on `subsets` into the run store `runs`, checkpoints
    (train.checkpoints) into `models`."""
    settings = settings_of(config, task)
    jobs, done, total = pending(config, task, subsets, runs, settings)
    store = RunStore(runs)
    models.mkdir(parents=True, exist_ok=True)
    (models / "README.txt").write_text(
        f"Fine-tuned checkpoints of the {task} grid (train.checkpoints: "
        f"{config.train.checkpoints}), safetensors, one file per run id.\n")
    log.info("%s grid: %d runs, %d already done, %d to run", task, total, len(done), len(jobs))
    _execute(config, jobs, done, store, progress,
             worker_settings(config, task, subsets, models, checkpoints=None),
             run_name=task, tracked=settings)
    _finish(store, done)


def run_curve(config: Config, task: str, data: Path, runs: Path,
              progress: bool = True) -> None:
    """The base runs of the learning curve over curve.N_grid.<task> on the curve's subsets in
    `data`, through the same workers and the same kind of store (`runs`) as the grid
    (resumable, MLflow-logged)."""
    if not (Path(data) / MANIFEST).is_file():
        raise CltmError(f"{data}/{MANIFEST} is missing: the curve stage builds it first")
    cv = config.curve
    tracked = settings_of(config, task, curve=True)
    fingerprint = Fingerprints(data, tracked)
    languages = sorted(fingerprint.manifest["language"].unique())
    specs = curve_specs(task, languages, cv.N_grid[task], cv.seeds)
    store = RunStore(runs)
    jobs, done, total = _split(specs, fingerprint, store)
    log.info("%s curve: %d runs, %d already done, %d to run", task, total, len(done), len(jobs))
    settings = worker_settings(config, task, data, None, checkpoints="none")
    _execute(config, jobs, done, store, progress, settings, run_name=f"{task}-curve",
             tracked=tracked)
    _finish(store, done)


def _finish(store: RunStore, done: dict[str, dict]) -> None:
    # The store now holds exactly the current grid: stale records of changed inputs go.
    store.rewrite(sorted(done.values(), key=lambda r: r["run_id"]))
    store.prune_probes(done)


def _execute(config: Config, jobs: list, done: dict, store: RunStore, progress: bool,
             settings: WorkerSettings, *, run_name: str, tracked: dict[str, Any]) -> None:
    """Run `jobs` on workers, append each record to `store` and `done`, log them to MLflow
    under `run_name` with `tracked` (the settings hashed into the runs) as its params; first
    log the stored runs (`done`) that MLflow lacks. With nothing to run and nothing missing,
    MLflow gets no new parent run."""
    from cltm.train.tracking import Tracker

    if not jobs and not done:
        return
    tracker = Tracker(run_name, tracked)
    missing = tracker.missing(done.values())
    if not jobs and not missing:
        return
    tracker.start()
    if missing:
        log.info("MLflow lacked %d stored runs (an interrupted execution); logging them",
                 len(missing))
        for record in missing:
            tracker.log_run(record)
    t = config.train
    if t.executor == "ray":
        records = executors.run_ray(
            settings, jobs, gpus_per_worker=t.ray.gpus_per_worker,
            cpus_per_worker=t.ray.cpus_per_worker, cpu_workers=t.ray.cpu_workers,
            max_retries=t.ray.max_retries)
    else:
        records = executors.run_inline(settings, jobs)
    status = "FAILED"
    bar = tqdm(total=len(jobs), desc=f"{run_name} runs", unit="run",
               disable=not progress)
    try:
        for record in records:
            probes = record.pop("probes", None)
            if probes:
                store.write_probes(record["hash"], probes)
            store.append(record)
            done[record["hash"]] = record
            tracker.log_run(record)
            bar.update()
            bar.set_postfix_str(f"{record['run_id']} score={record['score']:.3f}")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        tracker.close(status)


def plan(config: Config, subsets: Path, runs: Path) -> list[dict[str, Any]]:
    """Per task: runs in the grid, done, left, and the time left at the measured pace, from
    the subsets under `subsets/<task>` and the run stores under `runs/<task>`."""
    rows = []
    for task in config.tasks:
        try:
            jobs, done, total = pending(config, task, subsets / task, runs / task)
        except CltmError:
            n = len(config.data.languages)
            rows.append({"task": task, "runs": (n * n + n) * len(config.seeds_of(task)),
                         "done": 0, "left": None, "s_per_run": None, "eta_h": None,
                         "note": "subsets not built yet"})
            continue
        walls = [r["wall_s"] for r in done.values() if "wall_s" in r]
        per_run = float(np.median(walls)) if walls else None
        workers = 1
        if config.train.executor == "ray":
            workers = config.train.ray.cpu_workers
        rows.append({
            "task": task, "runs": total, "done": len(done), "left": len(jobs),
            "s_per_run": per_run,
            "eta_h": None if per_run is None else len(jobs) * per_run / workers / 3600,
            "note": "",
        })
    return rows
