"""A task defined outside the package, for tests/test_tasks.py: which of two classes a clip's
speaker is in, scored by accuracy. Its params block names this module and one key of its own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cltm.data import subsets
from cltm.tasks.base import Task, TaskConfig


@dataclass(frozen=True)
class ToySettings(TaskConfig):
    positive: str  # the gender that is class 1


class Toy(Task):
    Settings = ToySettings
    title = "Toy task (accuracy)"
    embedding_layers = 1
    project = False
    degenerate_what = "runs at or below chance accuracy"

    def problem(self, name, settings):
        if settings.positive not in ("female", "male"):
            return f"tasks.{name}.positive must be female or male"
        return None

    def select(self, config, name, table, N, common):
        s = config.tasks[name]
        return subsets.select_gender(table, config.data.languages, N, s.clips_per_speaker,
                                     eval_max_per_language=None, draws=config.draws_of(name),
                                     **common)

    def targets(self, rows: pd.DataFrame, extras: ToySettings):
        return ["other", extras.positive], [int(g == extras.positive) for g in rows["gender"]]

    def score(self, target, eval_rows, embeddings, classify, extras) -> dict[str, Any]:
        truth = (eval_rows["gender"] == extras.positive).astype(int).to_numpy()
        accuracy = float(np.mean(classify(embeddings) == truth))
        return {"score": accuracy, "eval_clips": len(eval_rows)}

    def degenerate(self, runs: pd.DataFrame) -> pd.Series:
        return runs["score"] <= 0.5


TASK = Toy()
