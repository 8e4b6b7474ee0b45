"""The task interface: what the stages ask of a task, and how a task module is found.

A task decides which clips make D_i, D'_i and the evaluation set (`select`), writes any files
its scoring needs beside the subsets (`write_extras`, read back by `load_extras`), turns
training rows into targets (`targets`), scores a trained model on a target's evaluation clips
(`score`), says which runs learnt nothing (`degenerate`), and gives the report its title and the
paper's values. Its params block is validated once, at the edge, as its `Settings` dataclass.

This module imports nothing of the data or training stack: the config loads a task module by
name to validate its block, and a task module imports what it runs inside its methods.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from cltm.errors import CltmError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch


@dataclass(frozen=True)
class TaskConfig:
    """What every task's params block holds: its code, its sizes, and its own values of
    train.* (null: train's)."""

    module: str  # the task's code: an importable module whose TASK is a Task
    # Clips in D and in D' (the task says in which unit); auto: the curve stage's choice.
    N: int | Literal["auto"]
    clips_per_speaker: int
    lr: float | None
    epochs: int | None
    seeds: list[int] | None
    head_init: Literal["random", "zero"] | None
    head_lr_scale: float | None
    encoder: Literal["finetune", "frozen"] | None


#: The validated params (cltm.config.Config). Not imported, not even for type checking: the
#: config imports this module to build the task blocks.
Config = Any

#: classify(embeddings) -> each row's class index, under the run's own head.
Classify = Callable[["torch.Tensor"], "np.ndarray"]


class Task:
    """One task of the CLTM. `name` is its key under `tasks:` (one module may serve several
    keys, each with its own settings)."""

    #: The dataclass its params block is validated as.
    Settings: ClassVar[type[TaskConfig]] = TaskConfig
    #: The report's heading of the task's section.
    title: ClassVar[str]
    #: The paper's diagnostics of this task (Table 1), or None where the paper has none.
    paper: ClassVar[dict[str, float] | None] = None
    #: The fine-tuned encoder's last hidden layers averaged into the head's input.
    embedding_layers: ClassVar[int]
    #: Frozen encoder: the head projects the features before classifying, and the
    #: projection is the run's embedding (a verification embedding); else it classifies them.
    project: ClassVar[bool]
    #: Cross runs also embed the donor's probe clips (the geometry stage's distances).
    donor_probes: ClassVar[bool] = False
    #: What a degenerate run of this task is, in the words of run_health.json.
    degenerate_what: ClassVar[str]

    def problem(self, name: str, settings: TaskConfig) -> str | None:
        """What is wrong with the task's own settings (beyond their types), or None."""
        return None

    def n_problem(self, name: str, settings: TaskConfig, N: int) -> str | None:
        """Why N training clips (in the task's unit) cannot be drawn, or None."""
        if N < 1:
            return "must be positive"
        if N % settings.clips_per_speaker:
            return (f"must be a multiple of tasks.{name}.clips_per_speaker "
                    f"({settings.clips_per_speaker}): every speaker gives the same number of "
                    "clips")
        return None

    def select(self, config: Config, name: str, table: pd.DataFrame, N: int,
               common: dict[str, Any]) -> pd.DataFrame:
        """The manifest of D, D' (per draw) and the evaluation clips, from the release table;
        `common`: the data.* selection settings every task takes (subsets.select_gender's
        keywords: seed, shared_pool, pool, exclude, drop_short and the duration bounds)."""
        raise NotImplementedError

    def select_curve(self, config: Config, name: str, table: pd.DataFrame, N_grid: list[int],
                     common: dict[str, Any]) -> pd.DataFrame:
        """The learning curve's manifest: nested training sets for every N of N_grid;
        `common`: subsets.select_curve's keywords languages, seed, pool, exclude and the
        duration bounds."""
        raise CltmError(f"the task {name} has no learning curve: set curve.enabled: false or "
                        f"leave {name} out of curve.N_grid")

    def write_extras(self, config: Config, name: str, manifest: pd.DataFrame,
                     out_dir: Path) -> None:
        """Write what scoring needs beside the manifest (speaker: the trials)."""

    def load_extras(self, subsets_dir: Path, settings: TaskConfig) -> Any:
        """What a worker keeps for targets() and score(): what write_extras wrote, and any of
        the settings they need (the worker holds no config)."""
        return settings

    def targets(self, rows: pd.DataFrame, extras: Any) -> tuple[list[str], list[int]]:
        """(the classes of a run's head, each training row's class index)."""
        raise NotImplementedError

    def score(self, target: str, eval_rows: pd.DataFrame, embeddings: torch.Tensor,
              classify: Classify, extras: Any) -> dict[str, Any]:
        """A run's result on its target's evaluation clips `eval_rows` (embedded, one row
        each): `score` (its Perf) and what else degenerate() and the report read."""
        raise NotImplementedError

    def degenerate(self, runs: pd.DataFrame) -> pd.Series:
        """Which runs of a run store learnt nothing (a boolean per row)."""
        raise NotImplementedError


def own_settings(settings: TaskConfig) -> dict[str, Any]:
    """The keys a task's block adds to TaskConfig's, with their values (a run's hash covers
    them: they may decide what a run computes)."""
    common = {f.name for f in dataclasses.fields(TaskConfig)}
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if f.name not in common}


def load(module: str) -> Task:
    """The Task of `module` (its TASK), with an error that names what is wrong."""
    try:
        found = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise CltmError(f"task module {module!r} cannot be imported ({exc}); a task's "
                        "`module` names an importable module, e.g. cltm.tasks.gender") from exc
    task = getattr(found, "TASK", None)
    if not isinstance(task, Task):
        raise CltmError(f"task module {module!r} defines no TASK (an instance of "
                        "cltm.tasks.base.Task)")
    return task
