"""`cltm diagnostics`: the paper's diagnostics of any CLTM stored as CSV, from this pipeline or
any other (a command, not a dvc.yaml stage)."""

from __future__ import annotations

import logging
from pathlib import Path

from cltm.analysis.diagnostics import KEYS, diagnostics
from cltm.analysis.languages import check_family_level, family_map
from cltm.analysis.stats import family_structure, family_verdict, format_family, streams
from cltm.analysis.tables import read_matrix_csv, read_self_gain
from cltm.jsonfile import json_ready, write_json
from cltm.layout import SELF_GAIN_FILE

log = logging.getLogger(__name__)


def run_diagnostics(
    matrix_csv: Path,
    se_csv: Path | None,
    family_level: str,
    json_out: Path | None,
    *,
    families_csv: Path | None = None,
    self_gain_csv: Path | None = None,
    permutations: int,
    stats_seed: int,
    family_json: Path | None = None,
) -> dict:
    """The diagnostics of a CLTM stored as CSV (from this pipeline or any other); returns them.

    Self-gains are not in the matrix: they are read from `self_gain_csv`, by default the
    self_gain.csv that the cltm stage writes beside cltm.csv; without one, self_gain_mean/std
    are null. A matrix carries no seed-level data, so of the uncertainty outputs only the family
    permutation test can be run: with `permutations` > 0 it is logged and, given `family_json`,
    written there (as family_structure.json); the return value stays the diagnostics alone.
    """
    check_family_level(family_level)
    matrix_csv = Path(matrix_csv)
    matrix = read_matrix_csv(matrix_csv, "CLTM")
    se = None if se_csv is None else read_matrix_csv(Path(se_csv), "SE")
    if self_gain_csv is None and (matrix_csv.parent / SELF_GAIN_FILE).is_file():
        self_gain_csv = matrix_csv.parent / SELF_GAIN_FILE
        log.info("self-gains read from %s", self_gain_csv)
    gains = None if self_gain_csv is None else read_self_gain(Path(self_gain_csv))
    families = family_map(family_level, families_csv)
    diag = json_ready(diagnostics(matrix, se, families, self_gain=gains))
    if diag["undefined_targets"]:
        known = {} if gains is None else gains.to_dict()
        log.warning(
            "undefined CLTM rows (all NaN) left out of the diagnostics: %s",
            ", ".join(t + (f" (Δ_ii = {known[t]:.4g})" if t in known else "")
                      for t in diag["undefined_targets"]),
        )
    if json_out is not None:
        write_json({k: diag[k] for k in KEYS}, Path(json_out))
    if permutations > 0 or family_json is not None:
        fam = family_structure(matrix, families, family_level=family_level,
                               permutations=permutations, rng=streams(stats_seed)[1],
                               self_gain=gains)
        log.info("%s", format_family(fam))
        if family_json is not None:
            write_json({**fam, "family_test": family_verdict(fam)}, Path(family_json))
    return diag
