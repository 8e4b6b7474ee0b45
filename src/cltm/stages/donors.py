"""`cltm donors TARGET`: which donors help a target, from a run store (with intervals and tests)
or from a CLTM csv (point values only). A command, not a dvc.yaml stage."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cltm.analysis.cltm import compute_cltm, read_run_store
from cltm.analysis.donors import (
    check_defined,
    check_target,
    donor_rankings,
    donor_ranks,
    format_donors,
    transfer_draws,
)
from cltm.analysis.stats import PAIRED_DESIGN, cell_tests, pairing, seed_cells, transfer_streams
from cltm.analysis.tables import read_matrix_csv
from cltm.config import AnalysisConfig


def run_donors(target: str, source: Path, task: str | None, families: Mapping[str, str],
               a: AnalysisConfig) -> str:
    """`cltm donors`: the donor table of `target` from a run store (a directory holding
    runs.jsonl, or the file: intervals and tests, the values donors.csv holds for the same
    settings) or from a CLTM csv (point values only, and the text says so)."""
    fdr, bootstrap, ci_level, top_k = a.fdr, a.bootstrap, a.ci_level, a.top_k
    stats_seed = a.stats_seed
    source = Path(source)
    if source.is_file() and source.suffix == ".csv":
        return _donors_of_matrix(target, source, families)
    runs = read_run_store(source, task)
    result = compute_cltm(runs, pair_seeds=a.pair_seeds)
    langs = list(result.matrix.index)
    check_target(target, langs)
    check_defined(target, result.matrix, result.self_gain.get(target))
    cells = seed_cells(runs, langs)
    paired = pairing(cells, a.pair_seeds)
    tests = cell_tests(cells, fdr, result, paired)
    boot, _ = transfer_streams(stats_seed)
    td = transfer_draws(cells, replicates=bootstrap, level=ci_level, rng=boot, paired=paired,
                        matrix=result.matrix)
    table = donor_rankings(td, tests, families, top_k=top_k)
    table = table[table["target"] == target]
    design = PAIRED_DESIGN if paired else "independent seeds"
    header = (f"Donors of {target}{f' ({task})' if task else ''}, ranked by CLTM[{target}, "
              f"donor]: {bootstrap} seed-bootstrap replicates ({design}), "
              f"{100 * ci_level:g}% intervals; tests against 0 and 1 with Benjamini-Hochberg "
              f"at FDR {fdr:g}; top-k share: the share of replicates in which the donor is "
              f"among the best {top_k}.")
    return format_donors(table, target, families=families, header=header)


def _donors_of_matrix(target: str, path: Path, families: Mapping[str, str]) -> str:
    matrix = read_matrix_csv(path, "CLTM")
    langs = [str(x) for x in matrix.index]
    check_target(target, langs)
    matrix = matrix.reindex(index=langs, columns=langs)
    check_defined(target, matrix, None)
    k = langs.index(target)
    ranks = donor_ranks(matrix.to_numpy(dtype=float))[k]
    table = pd.DataFrame({"target": target, "donor": langs, "cltm": matrix.iloc[k].to_numpy(),
                          "rank": ranks}).drop(index=k)
    table = table.sort_values(["rank", "donor"]).astype({"rank": int})
    header = (f"Donors of {target}, ranked by CLTM[{target}, donor] from {path}: point values "
              "only (a CLTM csv holds no seeds, so no intervals and no tests; give the run "
              "store, --runs DIR, for them).")
    return format_donors(table, target, families=families, header=header)
