"""The `cltm@TASK` stage: a task's CLTM from its run store, with every file below its out folder.

Per task it writes, in the folder `--out` (`metrics/<task>/` in dvc.yaml), the files that
`layout.CLTM_FILES` names (a test holds them equal to the stage's outs in dvc.yaml):
  cltm.csv, cltm_se.csv        the matrix and its delta-method SEs (index column `target`)
  performance.csv              seeds, mean, std of the score per (target, condition, donor)
  diagnostics.json             Table 1's diagnostics (keys: diagnostics.KEYS)
  undefined.csv                target, self_gain of the targets whose self-gain is not positive
  self_gain.csv, offdiag.csv   data for DVC's plots
  heatmap.png, heatmap_highlight.png, self_gain.png, offdiag_hist.png
  run_health.json              the runs that learnt nothing their score shows, and the verdict
and, from the seed-level data (stats.py says how):
  cltm_significance.csv        per off-diagonal cell: tests against 0 and 1, BH q-values
  diagnostics_ci.json          bootstrap percentile interval of each numeric diagnostic
  family_structure.json        family-block contrast, permutation p-values, the verdict
  stats_info.json              the settings, cell counts, how the bootstrap's language set moved
and which donors help each target (transfer.py says how): donors.csv, profiles.csv,
transfer_graph.json, coclustering.csv, donors.png, profiles.png, coclustering.png,
transfer_map.png. The heatmaps mark the cells that differ from 1 at the FDR with "+" or "−".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cltm import layout
from cltm.analysis import plots, transfer_plots
from cltm.analysis.cltm import CltmResult, compute_cltm, read_run_store, run_health
from cltm.analysis.diagnostics import KEYS, diagnostics
from cltm.analysis.donors import (
    donor_rankings,
    partner_first,
    transfer_draws,
    transfer_profiles,
)
from cltm.analysis.languages import check_family_level, display_names, family_map
from cltm.analysis.stats import (
    PAIRED_DESIGN,
    cell_tests,
    diagnostic_intervals,
    family_structure,
    family_verdict,
    format_family,
    marks_from_tests,
    noise_floor,
    noise_stream,
    ones_verdict,
    pairing,
    seed_cells,
    streams,
    transfer_streams,
)
from cltm.analysis.transfer_graph import transfer_graph
from cltm.config import AnalysisConfig
from cltm.jsonfile import json_ready, write_json
from cltm.tasks.base import Task

log = logging.getLogger(__name__)

def write_stats(runs: pd.DataFrame, result: CltmResult, diag: Mapping[str, object],
                families: Mapping[str, str] | None, out_dir: Path,
                a: AnalysisConfig) -> pd.DataFrame:
    """Write cltm_significance.csv, diagnostics_ci.json, family_structure.json, stats_info.json.

    `diag` is the data's diagnostics (as written to diagnostics.json); returns the cell tests.
    Every file is written even when the bootstrap or the permutations are off (0): with nulls.
    `a.pair_seeds`: pair runs by seed where every cell has the same seeds (stats.py says why).
    """
    fdr, bootstrap, ci_level = a.fdr, a.bootstrap, a.ci_level
    permutations, stats_seed, pair_seeds = a.permutations, a.stats_seed, a.pair_seeds
    out_dir = Path(out_dir)
    boot_rng, perm_rng = streams(stats_seed)
    cells = seed_cells(runs, list(result.matrix.index))
    paired = pairing(cells, pair_seeds)
    if pair_seeds and not paired:
        log.warning("the cells of the run store do not all hold the same seeds: seeds are "
                    "treated as independent (unpaired tests and bootstrap)")
    tests = cell_tests(cells, fdr, result, paired)
    tests.to_csv(out_dir / layout.SIGNIFICANCE_FILE, index=False)

    ci, info = diagnostic_intervals(cells, families, diag, replicates=bootstrap, level=ci_level,
                                    rng=boot_rng, paired=paired)
    write_json(ci, out_dir / layout.CI_FILE)
    fam = family_structure(result.matrix, families, family_level=a.family_level,
                           permutations=permutations, rng=perm_rng, self_gain=result.self_gain)
    write_json({**fam, "family_test": family_verdict(fam)}, out_dir / layout.FAMILY_FILE)

    floor = noise_floor(cells, families, replicates=bootstrap, level=ci_level,
                        rng=noise_stream(stats_seed), paired=paired)
    settings = {"fdr": fdr, "bootstrap": int(bootstrap), "ci_level": ci_level,
                "permutations": int(permutations), "stats_seed": int(stats_seed),
                "seed_design": PAIRED_DESIGN if paired else "independent seeds",
                "seeds_per_cell": int(cells.counts.max())}
    counts = {"off_diagonal": len(tests),
              "tested_vs0": int(tests["p_vs0"].notna().sum()),
              "tested_vs1": int(tests["p_vs1"].notna().sum()),
              "differs_from_0": int(tests["differs_from_0"].sum()),
              "differs_from_1": int(tests["differs_from_1"].sum()),
              "above_1": int((tests["direction"] == "above 1").sum()),
              "below_1": int((tests["direction"] == "below 1").sum())}
    ones = ones_verdict(counts["differs_from_1"], counts["tested_vs1"], fdr, ci.get("rfd1"),
                        floor.get("rfd1"), family_verdict(fam)["p"])
    write_json({**settings, "cells": counts, "noise_floor": floor, "ones": ones,
                "bootstrap_replicates": info}, out_dir / layout.INFO_FILE)
    log.info("%d of %d tested cells differ from 1 at FDR %g; %s", counts["differs_from_1"],
             counts["tested_vs1"], fdr, format_family(fam))
    return tests


def _offdiag(result: CltmResult) -> pd.DataFrame:
    """Long table of the defined off-diagonal cells: target, donor, value, se."""
    value = result.matrix.stack().rename("value")
    se = result.se.stack().rename("se")
    table = pd.concat([value, se], axis=1).reset_index()
    table.columns = ["target", "donor", "value", "se"]
    return table[table["target"] != table["donor"]].reset_index(drop=True)


def _write_tables(result: CltmResult, out_dir: Path) -> pd.DataFrame:
    result.matrix.to_csv(out_dir / layout.MATRIX_FILE, index_label="target")
    result.se.to_csv(out_dir / layout.SE_FILE, index_label="target")
    result.performance.to_csv(out_dir / layout.PERFORMANCE_FILE, index=False)
    result.undefined.rename("self_gain").to_csv(out_dir / layout.UNDEFINED_FILE,
                                                index_label="target")
    pd.concat([result.self_gain, result.self_gain_se], axis=1).to_csv(
        out_dir / layout.SELF_GAIN_FILE, index_label="target")
    offdiag = _offdiag(result)
    offdiag.to_csv(out_dir / layout.OFFDIAG_FILE, index=False)
    return offdiag


def run_cltm(task: str, code: Task, runs_dir: Path, out_dir: Path, a: AnalysisConfig,
             families_csv: Path | None) -> dict:
    """Compute a task's CLTM from its run store and write every output; returns the diagnostics.

    `code`: the task (its degenerate runs). `runs_dir` is `metrics/runs/<task>` (or its
    runs.jsonl); `families_csv` (a demo corpus's planted families) overrides the language
    metadata for the locales it lists. The analysis settings `a` set the uncertainty outputs
    (write_stats) and the donor rankings (write_transfer); they leave diagnostics.json as it
    is. `a.pair_seeds` also gives the self-gains their SE paired by seed (cltm.compute_cltm).
    """
    family_level, highlight, fdr = a.family_level, a.highlight_languages, a.fdr
    check_family_level(family_level)
    out_dir = Path(out_dir)
    families = family_map(family_level, families_csv)
    runs = read_run_store(Path(runs_dir), task)
    result = compute_cltm(runs, pair_seeds=a.pair_seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    offdiag = _write_tables(result, out_dir)

    diag = json_ready(diagnostics(result.matrix, result.se, families,
                                  self_gain=result.self_gain))
    write_json({k: diag[k] for k in KEYS}, out_dir / layout.DIAGNOSTICS_FILE)
    write_json(run_health(runs, code.degenerate(runs), code.degenerate_what),
               out_dir / layout.HEALTH_FILE)
    tests = write_stats(runs, result, diag, families, out_dir, a)
    write_transfer(runs, result, tests, families, out_dir, task, a)

    names = display_names(result.matrix.index)
    gains = result.self_gain.to_dict()
    common = {"families": families, "names": names, "self_gain": gains,
              "marks": marks_from_tests(tests),
              "marks_note": f"+ / −: above / below 1 (BH, FDR {fdr:g})"}
    plots.plot_heatmap(result.matrix, out_dir / "heatmap.png", title=f"{task} CLTM", **common)
    drawn = plots.plot_highlight(result.matrix, out_dir / "heatmap_highlight.png",
                                 highlight, title=f"{task} CLTM", **common)
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


def write_transfer(runs: pd.DataFrame, result: CltmResult, tests: pd.DataFrame,
                   families: Mapping[str, str] | None, out_dir: Path, task: str,
                   a: AnalysisConfig) -> dict[str, object]:
    """Write the donor rankings, profiles, transfer graph and their plots into `out_dir`;
    returns transfer_graph.json's content.

    `runs` and `result` are the stage's run table and compute_cltm's result, `tests` the cell
    tests write_stats returned; the highlight languages' rankings are drawn (those that are
    defined targets; with none, every target up to 16); `a.top_k`: the k of the top-k share.
    """
    family_level, top_k, fdr, ci_level = a.family_level, a.top_k, a.fdr, a.ci_level
    stats_seed, highlight = a.stats_seed, a.highlight_languages
    out_dir = Path(out_dir)
    families = families or {}
    langs = list(result.matrix.index)
    cells = seed_cells(runs, langs)
    paired = pairing(cells, a.pair_seeds)
    boot, perm = transfer_streams(stats_seed)
    td = transfer_draws(cells, replicates=a.bootstrap, level=ci_level, rng=boot, paired=paired,
                        matrix=result.matrix)
    donors = donor_rankings(td, tests, families, top_k=top_k)
    donors.to_csv(out_dir / layout.DONORS_FILE, index=False)
    graph = transfer_graph(td, families, permutations=a.permutations, rng=perm, seed=stats_seed)
    profiles = transfer_profiles(td, tests).assign(
        family=[families.get(x) for x in langs], pagerank=graph.pagerank,
        pagerank_low=graph.pagerank_low, pagerank_high=graph.pagerank_high,
        community=graph.community, map_x=graph.coords[:, 0], map_y=graph.coords[:, 1])
    profiles.to_csv(out_dir / layout.PROFILES_FILE, index=False)
    co = pd.DataFrame(graph.coclustering, index=pd.Index(langs, name="language"),
                      columns=langs)
    co.to_csv(out_dir / layout.COCLUSTERING_FILE)
    partners = partner_first(donors, ci_level)
    summary = {"task": task, "family_level": family_level, "top_k": int(top_k), "fdr": fdr,
               "ci_level": ci_level, "stats_seed": int(stats_seed),
               "seed_design": PAIRED_DESIGN if paired else "independent seeds", **graph.summary,
               # Is a same-family donor each target's best? (the report and calibration read it)
               "partner_first": {
                   "targets": len(partners), "first": int(partners["first"].sum()),
                   "surely_first": int(partners["surely_first"].sum()),
                   "surely_share": (1 + ci_level) / 2,
                   "first_share": dict(zip(partners["target"], partners["first_share"],
                                           strict=True))}}
    write_json(summary, out_dir / layout.GRAPH_FILE)

    names = display_names(langs)
    drawn_for = [t for t in highlight if t in set(donors["target"])]
    if not drawn_for:  # none highlighted: the first targets, so that the chart says something
        drawn_for = list(dict.fromkeys(donors["target"]))[:16]
    common = {"families": families, "names": names}
    transfer_plots.plot_donor_rankings(donors, out_dir / "donors.png", drawn_for,
                                       top_k=top_k, title=f"{task} donors", **common)
    transfer_plots.plot_profiles(profiles, out_dir / "profiles.png", title=task, **common)
    transfer_plots.plot_coclustering(co, out_dir / "coclustering.png", title=task, **common)
    transfer_plots.plot_transfer_map(profiles, out_dir / "transfer_map.png", title=task,
                                     **common)
    log.info("%s transfer: %d communities (ARI with the %s labels %s, p %s); donors of %d "
             "targets ranked", task, graph.summary["n_communities"], family_level,
             _num(graph.summary.get("ari")), _num(graph.summary.get("ari_p")),
             donors["target"].nunique())
    return summary


def _num(v: object) -> str:
    return "n/a" if v is None or not np.isfinite(float(v)) else f"{float(v):.3f}"
