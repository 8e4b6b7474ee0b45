"""Gender recognition: a binary classifier of the speaker's gender, scored by macro-F1.

N counts clips per class in D_i and in D'_i; the evaluation clips are every test clip of the
target (or a gender-balanced cap of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from cltm.tasks.base import Classify, Task, TaskConfig

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from cltm.config import Config

CLASSES = ["female", "male"]


@dataclass(frozen=True)
class GenderSettings(TaskConfig):
    eval_max_per_language: int | None  # cap on test clips per language (gender-balanced)


class Gender(Task):
    Settings = GenderSettings
    title = "Gender recognition (macro-F1)"
    # The paper's Table 1 and §4.4 (full 44 x 44, mHuBERT-147, 10 seeds), as PROTOCOL.md gives it.
    paper: ClassVar[dict[str, float]] = {
        "n_languages": 44, "rfd1": 0.162, "asym_rel": 0.175, "prop_pos": 0.9997,
        "reciprocity_pos": 0.9993, "cos_rows": 0.990, "intra_family_pos": 0.0498,
        "se_median": 0.062, "se_mean": 0.075, "rms": 0.935, "self_gain_mean": 0.304,
        "self_gain_std": 0.089,
    }
    embedding_layers = 1
    project = False
    degenerate_what = "runs predicting a single class"

    def problem(self, name: str, settings: TaskConfig) -> str | None:
        cap = settings.eval_max_per_language
        if cap is not None and cap < 2:
            return f"tasks.{name}.eval_max_per_language must be at least 2 (or null for no cap)"
        return None

    def select(self, config: Config, name: str, table: pd.DataFrame, N: int,
               common: dict[str, Any]) -> pd.DataFrame:
        from cltm.data import subsets

        s = config.tasks[name]
        return subsets.select_gender(table, config.data.languages, N, s.clips_per_speaker,
                                     eval_max_per_language=s.eval_max_per_language,
                                     draws=config.draws_of(name), **common)

    def select_curve(self, config: Config, name: str, table: pd.DataFrame, N_grid: list[int],
                     common: dict[str, Any]) -> pd.DataFrame:
        from cltm.data import subsets

        s = config.tasks[name]
        return subsets.select_curve(table, task="gender", N_grid=N_grid,
                                    clips_per_speaker=s.clips_per_speaker,
                                    eval_max_per_language=s.eval_max_per_language, **common)

    def targets(self, rows: pd.DataFrame, extras: Any) -> tuple[list[str], list[int]]:
        index = {c: i for i, c in enumerate(CLASSES)}
        return CLASSES, [index[g] for g in rows["gender"]]

    def score(self, target: str, eval_rows: pd.DataFrame, embeddings: torch.Tensor,
              classify: Classify, extras: Any) -> dict[str, Any]:
        import numpy as np

        from cltm.train.loop import macro_f1

        pred = classify(embeddings)
        truth = (eval_rows["gender"] == "male").astype(int).to_numpy()
        # A run that predicts one class for every clip has learnt nothing about gender
        # (macro-F1 0.333 on a balanced set): counted as such by degenerate().
        return {"score": macro_f1(truth, pred), "eval_clips": len(eval_rows),
                "pred_classes": len(np.unique(pred)), "pred_male_share": float(np.mean(pred))}

    def degenerate(self, runs: pd.DataFrame) -> pd.Series:
        # Stores written before pred_classes was recorded: macro-F1 ≤ 1/3, what one class
        # scores on a balanced set.
        if "pred_classes" in runs.columns and runs["pred_classes"].notna().all():
            return runs["pred_classes"] <= 1
        return runs["score"] <= 1.0 / 3.0 + 1e-9


TASK = Gender()
