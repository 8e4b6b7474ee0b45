"""Which donors help a target, and how sure the ranking is; each language's transfer profile.

The CLTM's practical use is data selection: a user with target language i asks which other
languages' data to add (CLTM[i, j] high) and which to avoid (CLTM[i, j] below 0). Everything
here comes from the seed bootstrap that stats.py already draws (`bootstrap_replicates`): a
replicate is the grid rerun with a resampled set of seeds, so every statistic computed on it
(a cell, a rank, a column mean) gets its percentile interval from the same replicates.

Donor rankings (`donor_rankings`, the cltm stage's donors.csv)
    Per target, its donors ordered by CLTM[i, j], each with the cell's percentile interval and
    its tests against 0 and 1 at the FDR (stats.cell_tests, unchanged). The rank's own
    uncertainty: within every replicate the target's donors are ranked again (1 the best; ties
    share the better rank), and the rank interval is the percentile interval of those ranks,
    widened to the integers around it (a rank is an integer; widening never narrows the
    interval). `top_k_share` is the share of replicates in which the donor is among the
    target's best `top_k`; `first_share` the share in which it is the best, so that the share
    in which *some* donor of a group ranks first is the sum over the group (ties aside, one
    donor ranks first per replicate). Replicates in which the target's row is undefined
    (self-gain ≤ 0) are left out of its shares and intervals.
    Known limits: the bootstrap of a k-seed mean is too narrow by (k − 1)/k (stats.py), and a
    percentile interval of a rank is centred on the observed rank, not on the true one; the
    coverage test in tests/test_donors.py measures how far that matters.

Transfer profiles (`transfer_profiles`, profiles.csv)
    As a donor (column j): the mean transfer it gives over the defined targets, the share of
    targets it helps reliably (cell above 0 at the FDR) and the share it hurts reliably (below
    0). As a receiver (row i): the mean transfer it receives from its donors, and the shares of
    donors that reliably help and hurt it. The means get bootstrap intervals; the shares are
    the tests' decisions, which already carry their uncertainty.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from cltm.analysis.languages import display_names
from cltm.analysis.stats import (
    SIGNIFICANCE_COLUMNS,
    SeedCells,
    bootstrap_replicates,
    percentile_interval,
    point_estimate,
)
from cltm.errors import CltmError

log = logging.getLogger(__name__)

DONOR_COLUMNS = ("target", "rank", "donor", "same_family", "cltm", "low", "high", "se", "p_vs0",
                 "q_vs0", "p_vs1", "q_vs1", "differs_from_0", "differs_from_1", "direction",
                 "rank_low", "rank_high", "top_k_share", "first_share")
PROFILE_COLUMNS = ("language", "given_mean", "given_low", "given_high", "helps_share",
                   "hurts_share", "received_mean", "received_low", "received_high",
                   "helped_share", "hurt_share")


@dataclass(frozen=True)
class TransferDraws:
    """The data's CLTM and B bootstrap replicates of it, over the same languages."""

    languages: list[str]
    point: np.ndarray  # (n, n), NaN rows where undefined
    draws: np.ndarray  # (B, n, n), NaN rows where undefined in that replicate
    level: float
    paired: bool


def transfer_draws(cells: SeedCells, *, replicates: int, level: float,
                   rng: np.random.Generator, paired: bool,
                   matrix: pd.DataFrame | None = None) -> TransferDraws:
    """The CLTM's bootstrap replicates (stats.bootstrap_replicates). `matrix` (compute_cltm's)
    gives the point values, so that they equal cltm.csv to the bit; without it they are
    stats.point_estimate's."""
    if not 0 < level < 1:
        raise CltmError(f"ci_level must lie strictly between 0 and 1, not {level}")
    langs = cells.languages
    n = len(langs)
    point = point_estimate(cells).cltm[0] if matrix is None else (
        matrix.reindex(index=langs, columns=langs).to_numpy(dtype=float))
    parts = [np.empty((0, n, n))]
    if replicates > 0:
        parts += [rep.cltm for rep in bootstrap_replicates(cells, replicates, rng, paired)]
    return TransferDraws(langs, point, np.concatenate(parts), level, paired)


def donor_ranks(c: np.ndarray) -> np.ndarray:
    """Each target's donors ranked by their cell over the last two axes (..., n, n): 1 the best,
    ties sharing the better rank; NaN on the diagonal and in undefined (NaN) rows.

    (stats.donor_ranks scales ranks to [0, 1] for the family contrast, one row at a time; this
    one counts from the best donor and is vectorised over bootstrap replicates.)
    """
    n = c.shape[-1]
    eye = np.eye(n, dtype=bool)
    # The diagonal is ranked last (−inf), so the donors take ranks 1 .. n − 1.
    ranks = sps.rankdata(-np.where(eye, -np.inf, c), method="min", axis=-1,
                         nan_policy="propagate")
    return np.where(eye, np.nan, ranks)


def _interval(draws: np.ndarray, level: float, defined: bool) -> tuple[float, float]:
    return percentile_interval(draws, level, defined=defined) or (np.nan, np.nan)


def _share(hit: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Share of the valid replicates (axis 0) where `hit` holds; NaN with none valid."""
    used = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(used > 0, (hit & valid).sum(0) / used, np.nan)


def donor_rankings(td: TransferDraws, tests: pd.DataFrame,
                   families: Mapping[str, str] | None = None, *,
                   top_k: int) -> pd.DataFrame:
    """DONOR_COLUMNS, one row per (defined target, donor), each target's donors by rank.

    `tests` is stats.cell_tests' table over the same languages (its CLTM column is the ranked
    value). Undefined targets have no rows: their cells are no usable ranking. `same_family`:
    the donor and the target share a known family in `families` (on a demo corpus, the
    planted one), so that donors.csv alone says whether a family partner leads.
    """
    if top_k < 1:
        raise CltmError(f"analysis.top_k must be at least 1, not {top_k}")
    langs = td.languages
    ranks = donor_ranks(td.point)
    rep_ranks = donor_ranks(td.draws)
    valid = np.isfinite(rep_ranks)
    top = _share(rep_ranks <= top_k, valid)
    first = _share(rep_ranks == 1, valid)
    index = {name: k for k, name in enumerate(langs)}
    t = tests.assign(_i=tests["target"].map(index), _j=tests["donor"].map(index))
    t = t[np.isfinite(td.point[t["_i"], t["_j"]])]  # defined rows only
    i, j = t["_i"].to_numpy(), t["_j"].to_numpy()
    low, high, rank_low, rank_high = (np.full(len(t), np.nan) for _ in range(4))
    for r, (a, b) in enumerate(zip(i, j)):
        low[r], high[r] = _interval(td.draws[:, a, b], td.level, True)
        lo, hi = _interval(rep_ranks[:, a, b], td.level, True)
        rank_low[r], rank_high[r] = np.floor(lo), np.ceil(hi)
    table = t[list(SIGNIFICANCE_COLUMNS)].assign(
        rank=ranks[i, j], low=low, high=high, rank_low=rank_low, rank_high=rank_high,
        top_k_share=top[i, j], first_share=first[i, j],
        same_family=[_same(families, a, b) for a, b in zip(t["target"], t["donor"])])
    table = table.astype({"rank": int, "rank_low": "Int64", "rank_high": "Int64"})
    order = table.assign(_t=i).sort_values(["_t", "rank", "donor"]).index
    out = table.loc[order, list(DONOR_COLUMNS)].reset_index(drop=True)
    return out


def _same(families: Mapping[str, str] | None, a: str, b: str) -> bool:
    fam = (families or {}).get(a)
    return fam is not None and fam == (families or {}).get(b)


def _off_mean(c: np.ndarray, axis: int) -> np.ndarray:
    """Mean over the off-diagonal entries of each row (axis -1) or column (axis -2), NaNs
    (undefined rows) left out; NaN where none is defined."""
    n = c.shape[-1]
    off = np.where(np.eye(n, dtype=bool), np.nan, c)
    count = np.isfinite(off).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(off, axis) / count, np.nan)


def transfer_profiles(td: TransferDraws, tests: pd.DataFrame) -> pd.DataFrame:
    """PROFILE_COLUMNS, one row per language (the module docstring says what each holds)."""
    langs = td.languages
    given, received = _off_mean(td.point, -2), _off_mean(td.point, -1)
    given_draws, received_draws = _off_mean(td.draws, -2), _off_mean(td.draws, -1)
    t = tests[np.isfinite(tests["q_vs0"])]  # the tested cells: defined rows
    helps = t["differs_from_0"].astype(bool) & (t["cltm"] > 0)
    hurts = t["differs_from_0"].astype(bool) & (t["cltm"] < 0)

    def share(flags: pd.Series, by: str) -> pd.Series:
        return flags.groupby(t[by]).mean().reindex(langs)

    rows = {"language": langs, "given_mean": given, "received_mean": received,
            "helps_share": share(helps, "donor").to_numpy(),
            "hurts_share": share(hurts, "donor").to_numpy(),
            "helped_share": share(helps, "target").to_numpy(),
            "hurt_share": share(hurts, "target").to_numpy()}
    for name, point, draws in (("given", given, given_draws),
                               ("received", received, received_draws)):
        bounds = [_interval(draws[:, k], td.level, bool(np.isfinite(point[k])))
                  for k in range(len(langs))]
        rows[f"{name}_low"] = [b[0] for b in bounds]
        rows[f"{name}_high"] = [b[1] for b in bounds]
    return pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))


def partner_first(donors: pd.DataFrame, level: float) -> pd.DataFrame:
    """Per target with a same-family donor: does a family partner rank first, and how sure?

    From donors.csv's table (its `same_family` column; on a demo corpus the planted family):
    `partner` is the best-ranked same-family donor, with its rank and rank interval; `first`
    whether it ranks first in the data; `first_share` the share of bootstrap replicates in which
    some partner ranks first (the sum of the partners' first_share); `surely_first` whether that
    share is at least (1 + level) / 2, i.e. whether the percentile interval at `level` of the
    best partner's rank is [1, 1]. What the report reads to say, per target, whether a planted
    partner leads.
    """
    rows = []
    for target, group in donors[donors["same_family"].astype(bool)].groupby("target", sort=True):
        best = group.sort_values(["rank", "donor"]).iloc[0]
        share = float(group["first_share"].sum())
        rows.append({"target": target, "partner": best["donor"], "rank": int(best["rank"]),
                     "rank_low": best["rank_low"], "rank_high": best["rank_high"],
                     "first": bool(best["rank"] == 1), "first_share": share,
                     "surely_first": bool(share >= (1 + level) / 2)})
    return pd.DataFrame(rows, columns=["target", "partner", "rank", "rank_low", "rank_high",
                                       "first", "first_share", "surely_first"])


# --- `cltm donors TARGET`: one target from any result ------------------------------------------


def check_target(target: str, languages: Sequence[str]) -> None:
    if target not in languages:
        raise CltmError(f"{target!r} is not a language of this result; its languages are: "
                        f"{', '.join(languages)}")


def _num(v: float, fmt: str = ".3f") -> str:
    return "n/a" if not np.isfinite(v) else format(v, fmt)


#: Columns of the donor table printed left-aligned (the rest are numbers).
TEXT_COLUMNS = ("donor", "family", "verdict")


def format_donors(table: pd.DataFrame, target: str, *, families: Mapping[str, str],
                  header: str) -> str:
    """One target's donor table as aligned text; with intervals and tests when it has them."""
    names = display_names([target, *table["donor"]])

    def label(loc: str) -> str:
        return loc if names[loc] == loc else f"{names[loc]} ({loc})"

    full = "low" in table.columns
    rows = []
    for r in table.itertuples(index=False):
        same = _same(families, target, r.donor)
        row = {"rank": str(r.rank), "donor": label(r.donor) + (" *" if same else ""),
               "family": families.get(r.donor) or "?", "CLTM": _num(r.cltm)}
        if full:
            rank_iv = "n/a" if pd.isna(r.rank_low) else f"{r.rank_low}-{r.rank_high}"
            row.update({"interval": f"[{_num(r.low)}, {_num(r.high)}]",
                        "q vs 0": _num(r.q_vs0, ".3g"), "q vs 1": _num(r.q_vs1, ".3g"),
                        "verdict": _verdict(r), "rank interval": rank_iv,
                        "top-k share": _num(r.top_k_share, ".2f")})
        rows.append(row)
    columns = list(rows[0]) if rows else ["rank", "donor"]
    width = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}

    def line(cells: Mapping[str, str]) -> str:
        return "  ".join(cells[c].ljust(width[c]) if c in TEXT_COLUMNS else
                         cells[c].rjust(width[c]) for c in columns).rstrip()

    body = [line({c: c for c in columns}), *(line(row) for row in rows)]
    return "\n".join([*textwrap.wrap(header, 100), *body,
                      f"* same family as {label(target)}"])


def _verdict(r: Any) -> str:
    """A donor's tests in words: helps / hurts where the cell differs from 0 at the FDR."""
    if r.differs_from_0 and r.cltm > 0:
        base = "helps"
    elif r.differs_from_0 and r.cltm < 0:
        base = "hurts"
    else:
        base = "not told from 0"
    if r.differs_from_1:
        base += f", {r.direction}"
    return base


def check_defined(target: str, matrix: pd.DataFrame, gain: float | None) -> None:
    if matrix.loc[target].drop(target).isna().all():
        why = "" if gain is None else f" (self-gain {gain:.4g} ≤ 0)"
        raise CltmError(f"the row of {target} is undefined{why}: its cells divide by a "
                        "self-gain that is not positive, so they rank no donor")
