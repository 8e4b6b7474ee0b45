"""MLflow: every run of a grid as a nested run under one parent per stage execution.

Only the process that drives the grid writes to the tracking store, so parallel workers never
contend for the database. Default store: `mlflow.db` (SQLite) in the repository, git-ignored;
MLFLOW_TRACKING_URI points elsewhere (a server) instead.

Logging is off the path that waits for runs, and off its interpreter: `log_run` queues a record
and a child process writes it. MLflow's client spends about 45 ms of CPU a run in SQLAlchemy
(three calls to the store), which a thread would take from the driver under Python's GIL: at
19,800 instant runs the driver then ran at MLflow's pace (benchmarks/paper_scale.py). The run
store, not MLflow, is the source of truth: a record queued but not yet written when the process
is killed is logged by the next execution of the grid (`missing`), which logs every stored
record whose run hash MLflow lacks. The child stops writing as soon as its parent is gone, so
it never logs a run twice beside the execution that resumes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
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


def _client(uri: str) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    # MLflow's own chatter (alembic migrations) would drown the progress bar.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def _log(client: Any, run_id: str, params: dict[str, Any], metrics: dict[str, float],
         tags: dict[str, str] | None = None) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
    )


def write_run(client: Any, experiment_id: str, parent_id: str, tags: dict[str, str],
              settings: dict[str, str], record: dict[str, Any]) -> None:
    """One grid run as a nested run: its params (with the grid's settings), metrics and tags.
    The run hash is a tag written with the last batch, so a run that has it is complete."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run = client.create_run(experiment_id, run_name=record["run_id"],
                            tags={**tags, MLFLOW_PARENT_RUN_ID: parent_id})
    params = {k: record[k] for k in PARAM_KEYS}
    if record.get("n") is not None:
        params["n"] = record["n"]  # a learning-curve run
    params.update(settings)
    metrics = {k: record[k] for k in METRIC_KEYS if record.get(k) is not None}
    _log(client, run.info.run_id, params, metrics,
         tags={"run_hash": record["hash"], "device": record.get("device", "")})
    client.set_terminated(run.info.run_id)


def _writer(uri: str, experiment_id: str, parent_id: str, tags: dict[str, str],
            settings: dict[str, str], conn: Connection, parent_pid: int) -> None:
    """The child process: write each record received until the sender closes the pipe.
    Exit status 1 after a failed write (it then writes nothing more: the store keeps the
    records and the next execution logs them)."""
    client = _client(uri)
    failed = False
    while True:
        try:
            record = conn.recv()
        except EOFError:
            break
        if os.getppid() != parent_pid:
            break  # the driver was killed: the execution that resumes logs the rest
        if failed:
            continue
        try:
            write_run(client, experiment_id, parent_id, tags, settings, record)
        except Exception as exc:
            failed = True
            log.warning("MLflow logging failed (%s: %s); the run store keeps every record and "
                        "the next execution of the grid logs what is missing",
                        type(exc).__name__, exc)
    raise SystemExit(1 if failed else 0)


class Tracker:
    def __init__(self, task: str, settings: dict[str, Any]) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)
        self.client = _client(uri)
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
        self._process: multiprocessing.process.BaseProcess | None = None
        self._feeder: threading.Thread | None = None

    def start(self) -> None:
        """Open this execution's parent run and the process that writes the queued runs."""
        parent = self.client.create_run(self.experiment_id, run_name=f"grid-{self.tags['task']}",
                                        tags=self.tags)
        self.parent_id = parent.info.run_id
        _log(self.client, self.parent_id, params=self.settings, metrics={})
        log.info("MLflow: experiment %s, parent run %s at %s", self.name, self.parent_id,
                 self.uri)
        # spawn, not fork: the driver may hold threads (torch's, Ray's) that fork would copy
        # in whatever state they were in.
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_writer, name="mlflow-log", daemon=True,
            args=(self.uri, self.experiment_id, self.parent_id, self.tags, self.settings,
                  receive, os.getpid()))
        self._process.start()
        receive.close()  # the child's end: the child sees EOF once `send` closes
        # A pipe holds 64 KB: a thread feeds it, so that log_run never waits for the child.
        self._feeder = threading.Thread(target=self._feed, args=(send,), name="mlflow-feed",
                                        daemon=True)
        self._feeder.start()

    def _feed(self, send: Connection) -> None:
        try:
            while (record := self._queue.get()) is not None:
                send.send(record)
        except OSError:
            pass  # the child is gone (it logged a failure); the store keeps the records
        finally:
            send.close()

    def logged_hashes(self) -> set[str]:
        """Run hashes of the runs this experiment holds complete (see write_run)."""
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

    def log_run(self, record: dict[str, Any]) -> None:
        """Queue one run for logging; returns at once."""
        self._queue.put(record)

    def close(self, status: str = "FINISHED") -> None:
        """End the parent run. Finished: after everything queued is written. Otherwise (an
        interrupt): at once; what was not written is logged by the next execution."""
        self._queue.put(None)
        if self._feeder is not None and self._process is not None:
            if status == "FINISHED":
                self._feeder.join()
                self._process.join()
                if self._process.exitcode != 0:
                    status = "FAILED"
            else:
                self._process.terminate()
                self._process.join()
        self.client.set_terminated(self.parent_id, status=status)
