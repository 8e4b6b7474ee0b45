"""From a run store to the CLTM and its delta-method standard errors (PROTOCOL.md, Definitions).

Row i is the target, column j the donor: CLTM[i, j] = Δ_ij / Δ_ii with Δ_ij = mean(cross i+j) −
mean(base i) and Δ_ii = mean(self i+i) − mean(base i). Seed means are plain means over every seed
in the store; no seed is ever dropped (the reference's seed filtering inflated self-gains).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cltm.errors import CltmError
from cltm.layout import STORE_NAME
from cltm.records import read_records

log = logging.getLogger(__name__)

CONDITIONS = ("base", "self", "cross")
REQUIRED_COLUMNS = ("target", "condition", "donor", "seed", "score")


@dataclass(frozen=True)
class CltmResult:
    matrix: pd.DataFrame  # targets x donors, diagonal 1, undefined rows all NaN
    se: pd.DataFrame  # same shape, diagonal 0
    self_gain: pd.Series  # Δ_ii per target, undefined targets included
    # SE of Δ_ii: paired by seed (SD of the per-seed differences / sqrt(k)) when asked for and
    # every cell holds the same seeds; else sqrt(var(mean self) + var(mean base)).
    self_gain_se: pd.Series
    self_gain_se_paired: bool  # which of the two SEs self_gain_se holds
    undefined: pd.Series  # Δ_ii of the targets whose Δ_ii <= 0
    performance: pd.DataFrame  # per (target, condition, donor): seeds, mean, std


def read_run_store(runs_dir: Path, task: str | None = None) -> pd.DataFrame:
    """The run store as a table, read without the training package.

    Mirrors the store's own semantics: a torn line (a run killed mid-write) is skipped, and when
    a run hash appears twice the later record wins.
    """
    path = Path(runs_dir)
    if path.is_dir():
        path = path / STORE_NAME
    if not path.is_file():
        hint = f"`cltm grid --task {task}`" if task else "`cltm grid`"
        raise CltmError(f"no run store at {path}; run {hint} first")
    records: dict[object, dict] = {}
    for n, rec in read_records(path):
        records[rec.get("hash", ("line", n))] = rec
    runs = pd.DataFrame(list(records.values()))
    missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
    if runs.empty or missing:
        raise CltmError(
            f"{path} holds no usable runs (missing columns: {missing or 'all'}); "
            "run the grid stage to fill it"
        )
    if task is not None and "task" in runs.columns:
        runs = runs[runs["task"] == task]
        if runs.empty:
            raise CltmError(f"{path} holds no runs of task {task!r}; is it the {task} store?")
    return runs.reset_index(drop=True)


def seed_stats(runs: pd.DataFrame) -> pd.DataFrame:
    """Seed count, mean, std (ddof=1) and variance of the mean per (target, condition, donor)."""
    unknown = sorted(set(runs["condition"]) - set(CONDITIONS))
    if unknown:
        raise CltmError(f"unknown run conditions {unknown}; expected {', '.join(CONDITIONS)}")
    keys = ["target", "condition", "donor"]
    dup = runs.duplicated([*keys, "seed"], keep=False)
    if dup.any():
        first = runs.loc[dup, [*keys, "seed"]].iloc[0].to_dict()
        raise CltmError(
            f"the run store holds {int(dup.sum())} runs that repeat a (target, condition, donor, "
            f"seed), e.g. {first}: records of two grid configurations are mixed; finish the grid "
            "(`cltm grid`), which rewrites the store to the current grid"
        )
    score = pd.to_numeric(runs["score"], errors="coerce")
    if score.isna().any():
        bad = runs.loc[score.isna(), keys].iloc[0].to_dict()
        raise CltmError(f"a run has no numeric score ({bad}); rerun the grid for it")
    grouped = runs.assign(score=score).groupby(keys, sort=True)["score"]
    stats = grouped.agg(seeds="count", mean="mean", std=lambda s: s.std(ddof=1)).reset_index()
    # Variance of a seed mean: seed variance / seed count (NaN with a single seed).
    stats["var_mean"] = stats["std"] ** 2 / stats["seeds"]
    return stats


def cell_se(a: float, b: float, c: float, va: float, vb: float, vc: float) -> float:
    """Delta-method SE of (a − b) / (c − b) from means a, b, c and variances of those means.

    The formula is PROTOCOL.md's: b sits in numerator and denominator, hence the covariance
    term; a negative variance (possible only from rounding) is clipped at 0.
    """
    num, den = a - b, c - b
    var = (va + vb) / den**2 + num**2 * (vc + vb) / den**4 - 2 * num * vb / den**3
    return float(np.sqrt(max(var, 0.0)))


def _performance(stats: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    perf = stats[["target", "condition", "donor", "seeds", "mean", "std"]].copy()
    if "eer" in runs.columns and runs["eer"].notna().any():
        eer = runs.groupby(["target", "condition", "donor"], sort=True)["eer"]
        perf = perf.merge(
            eer.agg(eer_mean="mean", eer_std=lambda s: s.std(ddof=1)).reset_index(),
            on=["target", "condition", "donor"],
        )
    # base, self, cross reads in the order the gains are formed, not alphabetically.
    rank = perf["condition"].map({c: k for k, c in enumerate(CONDITIONS)})
    perf = perf.assign(_rank=rank).sort_values(["target", "_rank", "donor"])
    return perf.drop(columns="_rank").reset_index(drop=True)


def shared_seeds(runs: pd.DataFrame) -> list | None:
    """The seed numbers, sorted, when every (target, condition, donor) cell holds the same ones
    (the condition for pairing runs by seed); else None."""
    sets = runs.groupby(["target", "condition", "donor"])["seed"].agg(lambda s: tuple(sorted(s)))
    return list(sets.iloc[0]) if len(sets) and sets.nunique() == 1 else None


def _paired_gain_se(runs: pd.DataFrame) -> pd.Series:
    """Per target, the SE of the per-seed differences self − base (NaN with one seed)."""
    own = runs[runs["condition"].isin(["base", "self"])]
    own = own.assign(score=pd.to_numeric(own["score"]))
    wide = own.pivot_table(index=["target", "seed"], columns="condition", values="score")
    diff = (wide["self"] - wide["base"]).groupby(level="target")
    return diff.std(ddof=1) / np.sqrt(diff.count())


def compute_cltm(runs: pd.DataFrame, *, pair_seeds: bool) -> CltmResult:
    """The CLTM, its SEs and the self-gains from a run table (one row per run).

    The cell SEs are PROTOCOL.md's delta-method SEs, which treat the conditions' seeds as
    independent. `pair_seeds` gives the self-gains the SE of a design blocked by seed (the
    base and self runs of one seed share its head initialisation and data order: stats.py)
    when every cell holds the same seeds, the rule stats.py pairs by.
    """
    stats = seed_stats(runs)
    cells = stats.set_index(["target", "condition", "donor"])
    languages = sorted(set(stats["target"]) | set(stats["donor"]))
    missing = []
    for i in languages:
        missing += [f"{i} {cond}" for cond in ("base", "self") if (i, cond, i) not in cells.index]
        missing += [f"{i}<-{j}" for j in languages if j != i and (i, "cross", j) not in cells.index]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise CltmError(
            f"the run store is incomplete: {len(missing)} cells have no runs ({shown}); "
            "finish the grid (`cltm grid`) before computing the CLTM"
        )

    paired_se = _paired_gain_se(runs) if pair_seeds and shared_seeds(runs) is not None else None
    n = len(languages)
    matrix = np.full((n, n), np.nan)
    se = np.full((n, n), np.nan)
    gain, gain_se = np.empty(n), np.empty(n)
    for r, i in enumerate(languages):
        b, vb = cells.loc[(i, "base", i), ["mean", "var_mean"]]
        c, vc = cells.loc[(i, "self", i), ["mean", "var_mean"]]
        gain[r], gain_se[r] = c - b, np.sqrt(vc + vb) if paired_se is None else paired_se[i]
        if not gain[r] > 0:
            continue  # undefined row: Δ_ii is not a usable denominator; nothing is imputed
        for k, j in enumerate(languages):
            if j == i:
                matrix[r, k], se[r, k] = 1.0, 0.0
                continue
            a, va = cells.loc[(i, "cross", j), ["mean", "var_mean"]]
            matrix[r, k] = (a - b) / (c - b)
            se[r, k] = cell_se(a, b, c, va, vb, vc)

    index = pd.Index(languages, name="target")
    columns = pd.Index(languages)
    self_gain = pd.Series(gain, index=index, name="self_gain")
    undefined = self_gain[~(self_gain > 0)]
    if len(undefined):
        log.warning(
            "undefined CLTM rows (self-gain not positive): %s; these targets are left out of "
            "the diagnostics",
            ", ".join(f"{t} (Δ_ii = {g:.4g})" for t, g in undefined.items()),
        )
    return CltmResult(
        matrix=pd.DataFrame(matrix, index=index, columns=columns),
        se=pd.DataFrame(se, index=index, columns=columns),
        self_gain=self_gain,
        self_gain_se=pd.Series(gain_se, index=index, name="se"),
        self_gain_se_paired=paired_se is not None,
        undefined=undefined,
        performance=_performance(stats, runs),
    )


#: The largest share of degenerate runs a grid may hold and still count as measuring its data.
DEGENERATE_LIMIT = 0.05


def run_health(runs: pd.DataFrame, bad: pd.Series, what: str) -> dict:
    """The share of degenerate runs (`bad`, per run: the task's degenerate(); `what` says what
    they are) overall, by condition and by seed, and whether it is within DEGENERATE_LIMIT."""

    def share_by(column: str) -> dict[str, float]:
        return {str(k): float(v) for k, v in bad.groupby(runs[column]).mean().items()}

    return {
        "what": what,
        "runs": len(runs),
        "degenerate": int(bad.sum()),
        "degenerate_share": float(bad.mean()) if len(runs) else None,
        "limit": DEGENERATE_LIMIT,
        "within_limit": bool(bad.mean() <= DEGENERATE_LIMIT) if len(runs) else None,
        "by_condition": share_by("condition"),
        "by_seed": share_by("seed"),
    }
