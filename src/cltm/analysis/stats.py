"""How far each CLTM figure can be trusted: cell tests, bootstrap intervals, family permutations.

Everything here starts from the run store's seed-level scores (one score per run), the data the
CLTM itself is built from (cltm.py), or, for the family test alone, from a matrix.

Seeds as blocks
    A seed number fixes the head's initialisation and the data-order generator in every run that
    carries it, so the base, self and cross runs of one seed share a draw of that noise: on the
    demo, seed 0 of the gender task fails on D for every target while seed 1 learns, and every
    condition moves with it. The grid gives every cell the same seeds, so the design is blocked
    by seed, and the analysis pairs runs by seed when every cell holds the same seed numbers
    (`pair_seeds`, the default; stats_info.json says which design was used). Unpaired analysis
    treats a shared seed effect as noise in every difference; pairing removes it. Without a
    shared seed effect the paired tests lose only degrees of freedom (k − 1 instead of up to
    2k − 2). With `pair_seeds` off, or seeds that differ between cells, seeds are treated as
    independent across cells.

Per-cell tests (`cell_tests`, written as cltm_significance.csv)
    CLTM[i, j] = Δ_ij / Δ_ii is a ratio, and with a handful of seeds its sampling distribution is
    far from normal (the denominator is itself noisy), so a Wald z-test on the delta-method SE
    would lean on an approximation that is weakest where it matters. Instead each hypothesis is
    restated as a difference of two means, given a defined row (Δ_ii > 0):
        CLTM[i, j] = 1  ⇔  Perf(i+j) − Perf(i+i) = 0    (cross against self)
        CLTM[i, j] = 0  ⇔  Perf(i+j) − Perf(i)   = 0    (cross against base)
    Paired by seed: a one-sample t-test on the k per-seed differences (k − 1 degrees of
    freedom). Unpaired: Welch's two-sample t-test on the seed scores (unequal variances).
    Both two-sided. A test is undefined (NaN p) with fewer than 2 seeds a side or when the
    differences (or both sides) have zero spread: identical scores say nothing about seed noise,
    so no p-value is claimed. The row's definedness is decided on the estimated Δ_ii > 0, as in
    the CLTM itself.
    Benjamini–Hochberg adjusts the p-values over all defined off-diagonal cells, separately for
    the "vs 0" and the "vs 1" families; undefined rows and NaN p-values are not counted in a
    family. The cells of one row share their base and self runs, so their tests are positively
    dependent; BH is the usual choice there (Benjamini–Yekutieli would be the distribution-free,
    far less powerful alternative). A cell differs from 0 / 1 when its q-value is ≤ the FDR.
    With 2 seeds a paired test has 1 degree of freedom: valid but weak.

Bootstrap intervals (`diagnostic_intervals`, diagnostics_ci.json)
    Paired: each replicate draws k seed numbers with replacement and takes every cell's runs of
    those seeds, so a replicate is the grid rerun with a resampled set of seeds. Unpaired: each
    (target, condition, donor) cell's seeds are resampled independently, with the cell's own
    count. The CLTM, its delta-method SEs, the self-gains and all
    numeric diagnostics are recomputed per replicate, and the interval is the percentile interval
    at the chosen level over the replicates where the diagnostic is defined. A replicate whose
    self-gain for some target is ≤ 0 leaves that row undefined, exactly as the real computation
    does, and its diagnostics are computed on the languages defined in that replicate (a target
    undefined in the data may likewise become defined). How often the language set moved is
    reported apart (stats_info.json). Known limits: the bootstrap variance of a k-seed mean is
    (k − 1)/k of the usual estimate, so with few seeds the intervals are too narrow, and a paired
    bootstrap of k seeds has only C(2k − 1, k) distinct replicates (3 for 2 seeds, 35 for 4): its
    intervals are coarse below 4 seeds. For
    distances from an ideal (rfd1, asym_rel, 1 − cos_rows), noise only adds, so the percentile
    interval sits above the noise-free value and should be read as "the value this much seed
    noise produces", not as an interval for a noise-free matrix.

Differences between two results (`difference_intervals`; the report's contrast.json)
    Two results (the gender and speaker CLTMs of one grid, or two variants of one task) are
    told apart by the interval of their difference B − A, not by whether their own intervals
    overlap: the runs of two results are independent, so their noise adds in quadrature and two
    overlapping 95% intervals can still hold a difference whose interval excludes 0. Each result
    is bootstrapped as above (its own paired-or-unpaired rule), the two independently, and the
    differences are taken replicate by replicate; a replicate where either side is undefined is
    dropped and counted. No interval where a point value is undefined or no difference is
    finite. The same caveats hold: with few seeds the interval is too narrow, and a difference
    of two distances from the ideal mixes two noise-inflated values.

Family structure (`family_structure`, family_structure.json)
    contrast = mean same-family off-diagonal entry − mean cross-family entry, over the defined
    languages; intra_family_pos as in diagnostics.py. Family labels are shuffled over the defined
    languages (family sizes kept), and p-values count the shuffles at least as extreme as the
    data, with the usual +1 in numerator and denominator. The number of same-family pairs does not
    change under a shuffle, so the contrast's null mean is exactly 0 and its p is two-sided
    (|contrast|); intra_family_pos's p is one-sided, towards more positive mass within families
    than chance, whose expected value is the share of same-family pairs.

    rank_contrast is the same contrast over within-row ranks: each target's donors ranked by
    their cell, scaled to [0, 1] (0 the least useful donor, 1 the most; ties share a rank).
    A cell is a gain divided by the target's self-gain, so a target whose self-gain is small
    against its noise has cells of several units either way, and those few cells decide the
    plain contrast and its null distribution alike. Ranks within a row do not depend on the
    row's denominator at all: every target weighs the same, and the test keeps its power when a
    few self-gains are small (benchmarks/family_test_power.py measures both tests).

    weighted_contrast is the same contrast with every cell weighted by its target's self-gain:
    the self-gain-weighted mean of the same-family cells minus that of the cross-family ones.
    As a cell times its target's self-gain is the donor's raw gain (a_ij − b_i), it is the
    ratio of mean gains to mean self-gains rather than the mean of ratios: a target whose
    self-gain is small against its noise weighs little instead of deciding the statistic.
    On the speaker task of 8 demo corpora its seed-bootstrap spread is about 2.5 times smaller
    than the plain contrast's at the median (1.2-5.5 times; docs/findings.md), and it is the
    statistic the calibration's checks read. It needs the self-gains: a matrix without them
    gets none. Under a shuffle its weights change with unequal family sizes, so its null mean
    is only near 0 (the permutation test does not need it to be 0).

Randomness comes from one `stats_seed`, split into independent streams for the bootstrap,
the permutations, the noise floor and the difference between two results, so the outputs are
identical for identical inputs and settings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats as sps

from cltm.analysis.cltm import CltmResult, shared_seeds
from cltm.analysis.diagnostics import KEYS, check_matrix
from cltm.errors import CltmError
from cltm.jsonfile import json_ready

log = logging.getLogger(__name__)


#: The numeric keys of diagnostics.json, the ones that get a bootstrap interval.
NUMERIC_KEYS = tuple(k for k in KEYS if k != "undefined_targets")

SIGNIFICANCE_COLUMNS = ("target", "donor", "cltm", "se", "p_vs0", "q_vs0", "p_vs1", "q_vs1",
                        "differs_from_0", "differs_from_1", "direction")
FAMILY_KEYS = ("family_level", "contrast", "contrast_p", "contrast_chance", "rank_contrast",
               "rank_contrast_p", "weighted_contrast", "weighted_contrast_p",
               "weighted_contrast_chance", "intra_family_pos", "intra_family_pos_p",
               "intra_family_pos_chance", "same_family_pair_share", "n_families", "permutations")

#: stats_info.json's `seed_design` when runs are paired by seed.
PAIRED_DESIGN = "paired by seed"

#: Replicates drawn at once: bounds memory (B x cells x seeds doubles) for a 44 x 44 grid.
CHUNK = 200


# --- seed-level data --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedCells:
    """Every cell's seed scores, NaN-padded to the largest seed count, and where each cell is.

    `base[i]` and `self_[i]` are the rows of `values` holding target i's base and self runs;
    `cross[i, j]` the row of the cross run i+j (-1 on the diagonal, which has none).
    `seeds` holds the seed numbers (column order) when every cell has the same ones, the
    condition for pairing runs by seed; else None.
    """

    languages: list[str]
    values: np.ndarray  # (cells, max seeds)
    counts: np.ndarray  # (cells,)
    base: np.ndarray  # (n,)
    self_: np.ndarray  # (n,)
    cross: np.ndarray  # (n, n)
    seeds: np.ndarray | None = None  # (max seeds,)


def seed_cells(runs: pd.DataFrame, languages: Sequence[str] | None = None) -> SeedCells:
    """The run table (one row per run, as compute_cltm takes it) as padded seed arrays.

    Seeds are ordered by their seed value, so the same store gives the same arrays (and the same
    bootstrap) whatever order its records were written in.
    """
    keys = ["target", "condition", "donor"]
    frame = runs.assign(score=pd.to_numeric(runs["score"], errors="coerce"))
    langs = list(languages) if languages is not None else sorted(
        set(frame["target"]) | set(frame["donor"]))
    wanted = [(i, "base", i) for i in langs] + [(i, "self", i) for i in langs]
    wanted += [(i, "cross", j) for i in langs for j in langs if j != i]
    groups = {k: g.sort_values("seed")["score"].to_numpy(dtype=float)
              for k, g in frame.groupby(keys, sort=True)}
    missing = [k for k in wanted if k not in groups or len(groups[k]) == 0]
    if missing:
        raise CltmError(f"the run store has no runs for {len(missing)} cells (e.g. {missing[0]}); "
                        "finish the grid (`cltm grid`) first")
    counts = np.array([len(groups[k]) for k in wanted])
    values = np.full((len(wanted), int(counts.max())), np.nan)
    for row, k in enumerate(wanted):
        values[row, : counts[row]] = groups[k]
    n = len(langs)
    cross = np.full((n, n), -1)
    off = ~np.eye(n, dtype=bool)
    cross[off] = np.arange(2 * n, len(wanted))  # row-major, the order `wanted` lists them
    used = frame[frame["target"].isin(langs) & frame["donor"].isin(langs)]
    seeds = shared_seeds(used)
    return SeedCells(langs, values, counts, np.arange(n), np.arange(n, 2 * n), cross,
                     None if seeds is None else np.array(seeds))


def pairing(cells: SeedCells, pair_seeds: bool) -> bool:
    """Whether runs are paired by seed: asked for, and every cell holds the same seeds."""
    return bool(pair_seeds) and cells.seeds is not None


def _moments(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample variance (ddof=1; NaN with one seed) over the last axis, padding ignored."""
    valid = np.arange(values.shape[-1]) < counts[..., None]
    filled = np.where(valid, values, 0.0)
    mean = filled.sum(-1) / counts
    dev = np.where(valid, values - mean[..., None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (dev**2).sum(-1) / (counts - 1)
    # Equal scores have no spread, but their rounded mean can leave a variance of 1e-32, which
    # the tests would read as measured noise: zero it from the values themselves.
    constant = (np.where(valid, values, -np.inf).max(-1) == np.where(valid, values, np.inf).min(-1))
    var = np.where(constant, 0.0, var)
    return mean, np.where(counts > 1, var, np.nan)


# --- the CLTM of many replicates at once --------------------------------------------------------


@dataclass(frozen=True)
class Replicates:
    """B CLTMs (NaN rows where undefined), their SEs and self-gains, over all languages."""

    cltm: np.ndarray  # (B, n, n)
    se: np.ndarray  # (B, n, n)
    gain: np.ndarray  # (B, n)


def _assemble(cells: SeedCells, mean: np.ndarray, var_mean: np.ndarray) -> Replicates:
    """compute_cltm's arithmetic, vectorised over a leading replicate axis of cell means."""
    n = len(cells.languages)
    b, vb = mean[:, cells.base, None], var_mean[:, cells.base, None]
    c, vc = mean[:, cells.self_, None], var_mean[:, cells.self_, None]
    idx = np.where(cells.cross >= 0, cells.cross, 0)
    a, va = mean[:, idx], var_mean[:, idx]
    num, den = a - b, c - b
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = num / den
        var = (va + vb) / den**2 + num**2 * (vc + vb) / den**4 - 2 * num * vb / den**3
    se = np.sqrt(np.maximum(var, 0.0))  # NaN (one seed) stays NaN: maximum propagates it
    eye = np.eye(n, dtype=bool)
    ratio[:, eye], se[:, eye] = 1.0, 0.0
    undefined = ~(den[..., 0] > 0)
    ratio[undefined], se[undefined] = np.nan, np.nan
    return Replicates(ratio, se, (c - b)[..., 0])


def point_estimate(cells: SeedCells) -> Replicates:
    """The data's own CLTM as a single replicate (equal to compute_cltm's)."""
    mean, var = _moments(cells.values, cells.counts)
    return _assemble(cells, mean[None], (var / cells.counts)[None])


def bootstrap_replicates(cells: SeedCells, replicates: int, rng: np.random.Generator,
                         paired: bool = False) -> Iterator[Replicates]:
    """Replicates in chunks. Paired: one draw of k seeds with replacement, taken in every cell.
    Unpaired: each cell's seeds resampled with replacement, independently, same count."""
    if paired and cells.seeds is None:
        raise CltmError("a paired bootstrap needs the same seeds in every cell")
    for start in range(0, replicates, CHUNK):
        size = min(CHUNK, replicates - start)
        if paired:
            k = cells.values.shape[1]
            one = (rng.random((size, 1, k)) * k).astype(int)
            pick = np.broadcast_to(one, (size, *cells.values.shape))
        else:
            # A uniform draw scaled by each cell's count picks a seed among that cell's own.
            pick = (rng.random((size, *cells.values.shape)) * cells.counts[:, None]).astype(int)
        drawn = np.take_along_axis(np.broadcast_to(cells.values, pick.shape), pick, axis=-1)
        mean, var = _moments(drawn, cells.counts)
        yield _assemble(cells, mean, var / cells.counts)


# --- diagnostics of many replicates -------------------------------------------------------------


def _ratio(num: np.ndarray, den: np.ndarray | float) -> np.ndarray:
    num, den = np.broadcast_arrays(np.asarray(num, float), np.asarray(den, float))
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _group_diagnostics(c: np.ndarray, se: np.ndarray, gain: np.ndarray,
                       same: np.ndarray | None) -> dict[str, np.ndarray]:
    """diagnostics() of G matrices over the same m defined languages; NaN where it gives None.

    `same` is the same-family mask of those languages, None when a family is unknown.
    """
    g, m = c.shape[:2]
    out = {k: np.full(g, np.nan) for k in NUMERIC_KEYS}
    out["n_languages"] = np.full(g, float(m))
    if m == 0:
        return out
    off = ~np.eye(m, dtype=bool)
    pos = off & (c > 0)
    norm_c = np.sqrt((c**2).sum((1, 2)))
    out["rfd1"] = np.sqrt(((c - 1.0) ** 2).sum((1, 2))) / m
    out["asym_rel"] = _ratio(np.sqrt(((c - c.transpose(0, 2, 1)) ** 2).sum((1, 2))), norm_c)
    out["prop_pos"] = _ratio(pos.sum((1, 2)), off.sum())
    out["reciprocity_pos"] = _ratio((pos & pos.transpose(0, 2, 1)).sum((1, 2)), pos.sum((1, 2)))
    out["rms"] = norm_c / m
    out["self_gain_mean"] = gain.mean(1)
    if m < 2:
        return out
    unit = c / np.linalg.norm(c, axis=2, keepdims=True)
    out["cos_rows"] = np.einsum("gik,gjk->gij", unit, unit)[:, off].mean(1)
    if same is not None:
        mass = np.where(pos, c, 0.0)
        out["intra_family_pos"] = _ratio(mass[:, same & off].sum(1), mass.sum((1, 2)))
    ses = se[:, off]
    ok = np.isfinite(ses).all(1)  # diagnostics() nulls both SE statistics on any undefined SE
    out["se_median"] = np.where(ok, np.median(ses, axis=1), np.nan)
    out["se_mean"] = np.where(ok, ses.mean(1), np.nan)
    out["self_gain_std"] = gain.std(1, ddof=1)
    return out


def family_codes(languages: Sequence[str], families: Mapping[str, str] | None) -> np.ndarray:
    """Integer family code per language, -1 where no family is known."""
    labels = [(families or {}).get(t) or None for t in languages]
    names = sorted({x for x in labels if x is not None})
    return np.array([names.index(x) if x is not None else -1 for x in labels])


def replicate_diagnostics(rep: Replicates, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Every numeric diagnostic of every replicate, each on its own defined languages.

    Replicates are grouped by their set of defined rows, and each group is computed at once.
    """
    defined = ~np.isnan(rep.cltm).all(2)
    patterns, which = np.unique(defined, axis=0, return_inverse=True)
    out = {k: np.full(len(defined), np.nan) for k in NUMERIC_KEYS}
    for p, mask in enumerate(patterns):
        rows = np.flatnonzero(which.ravel() == p)
        keep = np.flatnonzero(mask)
        sub = np.ix_(rows, keep, keep)
        sub_codes = codes[keep]
        same = None if (sub_codes < 0).any() else sub_codes[:, None] == sub_codes[None, :]
        part = _group_diagnostics(rep.cltm[sub], rep.se[sub], rep.gain[np.ix_(rows, keep)], same)
        for k, v in part.items():
            out[k][rows] = v
    return out


def diagnostic_intervals(
    cells: SeedCells,
    families: Mapping[str, str] | None,
    point: Mapping[str, object],
    *,
    replicates: int,
    level: float,
    rng: np.random.Generator,
    paired: bool = False,
) -> tuple[dict[str, dict[str, float | None]], dict[str, object]]:
    """Percentile bootstrap intervals of the numeric diagnostics, and facts about the replicates.

    `point` is the data's diagnostics dict: a diagnostic that is None there gets no interval.
    The second dict holds the share of replicates where every target defined in the data stayed
    defined, each target's defined share, and each diagnostic's defined share.
    """
    if not 0 < level < 1:
        raise CltmError(f"ci_level must lie strictly between 0 and 1, not {level}")
    codes = family_codes(cells.languages, families)
    nulls = {k: {"low": None, "high": None} for k in NUMERIC_KEYS}
    if replicates <= 0:
        return nulls, {"replicates": 0}
    draws: dict[str, list[np.ndarray]] = {k: [] for k in NUMERIC_KEYS}
    defined: list[np.ndarray] = []
    for rep in bootstrap_replicates(cells, replicates, rng, paired):
        for k, v in replicate_diagnostics(rep, codes).items():
            draws[k].append(v)
        defined.append(~np.isnan(rep.cltm).all(2))
    values = {k: np.concatenate(v) for k, v in draws.items()}
    ci = {}
    for k in NUMERIC_KEYS:
        low, high = percentile_interval(values[k], level,
                                        defined=point.get(k) is not None) or (None, None)
        ci[k] = {"low": low, "high": high}
    return ci, _replicate_info(cells, np.concatenate(defined), values, point)


def percentile_interval(draws: np.ndarray, level: float,
                        defined: bool = True) -> tuple[float, float] | None:
    """The percentile interval at `level` of the finite draws (undefined replicates left out);
    None when the point value is not `defined` or no draw is finite (diagnostic_intervals' rule).
    """
    draws = np.asarray(draws, dtype=float)
    finite = draws[np.isfinite(draws)]
    if not defined or finite.size == 0:
        return None
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


NOISE_KEYS = ("rfd1", "asym_rel", "cos_rows", "prop_pos")


def null_cells(cells: SeedCells) -> SeedCells:
    """The same seed noise around the language-agnostic ideal: every cross cell's seed scores
    shifted so that its mean equals its target's self mean (CLTM = 1 everywhere)."""
    mean, _ = _moments(cells.values, cells.counts)
    values = cells.values.copy()
    n = len(cells.languages)
    for i in range(n):
        for j in range(n):
            row = cells.cross[i, j]
            if row >= 0:
                values[row] += mean[cells.self_[i]] - mean[row]
    return replace(cells, values=values)


def noise_floor(cells: SeedCells, families: Mapping[str, str] | None, *, replicates: int,
                level: float, rng: np.random.Generator,
                paired: bool = False) -> dict[str, dict[str, float | None]]:
    """What seed noise alone makes of the diagnostics: their bootstrap distribution when the
    true CLTM is all ones and every cell keeps its observed seed spread (null_cells).

    rfd1, asym_rel and 1 − cos_rows are distances from the ideal, so noise alone makes them
    positive; a value inside this range is no evidence of language-dependent transfer.
    """
    if replicates <= 0:
        return {k: {"mean": None, "low": None, "high": None} for k in NOISE_KEYS}
    codes = family_codes(cells.languages, families)
    draws: dict[str, list[np.ndarray]] = {k: [] for k in NOISE_KEYS}
    for rep in bootstrap_replicates(null_cells(cells), replicates, rng, paired):
        diag = replicate_diagnostics(rep, codes)
        for k in NOISE_KEYS:
            draws[k].append(diag[k])
    out = {}
    for k, parts in draws.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        if v.size == 0:
            out[k] = {"mean": None, "low": None, "high": None}
            continue
        low, high = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
        out[k] = {"mean": float(v.mean()), "low": float(low), "high": float(high)}
    return out


def _replicate_info(cells: SeedCells, defined: np.ndarray, values: Mapping[str, np.ndarray],
                    point: Mapping[str, object]) -> dict[str, object]:
    data_defined = [t not in (point.get("undefined_targets") or []) for t in cells.languages]
    kept = defined[:, np.array(data_defined, dtype=bool)].all(1)
    return {
        "replicates": len(defined),
        "all_defined_stayed_defined_share": float(kept.mean()),
        "same_language_set_share": float((defined == np.array(data_defined)).all(1).mean()),
        "defined_share": dict(zip(cells.languages, map(float, defined.mean(0)))),
        "diagnostic_defined_share": {k: float(np.isfinite(v).mean()) for k, v in values.items()},
    }


# --- the difference between two results --------------------------------------------------------


def diagnostic_draws(cells: SeedCells, families: Mapping[str, str] | None, *,
                     keys: Sequence[str], replicates: int, rng: np.random.Generator,
                     paired: bool = False) -> dict[str, np.ndarray]:
    """Each diagnostic in `keys` over `replicates` bootstrap replicates (bootstrap_replicates,
    replicate_diagnostics): one value per replicate, in draw order, NaN where undefined."""
    codes = family_codes(cells.languages, families)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    if replicates > 0:
        for rep in bootstrap_replicates(cells, replicates, rng, paired):
            diag = replicate_diagnostics(rep, codes)
            for k in keys:
                parts[k].append(diag[k])
    return {k: np.concatenate(v) if v else np.empty(0) for k, v in parts.items()}


def _number(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def difference_of_draws(point_a: float, point_b: float, draws_a: np.ndarray,
                        draws_b: np.ndarray, level: float) -> dict[str, object]:
    """B − A from two results' point values and their bootstrap draws (same count, independent).

    The differences are taken replicate by replicate (r of B minus r of A); a replicate where
    either side is undefined (NaN) is dropped and counted. The interval is the percentile
    interval of the rest, with diagnostic_intervals' rule: none when a point value is undefined
    or no difference is finite. `excludes_zero`: the interval lies wholly above or below 0
    (None without an interval).
    """
    draws_a, draws_b = np.asarray(draws_a, float), np.asarray(draws_b, float)
    if draws_a.shape != draws_b.shape:
        raise CltmError(f"the two results have {draws_a.size} and {draws_b.size} bootstrap "
                        "replicates; a difference pairs them one to one")
    diff = draws_b - draws_a
    used = int(np.isfinite(diff).sum())
    point = float(point_b) - float(point_a)
    bounds = percentile_interval(diff, level, defined=bool(np.isfinite(point)))
    low, high = (None, None) if bounds is None else bounds
    return {"a": _number(point_a), "b": _number(point_b), "difference": _number(point),
            "low": low, "high": high,
            "excludes_zero": None if bounds is None else bool(low > 0 or high < 0),
            "replicates_used": used, "replicates_dropped": int(diff.size - used)}


def difference_intervals(
    cells_a: SeedCells,
    cells_b: SeedCells,
    families: Mapping[str, str] | None,
    *,
    keys: Sequence[str],
    replicates: int,
    ci_level: float,
    rng: np.random.Generator,
    pair_seeds: bool,
) -> dict[str, dict[str, object]]:
    """Per diagnostic key, the difference B − A between two results and its bootstrap interval.

    Two results (two tasks of one grid, or two variants of one task) differ where the interval
    of their difference excludes 0, not where their own intervals fail to overlap: independent
    noise adds in quadrature, so the difference's interval is narrower than the two intervals'
    combined reach. Each result is resampled on its own (its seeds with the cltm stage's rule:
    paired by seed where `pair_seeds` and all its cells hold the same seeds), the two bootstraps
    independently of each other, `replicates` each; the point values are the data's own
    (point_estimate, equal to diagnostics.json's). Returns difference_of_draws' dict per key:
    a, b, difference, low, high, excludes_zero, replicates_used, replicates_dropped.
    """
    if not 0 < ci_level < 1:
        raise CltmError(f"ci_level must lie strictly between 0 and 1, not {ci_level}")
    unknown = [k for k in keys if k not in NUMERIC_KEYS]
    if unknown:
        raise CltmError(f"no bootstrap of {unknown}; the keys are {list(NUMERIC_KEYS)}")
    points, draws = [], []
    for cells in (cells_a, cells_b):
        est = replicate_diagnostics(point_estimate(cells),
                                    family_codes(cells.languages, families))
        points.append({k: float(est[k][0]) for k in keys})
        draws.append(diagnostic_draws(cells, families, keys=keys, replicates=replicates,
                                      rng=rng, paired=pairing(cells, pair_seeds)))
    return {k: difference_of_draws(points[0][k], points[1][k], draws[0][k], draws[1][k],
                                   ci_level) for k in keys}


# --- per-cell tests -----------------------------------------------------------------------------


def welch_p(mean_x: np.ndarray, var_x: np.ndarray, n_x: np.ndarray,
            mean_y: np.ndarray, var_y: np.ndarray, n_y: np.ndarray) -> np.ndarray:
    """Two-sided Welch t-test p-values from sample moments (ddof=1 variances), vectorised.

    NaN where a side has fewer than 2 seeds or the standard error is 0 (no measured noise).
    """
    mean_x, var_x, n_x, mean_y, var_y, n_y = (np.asarray(v, dtype=float) for v in (
        mean_x, var_x, n_x, mean_y, var_y, n_y))
    with np.errstate(divide="ignore", invalid="ignore"):
        ax, ay = var_x / n_x, var_y / n_y
        se2 = ax + ay
        t = (mean_x - mean_y) / np.sqrt(se2)
        df = se2**2 / (ax**2 / (n_x - 1) + ay**2 / (n_y - 1))  # Welch–Satterthwaite
        p = 2.0 * sps.t.sf(np.abs(t), df)
    ok = (n_x >= 2) & (n_y >= 2) & (se2 > 0) & np.isfinite(se2)
    return np.where(ok, p, np.nan)


def paired_p(diff: np.ndarray) -> np.ndarray:
    """Two-sided one-sample t-test p-values of per-seed differences (last axis) against 0.

    NaN where there are fewer than 2 differences or they have no spread (no measured noise).
    """
    diff = np.asarray(diff, dtype=float)
    k = diff.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = diff.mean(-1)
        se = diff.std(-1, ddof=1) / np.sqrt(k) if k > 1 else np.full(mean.shape, np.nan)
        p = 2.0 * sps.t.sf(np.abs(mean / se), k - 1)
    # Spread judged on the values themselves: the SD of equal floats can round to 1e-17.
    spread = np.ptp(diff, axis=-1) > 0 if k > 1 else np.zeros(mean.shape, bool)
    return np.where(spread & np.isfinite(se), p, np.nan)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values (adjusted p-values) of the finite p's; NaN p's stay NaN and are not counted."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok], kind="stable")
    scaled = p[ok][order] * m / np.arange(1, m + 1)
    # q_(k) = min over j >= k of p_(j) m / j: a running minimum from the largest p down.
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = adjusted
    q[ok] = out
    return q


def cell_tests(cells: SeedCells, fdr: float, result: CltmResult | None = None,
               paired: bool = False) -> pd.DataFrame:
    """One row per off-diagonal cell: the CLTM, its SE, the tests against 0 and 1, BH-adjusted.

    `paired`: tests on the per-seed differences (the seeds must be the same in every cell);
    else Welch's test on the two cells' seed scores.

    The CLTM and SE columns are `result`'s (compute_cltm's, so that they equal cltm.csv to the
    bit) when given, else the same values computed here from the seeds.
    """
    if not 0 < fdr < 1:
        raise CltmError(f"fdr must lie strictly between 0 and 1, not {fdr}")
    langs = cells.languages
    n = len(langs)
    mean, var = _moments(cells.values, cells.counts)
    tgt, don = np.nonzero(~np.eye(n, dtype=bool))
    x = cells.cross[tgt, don]
    point = point_estimate(cells)
    value, se = point.cltm[0, tgt, don], point.se[0, tgt, don]
    if result is not None:
        value = result.matrix.reindex(index=langs, columns=langs).to_numpy()[tgt, don]
        se = result.se.reindex(index=langs, columns=langs).to_numpy()[tgt, don]
    defined = (point.gain[0] > 0)[tgt]
    moments = (mean[x], var[x], cells.counts[x])

    if paired and cells.seeds is None:
        raise CltmError("paired tests need the same seeds in every cell")

    def test(other: np.ndarray) -> np.ndarray:
        y = other[tgt]
        if paired:
            p = paired_p(cells.values[x] - cells.values[y])
        else:
            p = welch_p(*moments, mean[y], var[y], cells.counts[y])
        return np.where(defined, p, np.nan)

    p0, p1 = test(cells.base), test(cells.self_)
    q0, q1 = benjamini_hochberg(p0), benjamini_hochberg(p1)
    differs0, differs1 = q0 <= fdr, q1 <= fdr  # NaN compares False: never a discovery
    direction = np.where(differs1, np.where(value > 1, "above 1", "below 1"), "")
    return pd.DataFrame({
        "target": np.array(langs)[tgt], "donor": np.array(langs)[don], "cltm": value, "se": se,
        "p_vs0": p0, "q_vs0": q0, "p_vs1": p1, "q_vs1": q1,
        "differs_from_0": differs0, "differs_from_1": differs1, "direction": direction,
    }, columns=list(SIGNIFICANCE_COLUMNS))


def marks_from_tests(tests: pd.DataFrame) -> pd.DataFrame:
    """Target x donor frame: +1 where a cell is above 1 at the FDR, -1 below, 0 otherwise."""
    sign = np.select([tests["direction"] == "above 1", tests["direction"] == "below 1"],
                     [1.0, -1.0], 0.0)
    return tests.assign(mark=sign).pivot(index="target", columns="donor", values="mark")


# --- family structure ---------------------------------------------------------------------------


def _defined_square(matrix: pd.DataFrame) -> pd.DataFrame:
    m = check_matrix(matrix)
    keep = [t for t in m.index if not m.loc[t].isna().all()]
    return m.loc[keep, keep]


def _family_sums(c_off: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Sum of c_off over same-family pairs, for each labelling in `onehot` (P, m, F)."""
    return np.einsum("pif,ij,pjf->p", onehot, c_off, onehot)


def donor_ranks(c_off: np.ndarray) -> np.ndarray:
    """Each row's off-diagonal entries ranked within the row and scaled to [0, 1] (average
    ranks for ties); 0 on the diagonal. Needs at least 3 languages."""
    m = c_off.shape[0]
    out = np.zeros_like(c_off, dtype=float)
    for i in range(m):
        donors = np.arange(m) != i
        out[i, donors] = (sps.rankdata(c_off[i, donors]) - 1.0) / (m - 2)
    return out


def _perm_p(null: np.ndarray, observed: float, *, two_sided: bool) -> float:
    # A small tolerance so that a shuffle equal to the data (up to float rounding) counts.
    tol = 1e-12 * max(1.0, abs(observed))
    hits = (np.abs(null) >= abs(observed) - tol) if two_sided else (null >= observed - tol)
    return float((1 + hits.sum()) / (1 + null.size))


def weighted_contrasts(c: np.ndarray, gain: np.ndarray, same: np.ndarray) -> np.ndarray:
    """weighted_contrast of B CLTMs `c` (B, m, m) with self-gains `gain` (B, m) under P family
    labellings `same` (P, m, m; True for same-family pairs, the diagonal ignored): (B, P).
    NaN where a row of a CLTM is undefined. Every labelling must have a same-family pair."""
    off = ~np.eye(c.shape[1], dtype=bool)
    weights = gain[:, :, None] * off  # a cell's weight is its target's self-gain
    weighted = weights * np.where(off, c, 0.0)  # NaN rows stay NaN
    same = same & off
    num = np.einsum("bij,pij->bp", weighted, same)
    den = np.einsum("bij,pij->bp", weights, same)
    cross_num = weighted.sum((1, 2))[:, None] - num
    cross_den = weights.sum((1, 2))[:, None] - den
    return num / den - cross_num / cross_den


def weighted_contrast_draws(cells: SeedCells, families: Mapping[str, str] | None, *,
                            replicates: int, rng: np.random.Generator,
                            paired: bool) -> tuple[float | None, np.ndarray]:
    """The weighted contrast of the data, over its defined languages, and of `replicates`
    bootstrap replicates of it (NaN where one of those languages is undefined). None and no
    draws where a defined language has no family or no two share one."""
    point = point_estimate(cells)
    defined = ~np.isnan(point.cltm[0]).all(1)
    codes = family_codes(cells.languages, families)[defined]
    same = (codes[:, None] == codes[None, :]) & ~np.eye(len(codes), dtype=bool)
    if (codes < 0).any() or not same.any():
        return None, np.full(0, np.nan)
    keep = np.ix_(defined, defined)

    def of(rep: Replicates) -> np.ndarray:
        return weighted_contrasts(rep.cltm[(slice(None), *keep)], rep.gain[:, defined],
                                  same[None])[:, 0]

    draws = [of(rep) for rep in bootstrap_replicates(cells, replicates, rng, paired)]
    return float(of(point)[0]), np.concatenate(draws) if draws else np.full(0, np.nan)


#: The family test's level: a family structure is found at p below it.
FAMILY_ALPHA = 0.05


def family_test(fam: Mapping) -> tuple[float | None, float | None]:
    """The family test every verdict reads, from family_structure's output: the weighted
    contrast and its permutation p (the plain contrast's where no self-gains gave a weighted
    one)."""
    key = "weighted_contrast" if fam.get("weighted_contrast") is not None else "contrast"
    return fam.get(key), fam.get(f"{key}_p")


def families_found(contrast: float | None, p: float | None) -> bool | None:
    """Are the families found: same-family donors transfer more (contrast > 0) at p below
    FAMILY_ALPHA; None where the test could not be made."""
    if contrast is None or p is None:
        return None
    return bool(p < FAMILY_ALPHA and contrast > 0)


def family_verdict(fam: Mapping) -> dict[str, object]:
    """The family test's verdict, written beside family_structure's numbers: which statistic
    it reads (family_test), its value and p, and whether the families are found."""
    contrast, p = family_test(fam)
    return {"statistic": ("weighted_contrast" if fam.get("weighted_contrast") is not None
                          else "contrast"),
            "contrast": contrast, "p": p, "alpha": FAMILY_ALPHA,
            "families_found": families_found(contrast, p)}


def ones_verdict(differ_from_1: int, tested_vs1: int, fdr: float,
                 rfd1_interval: Mapping | None, rfd1_noise: Mapping | None,
                 family_p: float | None) -> dict[str, object]:
    """Is the CLTM consistent with all ones (the null control's question)? Three parts:
    no more cells differ from 1 than the FDR allows a true null; rfd1's interval covers the
    value seed noise alone gives; the family test finds no structure. `consistent` is their
    conjunction over the parts that could be judged (None where none could)."""
    allowed = fdr * tested_vs1
    low, high = (rfd1_interval or {}).get("low"), (rfd1_interval or {}).get("high")
    noise = (rfd1_noise or {}).get("mean")
    covers = None if None in (low, high, noise) else bool(low <= noise <= high)
    no_family = None if family_p is None else bool(family_p >= FAMILY_ALPHA)
    parts = {"cells_consistent": bool(differ_from_1 <= allowed),
             "rfd1_covers_noise": covers, "no_family_structure": no_family}
    return {"cells_allowed": allowed, **parts,
            "consistent": all(v for v in parts.values() if v is not None)}


def family_structure(
    matrix: pd.DataFrame,
    families: Mapping[str, str] | None,
    *,
    family_level: str,
    permutations: int,
    rng: np.random.Generator,
    self_gain: Mapping[str, float] | pd.Series | None = None,
) -> dict[str, object]:
    """The family-block contrast and intra_family_pos with permutation p-values and chance values;
    with `self_gain` (per target), the weighted contrast too.

    Works on the defined languages of `matrix` (all-NaN rows and their columns left out). Null
    statistics where a language has no family, or there are fewer than 2 families or no
    same-family pair; null p and chance values when `permutations` is 0.
    """
    out: dict[str, object] = dict.fromkeys(FAMILY_KEYS)
    out.update(family_level=family_level, permutations=int(permutations))
    sub = _defined_square(matrix)
    codes = family_codes(list(sub.index), families)
    if codes.size == 0 or (codes < 0).any():
        return out
    n_fam = int(np.unique(codes).size)
    out["n_families"] = n_fam
    m = len(codes)
    off = ~np.eye(m, dtype=bool)
    same = (codes[:, None] == codes[None, :]) & off
    if n_fam < 2 or not same.any():
        return out
    c_off = np.where(off, sub.to_numpy(), 0.0)
    mass = np.where(c_off > 0, c_off, 0.0)
    ranks = donor_ranks(c_off)
    n_same, n_all = int(same.sum()), int(off.sum())
    total, pos_total, rank_total = c_off.sum(), mass.sum(), ranks.sum()
    gain = None if self_gain is None else pd.Series(self_gain).reindex(sub.index).to_numpy(float)

    def contrast_of(same_sum: np.ndarray, all_sum: float) -> np.ndarray:
        return same_sum / n_same - (all_sum - same_sum) / (n_all - n_same)

    def stats_of(hot: np.ndarray) -> tuple[np.ndarray, ...]:
        mass_sum = _family_sums(mass, hot)
        intra = mass_sum / pos_total if pos_total > 0 else np.full(mass_sum.shape, np.nan)
        plain = (contrast_of(_family_sums(c_off, hot), total),
                 contrast_of(_family_sums(ranks, hot), rank_total), intra)
        if gain is None:
            return (*plain, np.full(mass_sum.shape, np.nan))
        same_of = np.einsum("pif,pjf->pij", hot, hot).astype(bool)
        return (*plain, weighted_contrasts(c_off[None], gain[None], same_of)[0])

    contrast, rank_contrast, intra, wcontrast = stats_of(np.eye(n_fam)[codes][None])
    out.update(contrast=float(contrast[0]), rank_contrast=float(rank_contrast[0]),
               same_family_pair_share=n_same / n_all,
               intra_family_pos=float(intra[0]) if pos_total > 0 else None,
               weighted_contrast=None if gain is None else float(wcontrast[0]))
    if permutations <= 0:
        return out
    nulls: list[list[np.ndarray]] = [[], [], [], []]
    for start in range(0, permutations, CHUNK):
        size = min(CHUNK, permutations - start)
        shuffled = rng.permuted(np.broadcast_to(codes, (size, m)), axis=1)
        for null, values in zip(nulls, stats_of(np.eye(n_fam)[shuffled]), strict=True):
            null.append(values)
    nc, nr, ni, nw = (np.concatenate(x) for x in nulls)
    out.update(contrast_p=_perm_p(nc, out["contrast"], two_sided=True),
               contrast_chance=float(nc.mean()),
               rank_contrast_p=_perm_p(nr, out["rank_contrast"], two_sided=True))
    if gain is not None:
        out.update(weighted_contrast_p=_perm_p(nw, out["weighted_contrast"], two_sided=True),
                   weighted_contrast_chance=float(nw.mean()))
    if out["intra_family_pos"] is not None:
        out.update(intra_family_pos_p=_perm_p(ni, out["intra_family_pos"], two_sided=False),
                   intra_family_pos_chance=float(ni.mean()))
    return out


def format_family(fs: Mapping[str, object]) -> str:
    """A family_structure dict as one readable line."""
    def num(key: str, fmt: str = ".4f") -> str:
        v = fs.get(key)
        return "n/a" if v is None else format(v, fmt)

    if fs.get("contrast") is None:
        return (f"family structure ({fs.get('family_level')}): not testable (a language without "
                "a family, fewer than 2 families, or no same-family pair)")
    return (f"family structure ({fs.get('family_level')}, {fs.get('n_families')} families): "
            f"contrast {num('contrast')} (two-sided permutation p {num('contrast_p')}, chance "
            f"{num('contrast_chance')}); rank contrast {num('rank_contrast')} (p "
            f"{num('rank_contrast_p')}); weighted contrast {num('weighted_contrast')} (p "
            f"{num('weighted_contrast_p')}); intra_family_pos {num('intra_family_pos')} "
            f"(one-sided p {num('intra_family_pos_p')}, chance {num('intra_family_pos_chance')}, "
            f"same-family pair share {num('same_family_pair_share')}); {fs.get('permutations')} "
            "permutations")


# --- the stage's files --------------------------------------------------------------------------


def streams(stats_seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent bootstrap and permutation generators from one seed (so that changing the
    number of permutations leaves the bootstrap as it was)."""
    if int(stats_seed) < 0:
        raise CltmError(f"stats_seed must be a non-negative integer, not {stats_seed}")
    boot, perm = np.random.SeedSequence(int(stats_seed)).spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(perm)


def noise_stream(stats_seed: int) -> np.random.Generator:
    """A third independent generator (the noise floor); the first two stay as they were."""
    return np.random.default_rng(np.random.SeedSequence(int(stats_seed)).spawn(3)[2])


def contrast_stream(stats_seed: int) -> np.random.Generator:
    """A fourth independent generator (the difference between two results); the others stay."""
    if int(stats_seed) < 0:
        raise CltmError(f"stats_seed must be a non-negative integer, not {stats_seed}")
    return np.random.default_rng(np.random.SeedSequence(int(stats_seed)).spawn(4)[3])


def transfer_streams(stats_seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """A fifth independent seed (donor rankings and the transfer graph), split as streams() is
    into bootstrap and permutation generators; the other four streams stay as they were."""
    if int(stats_seed) < 0:
        raise CltmError(f"stats_seed must be a non-negative integer, not {stats_seed}")
    boot, perm = np.random.SeedSequence(int(stats_seed)).spawn(5)[4].spawn(2)
    return np.random.default_rng(boot), np.random.default_rng(perm)


def is_paired(info: Mapping) -> bool:
    """Whether a stats_info.json says the runs were paired by seed."""
    return info.get("seed_design") == PAIRED_DESIGN



def difference_summary(
    cells_a: SeedCells,
    cells_b: SeedCells,
    *,
    labels: tuple[str, str] = ("a", "b"),
    families: Mapping[str, str] | None = None,
    keys: Sequence[str],
    replicates: int,
    ci_level: float,
    stats_seed: int,
    pair_seeds: bool,
) -> dict[str, object]:
    """difference_intervals of B − A with the settings that made them, as JSON-ready values.

    {"a": label A, "b": label B, "difference": "B - A", the settings, "seed_design" per result,
    "diagnostics": {key: {a, b, difference, low, high, excludes_zero, replicates_used,
    replicates_dropped}}}. The generator is contrast_stream(stats_seed): the same inputs and
    settings give the same values.
    """
    diff = difference_intervals(cells_a, cells_b, families, keys=keys, replicates=replicates,
                                ci_level=ci_level, rng=contrast_stream(stats_seed),
                                pair_seeds=pair_seeds)
    design = {label: PAIRED_DESIGN if pairing(cells, pair_seeds) else "independent seeds"
              for label, cells in zip(labels, (cells_a, cells_b), strict=True)}
    out = {"a": labels[0], "b": labels[1], "difference": f"{labels[1]} - {labels[0]}",
           "ci_level": ci_level, "bootstrap": int(replicates), "stats_seed": int(stats_seed),
           "seed_design": design, "diagnostics": {k: json_ready(v) for k, v in diff.items()}}
    return out
