"""The `grid@TASK` stage: train and score every run of a task's grid (resumable)."""

from __future__ import annotations

from pathlib import Path

from cltm.config import Config


def run(config: Config, task: str, subsets: Path, runs: Path, models: Path,
        progress: bool) -> None:
    from cltm.train.runner import run_grid

    run_grid(config, task, subsets, runs, models, progress=progress)
