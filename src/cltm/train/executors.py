"""Executors: the same (spec, hash) jobs in, the same records out.

`inline` runs one warm worker in this process on the local device. `ray` connects to the Ray
cluster named by RAY_ADDRESS (or starts a local one), places one warm worker per GPU (or per
`gpus_per_worker` of one), and retries a run whose worker died. Records come back to this process,
which alone writes them down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

from cltm.train.grid import RunSpec
from cltm.train.worker import Worker, WorkerSettings

log = logging.getLogger(__name__)

Job = tuple[RunSpec, str]


def run_inline(settings: WorkerSettings, jobs: Sequence[Job]) -> Iterator[dict[str, Any]]:
    if not jobs:
        return
    yield from Worker(settings).run_many(jobs)  # K at a time (train.fuse)


class _RayWorker:
    """The Ray actor: a Worker that also reports where it runs."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.worker = Worker(settings)

    def run(self, spec: RunSpec, run_hash: str) -> dict[str, Any]:
        return self.worker.run(spec, run_hash)


def run_ray(settings: WorkerSettings, jobs: Sequence[Job], *, gpus_per_worker: float,
            cpus_per_worker: float, cpu_workers: int, max_retries: int,
            in_flight_per_worker: int = 2) -> Iterator[dict[str, Any]]:
    """Spread jobs over Ray workers; yield records as they finish (in any order)."""
    if not jobs:
        return
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    if not ray.is_initialized():
        # With RAY_ADDRESS set, ray.init() joins that cluster; otherwise it starts a local one.
        ray.init(log_to_driver=False, include_dashboard=False)
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus > 0 and gpus_per_worker > 0:
        n_workers, num_gpus = max(1, int(gpus / gpus_per_worker)), gpus_per_worker
    else:
        n_workers, num_gpus = cpu_workers, 0
    n_workers = min(n_workers, len(jobs))
    log.info("ray: %d workers (%s GPU each) over %d runs", n_workers, num_gpus, len(jobs))
    actor_cls = ray.remote(_RayWorker).options(
        num_cpus=cpus_per_worker, num_gpus=num_gpus,
        max_restarts=max_retries, max_task_retries=max_retries,
    )
    # Inside an actor, Ray exposes only its GPU, which is then cuda:0.
    actor_settings = replace(settings, device="auto")
    actors = [actor_cls.remote(actor_settings) for _ in range(n_workers)]
    pending = list(jobs)[::-1]
    running: dict[Any, tuple[Any, Job, int]] = {}

    def submit(actor: Any, job: Job, attempt: int = 0) -> None:
        running[actor.run.remote(*job)] = (actor, job, attempt)

    for actor in actors:
        for _ in range(in_flight_per_worker):
            if pending:
                submit(actor, pending.pop())
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            actor, job, attempt = running.pop(ref)
            try:
                record = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                if attempt >= max_retries:
                    raise
                log.warning("run %s failed on a worker (%s); retrying", job[0].run_id,
                            type(exc).__name__)
                submit(actor, job, attempt + 1)
                continue
            if pending:
                submit(actor, pending.pop())
            yield record
    finally:
        # Runs still in flight when this stops early (an error, or the caller stopped reading)
        # die with their actors; Ray refuses force-cancelling an actor task.
        for ref in running:
            ray.cancel(ref)
        for actor in actors:
            ray.kill(actor)
