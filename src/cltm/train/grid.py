"""The runs of a task's grid, what determines each run's result, and what is left to do.

For n target languages and s seeds the grid holds (n² + n)·s runs: per target and seed one run on
D_i (`base`), one on D_i + D'_i (`self`) and one on D_i + D_j per other language j (`cross`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cltm.errors import CltmError
from cltm.layout import ALL_DRAWS, MANIFEST, TRIALS

CONDITIONS = ("base", "self", "cross")


@dataclass(frozen=True)
class RunSpec:
    task: str
    target: str
    condition: str  # base | self | cross
    donor: str  # the target for base and self, the donor language for cross
    seed: int
    n: int | None = None  # learning curves: a base run on the nested D^(n) (see select_curve)

    @property
    def run_id(self) -> str:
        cond = f"cross-{self.donor}" if self.condition == "cross" else self.condition
        if self.n is not None:
            cond = f"{cond}-n{self.n}"
        return f"{self.task}/{self.target}/{cond}/{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.n is None:
            del d["n"]  # grid runs: the record (and its hash) as before curves existed
        return d


def grid_specs(task: str, languages: Sequence[str], seeds: Sequence[int]) -> list[RunSpec]:
    """Every run of the grid, seed by seed, so an interrupted grid holds whole seeds first."""
    specs = []
    for seed in seeds:
        for target in languages:
            specs.append(RunSpec(task, target, "base", target, seed))
            specs.append(RunSpec(task, target, "self", target, seed))
            specs.extend(RunSpec(task, target, "cross", donor, seed)
                         for donor in languages if donor != target)
    return specs


def curve_specs(task: str, languages: Sequence[str], N_grid: Sequence[int],
                seeds: Sequence[int]) -> list[RunSpec]:
    """The base runs of a learning curve, seed by seed, small N first."""
    return [RunSpec(task, target, "base", target, seed, n)
            for seed in seeds for target in languages for n in sorted(N_grid)]


def probe_clips(manifest: pd.DataFrame, k: int, seed: int) -> dict[str, list[str]]:
    """Per language, at most k evaluation clips ranked by a keyed hash: the embedding probes.

    The same clips for every run of a grid (they depend on the data only), so embeddings of
    different fine-tuned models can be compared clip by clip.
    """
    if k <= 0:
        return {}
    evaluation = manifest[manifest["role"] == "eval"]
    probes = {}
    for language, rows in evaluation.groupby("language"):
        keys = [hashlib.blake2b(f"{seed}|probe|{c}".encode(), digest_size=8).hexdigest()
                for c in rows["clip"]]
        ranked = sorted(zip(keys, rows["clip"]))[:k]
        probes[str(language)] = sorted(c for _, c in ranked)
    return probes


def training_clips(manifest: pd.DataFrame, spec: RunSpec) -> pd.DataFrame:
    """The rows a run trains on: D of the target, plus D' of the target or D of the donor.

    A curve run (spec.n set) trains on the target's nested D^(n): the D rows whose min_n <= n.
    """
    lang, role = manifest["language"], manifest["role"]
    rows = (lang == spec.target) & (role == "D")
    if spec.n is not None:
        if "min_n" not in manifest.columns:
            raise ValueError("a curve run needs the curve manifest (a min_n column)")
        return manifest[rows & (manifest["min_n"] <= spec.n)]
    if spec.condition == "self":
        rows |= (lang == spec.target) & (role == "D_prime")
    elif spec.condition == "cross":
        rows |= (lang == spec.donor) & (role == "D")
    if "draw" in manifest.columns:  # data.selection: per_seed: the seed's own D and D'
        rows &= manifest["draw"] == spec.seed
        if not rows.any():
            drawn = sorted(set(manifest["draw"]) - {ALL_DRAWS})
            raise CltmError(
                f"the {spec.task} subsets hold no draw of D for seed {spec.seed} (they were "
                f"drawn for seeds {drawn}): the seeds changed "
                f"since the subsets were built; rerun `dvc repro subsets@{spec.task}` (or "
                f"`cltm subsets --task {spec.task}`)")
    return manifest[rows]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class Fingerprints:
    """Hashes of everything that determines a run's result.

    A run's hash covers its spec, the model and training params, the exact clips it trains on
    and the evaluation set of its target. Adding a language leaves every other run's hash alone
    unless it changes that run's data (a speaker shared with the new language is excluded).

    The clips enter as digests of the blocks a grid run trains on (one language's D or D′, of
    one draw), each computed once: at the paper's 19,800 runs of 2,000 clips each, hashing
    every run's clip list anew cost more than the 5 ms a run the driver may spend.
    """

    def __init__(self, subsets_dir: Path, settings: dict[str, Any]) -> None:
        self.manifest = pd.read_csv(Path(subsets_dir) / MANIFEST)
        self.settings = _digest(settings)
        trials_path = Path(subsets_dir) / TRIALS
        trials = pd.read_csv(trials_path) if trials_path.is_file() else None
        self._eval: dict[str, str] = {}
        for lang, rows in self.manifest[self.manifest["role"] == "eval"].groupby("language"):
            parts = sorted(zip(rows["clip"], rows["gender"], rows["speaker"]))
            if trials is not None:
                t = trials[trials["language"] == lang]
                parts.append(sorted(zip(t["a"], t["b"], t["label"].astype(int))))
            self._eval[str(lang)] = _digest(parts)
        m = self.manifest
        train = m[m["role"].isin(["D", "D_prime"])]
        keys = ["language", "role", "draw"] if "draw" in m.columns else ["language", "role"]
        self._blocks: dict[tuple, str] = {}
        for key, rows in train.groupby(keys):
            clips = sorted(zip(rows["clip"].tolist(), rows["speaker"].tolist(),
                               rows["gender"].tolist()))
            self._blocks[tuple(str(k) if isinstance(k, str) else int(k) for k in key)] = (
                _digest(clips))
        self._drawn = "draw" in m.columns

    def _block(self, language: str, role: str, seed: int) -> str | None:
        return self._blocks.get((language, role, seed) if self._drawn else (language, role))

    def __call__(self, spec: RunSpec) -> str:
        if spec.n is not None:  # a learning-curve run: its own nested D^(n)
            train = training_clips(self.manifest, spec)
            data: Any = sorted(zip(train["clip"], train["language"], train["speaker"],
                                   train["gender"]))
        else:
            second = {"base": None, "self": (spec.target, "D_prime"),
                      "cross": (spec.donor, "D")}[spec.condition]
            parts = [(spec.target, "D"), *([second] if second else [])]
            data = [(lang, role, self._block(lang, role, spec.seed)) for lang, role in parts]
            lacking = [f"{lang} {role}" for lang, role, d in data if d is None]
            if lacking:
                training_clips(self.manifest, spec)  # names what is missing (a seed's draw)
                raise CltmError(f"{spec.run_id}: the subsets hold no rows of "
                                f"{', '.join(lacking)}; rebuild them (`dvc repro "
                                f"subsets@{spec.task}`, or `cltm subsets --task {spec.task}`)")
        return _digest([spec.as_dict(), self.settings, data, self._eval.get(spec.target)])
