"""Aggregate diagnostics of any CLTM (PROTOCOL.md, Definitions; the paper's Table 1).

Pure functions of a matrix: they work on a CLTM from this pipeline or from any other project.
Rows that are all NaN are undefined targets (self-gain not positive); they and their columns are
left out, so every metric is computed on the square matrix of the defined languages.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from cltm.errors import CltmError

log = logging.getLogger(__name__)

DIAGONAL_TOL = 1e-9

#: The keys of a diagnostics dict, in the order they are written and printed.
KEYS = (
    "n_languages", "rfd1", "asym_rel", "prop_pos", "reciprocity_pos", "cos_rows",
    "intra_family_pos", "rms", "se_median", "se_mean", "self_gain_mean", "self_gain_std",
    "undefined_targets",
)  # fmt: skip

#: Metrics reported as shares (fractions in [0, 1]).
PROPORTIONS = ("prop_pos", "reciprocity_pos", "intra_family_pos")


def check_matrix(matrix: pd.DataFrame, what: str = "the CLTM") -> pd.DataFrame:
    """The matrix with string labels and its columns in row order, or a CltmError.

    Rows and columns must name the same languages; the same set in another order is accepted
    (columns are reordered to the rows), a different set is not.
    """
    m = matrix.copy()
    m.index = m.index.map(str)
    m.columns = m.columns.map(str)
    if m.shape[0] != m.shape[1]:
        raise CltmError(
            f"{what} is not square: {m.shape[0]} rows, {m.shape[1]} columns; it needs one row "
            "per target and one column per donor, over the same languages"
        )
    for axis, labels in (("row", m.index), ("column", m.columns)):
        if labels.has_duplicates:
            dups = sorted(set(labels[labels.duplicated()]))
            raise CltmError(f"{what} repeats {axis} labels {dups}; each language must appear once")
    if set(m.index) != set(m.columns):
        only_rows = sorted(set(m.index) - set(m.columns))
        only_cols = sorted(set(m.columns) - set(m.index))
        raise CltmError(
            f"{what}'s row labels differ from its column labels (rows only: {only_rows}, columns "
            f"only: {only_cols}); targets and donors must be the same languages"
        )
    m = m[list(m.index)]
    try:
        m = m.apply(pd.to_numeric, errors="raise").astype(float)
    except (ValueError, TypeError) as exc:
        raise CltmError(f"{what} holds a value that is not a number ({exc}); fix the file") from exc
    return m


def _check_diagonal(m: pd.DataFrame, defined: list[str]) -> None:
    diag = np.array([m.at[t, t] for t in defined], dtype=float)
    bad = [t for t, d in zip(defined, diag) if not abs(d - 1.0) <= DIAGONAL_TOL]
    if bad:
        shown = ", ".join(f"{t}: {m.at[t, t]!r}" for t in bad[:5])
        raise CltmError(
            f"the CLTM diagonal must be 1 (a row normalised by its own self-gain) but is not for "
            f"{shown}; is this a row-normalised CLTM with targets as rows?"
        )


def _fraction(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _cos_rows(c: np.ndarray) -> float | None:
    n = len(c)
    if n < 2:
        return None
    unit = c / np.linalg.norm(c, axis=1, keepdims=True)
    gram = unit @ unit.T
    return float(gram[~np.eye(n, dtype=bool)].mean())


def _intra_family(c: np.ndarray, labels: list[str],
                  families: Mapping[str, str] | None) -> float | None:
    if families is None:
        return None
    unknown = [t for t in labels if not families.get(t)]
    if unknown:
        log.warning(
            "no family known for %s (not in the language metadata nor a families file); "
            "intra_family_pos is left null", ", ".join(unknown)
        )
        return None
    groups = np.array([families[t] for t in labels])
    off = ~np.eye(len(labels), dtype=bool)
    # Positive off-diagonal mass only; the diagonal is not transfer (the reference counted it).
    mass = np.where(off & (c > 0), c, 0.0)
    same = groups[:, None] == groups[None, :]
    return _fraction(mass[same].sum(), mass.sum())


def _se_stats(se: pd.DataFrame | None, m: pd.DataFrame,
              defined: list[str]) -> tuple[float | None, float | None]:
    if se is None or len(defined) < 2:
        return None, None
    s = check_matrix(se, "the SE matrix")
    if set(s.index) != set(m.index):
        raise CltmError(
            f"the SE matrix covers {sorted(s.index)} but the CLTM covers {sorted(m.index)}; "
            "give the SE file written with this CLTM"
        )
    vals = s.loc[defined, defined].to_numpy()[~np.eye(len(defined), dtype=bool)]
    if not np.isfinite(vals).all():
        log.warning("some off-diagonal SEs are undefined (a cell with one seed?); "
                    "se_median and se_mean are left null")
        return None, None
    return float(np.median(vals)), float(np.mean(vals))


def _self_gain_stats(self_gain: Mapping[str, float] | pd.Series | None,
                     defined: list[str]) -> tuple[float | None, float | None]:
    if self_gain is None or not defined:
        return None, None
    gains = pd.Series(self_gain, dtype=float)
    missing = [t for t in defined if t not in gains.index]
    if missing:
        log.warning("no self-gain given for %s; self_gain_mean/std are left null",
                    ", ".join(missing))
        return None, None
    g = gains.loc[defined].to_numpy()
    std = float(np.std(g, ddof=1)) if len(g) > 1 else None
    return float(np.mean(g)), std


def diagnostics(
    matrix: pd.DataFrame,
    se: pd.DataFrame | None = None,
    families: Mapping[str, str] | None = None,
    *,
    self_gain: Mapping[str, float] | pd.Series | None = None,
) -> dict:
    """Table 1's diagnostics of a CLTM (rows = targets, columns = donors, diagonal 1).

    Returns the keys of `KEYS`; a metric that cannot be formed (no off-diagonal entry, no
    positive entry, no SEs, a language without a family) is None. `undefined_targets` lists the
    all-NaN rows, which are left out together with their columns. `self_gain` (Δ_ii by target)
    gives self_gain_mean and self_gain_std (ddof=1, the spread over languages) over the defined
    languages. Values are not rounded.
    """
    m = check_matrix(matrix)
    undefined = [t for t in m.index if m.loc[t].isna().all()]
    defined = [t for t in m.index if t not in undefined]
    _check_diagonal(m, defined)
    sub = m.loc[defined, defined]
    c = sub.to_numpy()
    if not np.isfinite(c).all():
        r, k = np.argwhere(~np.isfinite(c))[0]
        raise CltmError(
            f"CLTM[{defined[r]}, {defined[k]}] is {c[r, k]}: a defined row must be complete over "
            "the defined languages (only whole rows may be NaN, for undefined targets)"
        )

    n = len(defined)
    off = ~np.eye(n, dtype=bool)
    pos = off & (c > 0)
    norm_c = float(np.linalg.norm(c)) if n else 0.0
    se_median, se_mean = _se_stats(se, m, defined)
    gain_mean, gain_std = _self_gain_stats(self_gain, defined)
    return {
        "n_languages": n,
        "rfd1": float(np.linalg.norm(c - 1.0)) / n if n else None,
        "asym_rel": _fraction(float(np.linalg.norm(c - c.T)), norm_c),
        "prop_pos": _fraction(pos.sum(), off.sum()),
        # Graph reciprocity: of the positive edges i<-j, the share whose reverse is positive too.
        "reciprocity_pos": _fraction((pos & pos.T).sum(), pos.sum()),
        "cos_rows": _cos_rows(c),
        "intra_family_pos": _intra_family(c, defined, families),
        "rms": norm_c / n if n else None,
        "se_median": se_median,
        "se_mean": se_mean,
        "self_gain_mean": gain_mean,
        "self_gain_std": gain_std,
        "undefined_targets": undefined,
    }


def format_table(d: Mapping) -> str:
    """A diagnostics dict as an aligned two-column text table."""
    rows = []
    for key in KEYS:
        v = d.get(key)
        if key == "undefined_targets":
            text = ", ".join(map(str, v)) if v else "none"
        elif v is None or (isinstance(v, float) and not np.isfinite(v)):
            text = "n/a"
        elif key in PROPORTIONS:
            text = f"{v:.4f}  ({100 * v:.2f}%)"
        elif isinstance(v, int):
            text = str(v)
        else:
            text = f"{v:.4f}"
        rows.append((key, text))
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{k:<{width}}  {t}" for k, t in rows]
    return "\n".join(lines)
