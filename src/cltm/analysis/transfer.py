"""The cltm stage's transfer outputs: which donors help each target, profiles, the graph.

Per task, beside the CLTM, under `metrics/<task>/`:
  donors.csv           per (defined target, donor), best donor first: the cell with its
                       bootstrap interval and its tests against 0 and 1, the rank with its
                       interval, the shares of replicates in the top k and first (donors.py)
  profiles.csv         per language: transfer given (its column) and received (its row) with
                       intervals, the shares of targets / donors it reliably helps or hurts,
                       PageRank with its interval, its community and its place on the map
  transfer_graph.json  PageRank, the communities, their agreement with the families (ARI,
                       permutation p, bootstrap interval), modularity (transfer_graph.py)
  coclustering.csv     per pair of languages, the share of replicates in one community
  donors.png, profiles.png, coclustering.png, transfer_map.png
The bootstrap and the family shuffles come from stats.transfer_streams(stats_seed), so these
files leave every other output of the stage as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cltm.analysis import transfer_plots
from cltm.analysis.cltm import CltmResult
from cltm.analysis.diagnostics import json_ready, write_json
from cltm.analysis.donors import TOP_K, donor_rankings, transfer_draws, transfer_profiles
from cltm.analysis.languages import display_names
from cltm.analysis.stats import PAIRED_DESIGN, pairing, seed_cells, transfer_streams
from cltm.analysis.transfer_graph import transfer_graph

log = logging.getLogger(__name__)

DONORS_FILE = "donors.csv"
PROFILES_FILE = "profiles.csv"
GRAPH_FILE = "transfer_graph.json"
COCLUSTERING_FILE = "coclustering.csv"
TRANSFER_FILES = (DONORS_FILE, PROFILES_FILE, GRAPH_FILE, COCLUSTERING_FILE, "donors.png",
                  "profiles.png", "coclustering.png", "transfer_map.png")


def write_transfer(
    runs: pd.DataFrame,
    result: CltmResult,
    tests: pd.DataFrame,
    families: Mapping[str, str] | None,
    out_dir: Path,
    *,
    task: str,
    highlight: Sequence[str],
    family_level: str = "genus",
    top_k: int = TOP_K,
    fdr: float = 0.05,
    bootstrap: int = 1000,
    ci_level: float = 0.95,
    permutations: int = 2000,
    stats_seed: int = 0,
    pair_seeds: bool = True,
) -> dict[str, object]:
    """Write TRANSFER_FILES into `out_dir`; returns transfer_graph.json's content.

    `runs` and `result` are the stage's run table and compute_cltm's result, `tests` the cell
    tests stage.write_stats returned; `highlight` the languages whose rankings are drawn (those
    that are defined targets; with none, every target up to 16). The other settings are the
    stage's analysis params (analysis.top_k: the k of the top-k share).
    """
    out_dir = Path(out_dir)
    families = families or {}
    langs = list(result.matrix.index)
    cells = seed_cells(runs, langs)
    paired = pairing(cells, pair_seeds)
    boot, perm = transfer_streams(stats_seed)
    td = transfer_draws(cells, replicates=bootstrap, level=ci_level, rng=boot, paired=paired,
                        matrix=result.matrix)
    donors = donor_rankings(td, tests, families, top_k=top_k)
    donors.to_csv(out_dir / DONORS_FILE, index=False)
    graph = transfer_graph(td, families, permutations=permutations, rng=perm, seed=stats_seed)
    profiles = transfer_profiles(td, tests).assign(
        family=[families.get(x) for x in langs], pagerank=graph.pagerank,
        pagerank_low=graph.pagerank_low, pagerank_high=graph.pagerank_high,
        community=graph.community, map_x=graph.coords[:, 0], map_y=graph.coords[:, 1])
    profiles.to_csv(out_dir / PROFILES_FILE, index=False)
    co = pd.DataFrame(graph.coclustering, index=pd.Index(langs, name="language"),
                      columns=langs)
    co.to_csv(out_dir / COCLUSTERING_FILE)
    summary = {"task": task, "family_level": family_level, "top_k": int(top_k), "fdr": fdr,
               "ci_level": ci_level, "stats_seed": int(stats_seed),
               "seed_design": PAIRED_DESIGN if paired else "independent seeds", **graph.summary}
    write_json(json_ready(summary), out_dir / GRAPH_FILE)

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
