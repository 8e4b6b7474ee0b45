"""The `cltm cltm`, `cltm diagnostics` and `cltm report` commands' work, called by the CLI.

Per task the `cltm` stage writes, under `metrics/<task>/`:
  cltm.csv, cltm_se.csv        the matrix and its delta-method SEs (index column `target`)
  performance.csv              seeds, mean, std of the score per (target, condition, donor)
  diagnostics.json             Table 1's diagnostics (keys: diagnostics.KEYS)
  undefined.csv                target, self_gain of the targets whose self-gain is not positive
  self_gain.csv, offdiag.csv   data for DVC's plots
  heatmap.png, heatmap_highlight.png, self_gain.png, offdiag_hist.png
and, from the seed-level data (stats.py says how):
  cltm_significance.csv        per off-diagonal cell: tests against 0 and 1, BH q-values
  diagnostics_ci.json          bootstrap percentile interval of each numeric diagnostic
  family_structure.json        family-block contrast, intra_family_pos, permutation p-values
  stats_info.json              the settings, cell counts, how the bootstrap's language set moved
and which donors help each target (transfer.py says how): donors.csv, profiles.csv,
transfer_graph.json, coclustering.csv, donors.png, profiles.png, coclustering.png,
transfer_map.png.
The heatmaps mark the cells that differ from 1 at the FDR with a "+" or "−".
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cltm.analysis import plots
from cltm.analysis.cltm import CltmResult, compute_cltm, read_run_store, run_health
from cltm.analysis.diagnostics import KEYS, PROPORTIONS, diagnostics, json_ready, write_json
from cltm.analysis.languages import check_family_level, display_names, family_map
from cltm.analysis.report import run_report
from cltm.analysis.stats import (
    PAIRED_DESIGN,
    cell_tests,
    diagnostic_intervals,
    family_structure,
    format_family,
    marks_from_tests,
    noise_floor,
    noise_stream,
    pairing,
    seed_cells,
    streams,
)
from cltm.analysis.transfer import TRANSFER_FILES, write_transfer
from cltm.errors import CltmError

log = logging.getLogger(__name__)

__all__ = ["format_table", "run_cltm", "run_diagnostics", "run_report"]

#: The 16 languages of the paper's reduced heatmaps (Figure 5).
PAPER_HIGHLIGHT = ("ar", "en", "de", "ckb", "kmr", "fr", "ca", "es", "be", "ru", "uk", "eu",
                   "zh-CN", "zh-TW", "ky", "tr")

#: The uncertainty outputs (write_stats; stats.py computes them).
SIGNIFICANCE_FILE = "cltm_significance.csv"
CI_FILE = "diagnostics_ci.json"
FAMILY_FILE = "family_structure.json"
INFO_FILE = "stats_info.json"
STATS_FILES = (SIGNIFICANCE_FILE, CI_FILE, FAMILY_FILE, INFO_FILE)
#: The share of runs that learnt nothing their score shows (cltm.run_health).
HEALTH_FILE = "run_health.json"
OUTPUT_FILES = (
    "cltm.csv", "cltm_se.csv", "performance.csv", "diagnostics.json", "undefined.csv",
    "self_gain.csv", "offdiag.csv", "heatmap.png", "heatmap_highlight.png", "self_gain.png",
    "offdiag_hist.png", HEALTH_FILE, *STATS_FILES, *TRANSFER_FILES,
)  # fmt: skip


def _write_json(d: Mapping, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: d[k] for k in KEYS}, indent=2) + "\n", encoding="utf-8")


def write_stats(
    runs: pd.DataFrame,
    result: CltmResult,
    diag: Mapping[str, object],
    families: Mapping[str, str] | None,
    out_dir: Path,
    *,
    family_level: str,
    fdr: float = 0.05,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    permutations: int = 2000,
    stats_seed: int = 0,
    pair_seeds: bool = True,
) -> pd.DataFrame:
    """Write cltm_significance.csv, diagnostics_ci.json, family_structure.json, stats_info.json.

    `diag` is the data's diagnostics (as written to diagnostics.json); returns the cell tests.
    Every file is written even when the bootstrap or the permutations are off (0): with nulls.
    `pair_seeds`: pair runs by seed where every cell has the same seeds (stats.py says why).
    """
    out_dir = Path(out_dir)
    boot_rng, perm_rng = streams(stats_seed)
    cells = seed_cells(runs, list(result.matrix.index))
    paired = pairing(cells, pair_seeds)
    if pair_seeds and not paired:
        log.warning("the cells of the run store do not all hold the same seeds: seeds are "
                    "treated as independent (unpaired tests and bootstrap)")
    tests = cell_tests(cells, fdr, result, paired)
    tests.to_csv(out_dir / SIGNIFICANCE_FILE, index=False)

    ci, info = diagnostic_intervals(cells, families, diag, replicates=bootstrap, level=ci_level,
                                    rng=boot_rng, paired=paired)
    write_json({k: json_ready(v) for k, v in ci.items()}, out_dir / CI_FILE)
    fam = family_structure(result.matrix, families, family_level=family_level,
                           permutations=permutations, rng=perm_rng, self_gain=result.self_gain)
    write_json(json_ready(fam), out_dir / FAMILY_FILE)

    floor = noise_floor(cells, families, replicates=bootstrap, level=ci_level,
                        rng=noise_stream(stats_seed), paired=paired)
    settings = {"fdr": fdr, "bootstrap": int(bootstrap), "ci_level": ci_level,
                "permutations": int(permutations), "stats_seed": int(stats_seed),
                "seed_design": PAIRED_DESIGN if paired else "independent seeds",
                "seeds_per_cell": int(cells.counts.max())}
    counts = {"tested_vs0": int(tests["p_vs0"].notna().sum()),
              "tested_vs1": int(tests["p_vs1"].notna().sum()),
              "differs_from_0": int(tests["differs_from_0"].sum()),
              "differs_from_1": int(tests["differs_from_1"].sum())}
    write_json(_rounded({**settings, "cells": counts, "noise_floor": floor,
                         "bootstrap_replicates": info}), out_dir / INFO_FILE)
    log.info("%d of %d tested cells differ from 1 at FDR %g; %s", counts["differs_from_1"],
             counts["tested_vs1"], fdr, format_family(fam))
    return tests


def _rounded(d: Mapping) -> dict:
    return {k: _rounded(v) if isinstance(v, Mapping) else json_ready({"v": v})["v"]
            for k, v in d.items()}


def _offdiag(result: CltmResult) -> pd.DataFrame:
    """Long table of the defined off-diagonal cells: target, donor, value, se."""
    value = result.matrix.stack().rename("value")
    se = result.se.stack().rename("se")
    table = pd.concat([value, se], axis=1).reset_index()
    table.columns = ["target", "donor", "value", "se"]
    return table[table["target"] != table["donor"]].reset_index(drop=True)


def _write_tables(result: CltmResult, out_dir: Path) -> pd.DataFrame:
    result.matrix.to_csv(out_dir / "cltm.csv", index_label="target")
    result.se.to_csv(out_dir / "cltm_se.csv", index_label="target")
    result.performance.to_csv(out_dir / "performance.csv", index=False)
    result.undefined.rename("self_gain").to_csv(out_dir / "undefined.csv", index_label="target")
    pd.concat([result.self_gain, result.self_gain_se], axis=1).to_csv(
        out_dir / "self_gain.csv", index_label="target")
    offdiag = _offdiag(result)
    offdiag.to_csv(out_dir / "offdiag.csv", index=False)
    return offdiag


def run_cltm(
    task: str,
    runs_dir: Path,
    out_dir: Path,
    *,
    family_level: str = "genus",
    highlight: list[str] | None = None,
    families_csv: Path | None = None,
    fdr: float = 0.05,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    permutations: int = 2000,
    stats_seed: int = 0,
    pair_seeds: bool = True,
    top_k: int = 3,
) -> dict:
    """Compute a task's CLTM from its run store and write every output; returns the diagnostics.

    `runs_dir` is `metrics/runs/<task>` (or its runs.jsonl); `highlight` defaults to the paper's
    16 languages (those present are drawn); `families_csv` (a demo corpus's planted families)
    overrides the language metadata for the locales it lists. `fdr`, `bootstrap` (resamples;
    0: none), `ci_level`, `permutations` (0: none), `stats_seed` and `pair_seeds` set the
    uncertainty outputs (write_stats); they leave diagnostics.json as it is.
    `pair_seeds` also gives the self-gains their SE paired by seed (cltm.compute_cltm).
    `top_k`: the donor rankings' top-k share (transfer.write_transfer).
    """
    check_family_level(family_level)
    out_dir = Path(out_dir)
    families = family_map(family_level, families_csv)
    runs = read_run_store(Path(runs_dir), task)
    result = compute_cltm(runs, pair_seeds=pair_seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    offdiag = _write_tables(result, out_dir)

    diag = json_ready(diagnostics(result.matrix, result.se, families,
                                  self_gain=result.self_gain))
    _write_json(diag, out_dir / "diagnostics.json")
    write_json(run_health(runs, task), out_dir / HEALTH_FILE)
    tests = write_stats(runs, result, diag, families, out_dir, family_level=family_level,
                        fdr=fdr, bootstrap=bootstrap, ci_level=ci_level,
                        permutations=permutations, stats_seed=stats_seed,
                        pair_seeds=pair_seeds)
    write_transfer(runs, result, tests, families, out_dir, task=task,
                   highlight=highlight or PAPER_HIGHLIGHT, family_level=family_level,
                   top_k=top_k, fdr=fdr, bootstrap=bootstrap, ci_level=ci_level,
                   permutations=permutations, stats_seed=stats_seed, pair_seeds=pair_seeds)

    names = display_names(result.matrix.index)
    gains = result.self_gain.to_dict()
    common = {"families": families, "names": names, "self_gain": gains,
              "marks": marks_from_tests(tests),
              "marks_note": f"+ / −: above / below 1 (BH, FDR {fdr:g})"}
    plots.plot_heatmap(result.matrix, out_dir / "heatmap.png", title=f"{task} CLTM", **common)
    drawn = plots.plot_highlight(result.matrix, out_dir / "heatmap_highlight.png",
                                 highlight or PAPER_HIGHLIGHT, title=f"{task} CLTM", **common)
    if not drawn:
        log.info("no highlight language in the %s CLTM: heatmap_highlight.png is a note", task)
    plots.plot_self_gain(result.self_gain, result.self_gain_se, out_dir / "self_gain.png",
                         families=families, names=names, title=f"{task} self-gain",
                         se_label=("paired SE over seeds" if result.self_gain_se_paired
                                   else "SE over seeds"))
    plots.plot_offdiag_hist(offdiag["value"].to_numpy(), out_dir / "offdiag_hist.png",
                            title=f"{task}: off-diagonal CLTM entries")
    log.info("%s CLTM (%d languages, %d defined) written to %s", task, len(result.matrix),
             diag["n_languages"], out_dir)
    return diag


def read_matrix_csv(path: Path, what: str = "matrix") -> pd.DataFrame:
    """A CLTM-shaped CSV (as cltm.csv: a `target` column, then one column per donor)."""
    path = Path(path)
    if not path.is_file():
        raise CltmError(f"{what} file {path} does not exist")
    return _read_exact(path, what).set_index("target")


def _read_exact(path: Path, what: str) -> pd.DataFrame:
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


def _read_self_gain(path: Path) -> pd.Series | None:
    # Missing self-gains only null two statistics: warn rather than refuse the whole matrix.
    try:
        table = _read_exact(path, "self-gain")
    except CltmError as exc:
        log.warning("%s; self-gain statistics left null", exc)
        return None
    if "self_gain" not in table.columns:
        log.warning("%s has no self_gain column; self-gain statistics left null", path)
        return None
    return table.set_index("target")["self_gain"]


def run_diagnostics(
    matrix_csv: Path,
    se_csv: Path | None,
    family_level: str,
    json_out: Path | None,
    *,
    families_csv: Path | None = None,
    self_gain_csv: Path | None = None,
    permutations: int = 0,
    stats_seed: int = 0,
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
    if self_gain_csv is None and (matrix_csv.parent / "self_gain.csv").is_file():
        self_gain_csv = matrix_csv.parent / "self_gain.csv"
        log.info("self-gains read from %s", self_gain_csv)
    gains = None if self_gain_csv is None else _read_self_gain(Path(self_gain_csv))
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
        _write_json(diag, Path(json_out))
    if permutations > 0 or family_json is not None:
        fam = family_structure(matrix, families, family_level=family_level,
                               permutations=permutations, rng=streams(stats_seed)[1],
                               self_gain=gains)
        log.info("%s", format_family(fam))
        if family_json is not None:
            Path(family_json).parent.mkdir(parents=True, exist_ok=True)
            write_json(json_ready(fam), Path(family_json))
    return diag


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
