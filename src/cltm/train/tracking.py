"""MLflow: every run of a grid as a nested run under one parent per stage execution.

Only the process that drives the grid writes to the tracking store, so parallel workers never
contend for the database. Default store: `mlflow.db` (SQLite) in the repository, git-ignored;
MLFLOW_TRACKING_URI points elsewhere (a server) instead.

Logging is off the path that waits for runs: `log_run` queues a record and a thread writes it
(three calls to the store, about 40 ms a run on SQLite). The run store, not MLflow, is the
source of truth: a record queued but not yet written when the process is killed is logged by
the next execution of the grid (`backfill`), which logs every stored record whose run hash
MLflow lacks.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
PARAM_KEYS = ("task", "target", "condition", "donor", "seed")
METRIC_KEYS = ("score", "eer", "loss_final", "loss_mean", "wall_s", "steps", "train_clips")


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


class Tracker:
    def __init__(self, task: str, settings: dict[str, Any]) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        # MLflow's own chatter (alembic migrations) would drown the progress bar.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.mlflow = mlflow
        uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(uri)
        name = f"cltm-{task}"
        exp = self.client.get_experiment_by_name(name)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(name)
        self.tags = {"git_commit": _git_commit(), "task": task}
        if os.environ.get("DVC_EXP_NAME"):
            self.tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
        self.settings = {k: str(v)[:500] for k, v in settings.items()}
        self.name, self.uri = name, uri
        self.parent_id: str | None = None
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="mlflow-log", daemon=True)

    def start(self) -> None:
        """Open this execution's parent run and the thread that writes the queued runs."""
        parent = self.client.create_run(self.experiment_id, run_name=f"grid-{self.tags['task']}",
                                        tags=self.tags)
        self.parent_id = parent.info.run_id
        self._log(self.parent_id, params=self.settings, metrics={})
        log.info("MLflow: experiment %s, parent run %s at %s", self.name, self.parent_id,
                 self.uri)
        self._thread.start()

    def logged_hashes(self) -> set[str]:
        """Run hashes of the runs this experiment holds complete: a run's params, metrics and
        tags go in one log_batch, which writes the tags last, so a run with a hash tag has
        its params and metrics too."""
        hashes: set[str] = set()
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string="tags.run_hash LIKE '%'",
                                           max_results=50_000, page_token=token)
            hashes.update(r.data.tags["run_hash"] for r in page)
            token = page.token
            if not token:
                return hashes

    def missing(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The stored records that MLflow lacks (a kill before they were written)."""
        records = list(records)
        if not records:
            return []
        have = self.logged_hashes()
        return [r for r in records if r["hash"] not in have]

    def _log(self, run_id: str, params: dict[str, Any], metrics: dict[str, float],
             tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_run(self, record: dict[str, Any]) -> None:
        """Queue one run for logging; returns at once."""
        self._queue.put(record)

    def _drain(self) -> None:
        while (record := self._queue.get()) is not None:
            if self._failure is not None:
                continue  # the store has the record; a later execution backfills it
            try:
                self._write(record)
            except Exception as exc:
                self._failure = exc
                log.warning("MLflow logging failed (%s: %s); the run store keeps every "
                            "record and the next execution of the grid logs what is missing",
                            type(exc).__name__, exc)

    def _write(self, record: dict[str, Any]) -> None:
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        run = self.client.create_run(
            self.experiment_id, run_name=record["run_id"],
            tags={**self.tags, MLFLOW_PARENT_RUN_ID: self.parent_id},
        )
        params = {k: record[k] for k in PARAM_KEYS}
        if record.get("n") is not None:
            params["n"] = record["n"]  # a learning-curve run
        params.update(self.settings)
        metrics = {k: record[k] for k in METRIC_KEYS if record.get(k) is not None}
        self._log(run.info.run_id, params, metrics,
                  tags={"run_hash": record["hash"], "device": record.get("device", "")})
        self.client.set_terminated(run.info.run_id)

    def close(self, status: str = "FINISHED") -> None:
        """Write what is queued, then end the parent run."""
        self._queue.put(None)
        self._thread.join()
        if self._failure is not None and status == "FINISHED":
            status = "FAILED"
        self.client.set_terminated(self.parent_id, status=status)
