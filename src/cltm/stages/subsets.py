"""The `subsets@TASK` stage: D, D' and the evaluation clips of a task, their audio packed."""

from __future__ import annotations

from pathlib import Path

from cltm.config import Config


def run(config: Config, task: str, metadata: Path, curve: Path | None, out: Path,
        progress: bool) -> None:
    from cltm.data.build import build_subsets

    build_subsets(config, task, out, metadata, curve_choice=curve, progress=progress)
