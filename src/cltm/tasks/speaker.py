"""Speaker verification: a speaker-ID classifier whose embedding scores trials by cosine
similarity, scored by AUC (EER beside it).

N counts clips in D_i and in D'_i, from an even number of speakers balanced by gender; the
evaluation set is the target's trials among its test speakers (trials.csv, drawn once).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cltm.layout import TRIALS
from cltm.tasks.base import Classify, Task, TaskConfig

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from cltm.config import Config

#: A run at or below this AUC orders its trials no better than chance.
CHANCE_AUC = 0.5
#: The verification embedding of a fine-tuned encoder: the mean of its last 4 hidden layers.
SPEAKER_LAYERS = 4


@dataclass(frozen=True)
class SpeakerSettings(TaskConfig):
    max_pairs_per_speaker: int  # cap on target trials per speaker


class Speaker(Task):
    Settings = SpeakerSettings
    title = "Speaker verification (AUC)"
    paper: ClassVar[dict[str, float]] = {
        "n_languages": 44, "rfd1": 2.970, "asym_rel": 1.084, "prop_pos": 0.0893,
        "reciprocity_pos": 0.1691, "cos_rows": 0.615, "intra_family_pos": 0.4168,
        "se_median": 0.468, "se_mean": 0.545, "rms": 2.25, "self_gain_mean": 0.037,
        "self_gain_std": 0.016,
    }
    embedding_layers = SPEAKER_LAYERS
    project = True
    donor_probes = True
    degenerate_what = f"runs with AUC <= {CHANCE_AUC:g} (chance)"

    def problem(self, name: str, settings: TaskConfig) -> str | None:
        if settings.max_pairs_per_speaker < 1:
            return f"tasks.{name}.max_pairs_per_speaker must be positive"
        return None

    def n_problem(self, name: str, settings: TaskConfig, N: int) -> str | None:
        problem = super().n_problem(name, settings, N)
        cps = settings.clips_per_speaker
        if problem is None and (N // cps) % 2:
            problem = (f"/ clips_per_speaker ({cps}) = {N // cps} speakers per subset must be "
                       "even (speakers are balanced by gender)")
        return problem

    def select(self, config: Config, name: str, table: pd.DataFrame, N: int,
               common: dict[str, Any]) -> pd.DataFrame:
        from cltm.data import subsets

        s = config.tasks[name]
        return subsets.select_speaker(table, config.data.languages, N, s.clips_per_speaker,
                                      draws=config.draws_of(name), **common)

    def select_curve(self, config: Config, name: str, table: pd.DataFrame, N_grid: list[int],
                     common: dict[str, Any]) -> pd.DataFrame:
        from cltm.data import subsets

        s = config.tasks[name]
        return subsets.select_curve(table, task="speaker", N_grid=N_grid,
                                    clips_per_speaker=s.clips_per_speaker,
                                    eval_max_per_language=None, **common)

    def write_extras(self, config: Config, name: str, manifest: pd.DataFrame,
                     out_dir: Path) -> None:
        import logging

        from cltm.data import subsets

        trials = subsets.make_trials(
            manifest[manifest["role"] == "eval"].drop(columns="draw", errors="ignore"),
            seed=config.data.trials_seed,
            max_pairs_per_speaker=config.tasks[name].max_pairs_per_speaker)
        trials.to_csv(Path(out_dir) / TRIALS, index=False)
        logging.getLogger(__name__).info("speaker trials: %d (%d target pairs)", len(trials),
                                         int(trials["label"].sum()))

    def load_extras(self, subsets_dir: Path, settings: TaskConfig) -> Any:
        import pandas as pd

        return pd.read_csv(Path(subsets_dir) / TRIALS)

    def targets(self, rows: pd.DataFrame, extras: Any) -> tuple[list[str], list[int]]:
        classes = sorted(rows["speaker"].unique())
        index = {c: i for i, c in enumerate(classes)}
        return classes, [index[s] for s in rows["speaker"]]

    def score(self, target: str, eval_rows: pd.DataFrame, embeddings: torch.Tensor,
              classify: Classify, extras: Any) -> dict[str, Any]:
        from cltm.train.loop import auc_eer, cosine_scores

        index = {c: i for i, c in enumerate(eval_rows["clip"])}
        trials = extras[extras["language"] == target]
        scores = cosine_scores(embeddings, index, trials["a"].tolist(), trials["b"].tolist())
        auc, eer = auc_eer(scores, trials["label"].to_numpy())
        return {"score": auc, "eer": eer, "eval_trials": len(trials)}

    def degenerate(self, runs: pd.DataFrame) -> pd.Series:
        return runs["score"] <= CHANCE_AUC


TASK = Speaker()
