"""Executors: the same (spec, hash) jobs in, the same records out.

`inline` runs one warm worker in this process on the local device. `ray` connects to the Ray
cluster named by RAY_ADDRESS (or starts a local one), places one warm worker per GPU (or per
`gpus_per_worker` of one), hands each worker consecutive runs of the grid in chunks that it
trains fused (train.fuse), and retries a chunk whose worker died. Records come back to this
process, which alone writes them down.
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


def chunk_size(settings: WorkerSettings) -> int:
    """Runs a Ray worker gets at once: twice its fused K (a chunk of consecutive grid runs splits
    into groups of one seed and one step count), or 128 where K is picked on the worker."""
    return 128 if settings.fuse == "auto" else 2 * int(settings.fuse)


class _RayWorker:
    """The Ray actor: a warm Worker that trains a chunk of runs, fused as train.fuse says."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.worker = Worker(settings)

    def run_many(self, jobs: Sequence[Job]) -> list[dict[str, Any]]:
        return list(self.worker.run_many(jobs))


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
    size = chunk_size(settings)
    chunks = [list(jobs[i : i + size]) for i in range(0, len(jobs), size)]
    n_workers = min(n_workers, len(chunks))
    log.info("ray: %d workers (%s GPU each) over %d runs in chunks of %d", n_workers, num_gpus,
             len(jobs), size)
    actor_cls = ray.remote(_RayWorker).options(
        num_cpus=cpus_per_worker, num_gpus=num_gpus,
        max_restarts=max_retries, max_task_retries=max_retries,
    )
    # Inside an actor, Ray exposes only its GPU, which is then cuda:0.
    actor_settings = replace(settings, device="auto")
    actors = [actor_cls.remote(actor_settings) for _ in range(n_workers)]
    pending = chunks[::-1]
    running: dict[Any, tuple[Any, list[Job], int]] = {}

    def submit(actor: Any, chunk: list[Job], attempt: int = 0) -> None:
        running[actor.run_many.remote(chunk)] = (actor, chunk, attempt)

    for actor in actors:
        for _ in range(in_flight_per_worker):
            if pending:
                submit(actor, pending.pop())
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            ref = done[0]
            actor, chunk, attempt = running.pop(ref)
            try:
                records = ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                if attempt >= max_retries:
                    raise
                log.warning("runs %s to %s failed on a worker (%s); retrying", chunk[0][0].run_id,
                            chunk[-1][0].run_id, type(exc).__name__)
                submit(actor, chunk, attempt + 1)
                continue
            if pending:
                submit(actor, pending.pop())
            yield from records
    finally:
        # Runs still in flight when this stops early (an error, or the caller stopped reading)
        # die with their actors; Ray refuses force-cancelling an actor task.
        for ref in running:
            ray.cancel(ref)
        for actor in actors:
            ray.kill(actor)
