"""The `geometry@TASK` stage: centroid and Sinkhorn distances between the donor's and the
target's probe embeddings under each cross model (Table 2 of the paper), against the CLTM. A
task whose runs embed no donor probes (its embedding is no verification embedding: gender)
gets a note instead.

  --out    centroid.csv, sinkhorn.csv, per_run.csv, cltm_vs_distance.png
  --json   the distances' correlations with the CLTM, the extreme pairs
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cltm.analysis import gaps, geometry, plots
from cltm.analysis.cltm import read_run_store
from cltm.analysis.tables import read_matrix_csv
from cltm.config import AnalysisConfig
from cltm.jsonfile import write_json
from cltm.records import load_probes, no_probes_reason, probe_files
from cltm.stages._common import fresh_dir
from cltm.tasks.base import Task

log = logging.getLogger(__name__)


def run(task: str, code: Task, runs_dir: Path, cltm_csv: Path, out: Path, out_json: Path,
        a: AnalysisConfig) -> dict:
    out_dir = fresh_dir(out)
    if not code.donor_probes:
        runs, probes = None, {}
        reason = f"the {task} task's cross runs embed no donor clips"
    else:
        runs = read_run_store(runs_dir, task)
        probes = probe_files(runs_dir, runs["hash"])
        reason = no_probes_reason(a.probe_clips, len(runs), len(probes))
    if reason:
        write_json({"enabled": False, "reason": reason}, out_json)
        (out_dir / "README.txt").write_text(reason + "\n")
        log.log(logging.WARNING if code.donor_probes else logging.INFO,
                "geometry skipped: %s", reason)
        return {"enabled": False}
    rows = []
    for r in runs[runs["condition"] == "cross"].itertuples():
        p = load_probes(probes[r.hash])
        rows.append({"target": r.target, "donor": r.donor, "seed": r.seed,
                     "centroid": geometry.centroid_distance(p["donor"], p["target"]),
                     "sinkhorn": geometry.sinkhorn_distance(p["donor"], p["target"],
                                                            a.sinkhorn_reg)})
    per_run = pd.DataFrame(rows)
    languages = sorted(runs["target"].unique())
    distances = {k: gaps.cross_matrix(per_run.rename(columns={k: "value"}), languages)
                 for k in ("centroid", "sinkhorn")}
    cltm = read_matrix_csv(cltm_csv, "CLTM")
    correlations = {}
    for name, matrix in distances.items():
        x, y = gaps.offdiag_pairs(cltm, matrix)
        correlations[name] = gaps.correlations(x, y)
        matrix.rename_axis("target").to_csv(out_dir / f"{name}.csv")
    per_run.to_csv(out_dir / "per_run.csv", index=False)
    result = {
        "enabled": True,
        "probe_clips": a.probe_clips,
        "sinkhorn_reg": a.sinkhorn_reg,
        "cells": int(np.isfinite(gaps.offdiag_pairs(cltm, distances["centroid"])[0]).sum()),
        "correlations": correlations,
        "extreme_pairs": geometry.extreme_pairs(cltm, distances, k=2),
    }
    plots.plot_vs_cltm(cltm, distances, out_dir / "cltm_vs_distance.png",
                       title=f"{task}: CLTM against embedding distance (donor vs target)")
    write_json(result, out_json)
    return result
