"""Reading CLTM-shaped CSVs (cltm.csv, cltm_se.csv, self_gain.csv) exactly as they were written."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from cltm.errors import CltmError

log = logging.getLogger(__name__)


def read_matrix_csv(path: Path, what: str = "matrix") -> pd.DataFrame:
    """A CLTM-shaped CSV (as cltm.csv: a `target` column, then one column per donor)."""
    path = Path(path)
    if not path.is_file():
        raise CltmError(f"{what} file {path} does not exist")
    return read_exact(path, what).set_index("target")


def read_exact(path: Path, what: str) -> pd.DataFrame:
    """A CSV whose value columns are parsed by Python's float(), which round-trips exactly.

    pandas' own float parser may differ from the written value in the last bit (and its
    round-trip option is deprecated); exact values make the diagnostics of a saved matrix equal
    those of the matrix in memory, sign tests (> 0) included.
    """
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "target" not in table.columns:
        raise CltmError(
            f"{path} has no 'target' column; a {what} file holds the target locales in a column "
            "named 'target' and one value column per donor (cltm.csv) or 'self_gain'"
        )

    def number(text: str) -> float:
        try:
            return float(text) if text.strip() else float("nan")
        except ValueError:
            raise CltmError(f"{path} holds {text!r} where a number belongs; fix the file") from None

    for col in table.columns:
        if col != "target":
            table[col] = [number(v) for v in table[col]]
    return table


def read_self_gain(path: Path) -> pd.Series | None:
    # Missing self-gains only null two statistics: warn rather than refuse the whole matrix.
    try:
        table = read_exact(path, "self-gain")
    except CltmError as exc:
        log.warning("%s; self-gain statistics left null", exc)
        return None
    if "self_gain" not in table.columns:
        log.warning("%s has no self_gain column; self-gain statistics left null", path)
        return None
    return table.set_index("target")["self_gain"]
