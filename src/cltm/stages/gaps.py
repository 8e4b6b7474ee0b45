"""The `gaps@TASK` stage: the performance gap per condition (scores, SD, mean RPD) and the
linguistic gap, linear CKA of the self model against each cross model, against the CLTM.

  --out    performance.png, cka.csv, cka.png
  --json   the performance gaps, CKA's mean and its correlation with the CLTM
CKA reads the embedding probes the grid's runs wrote beside the run store.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cltm.analysis import gaps, plots
from cltm.analysis.cltm import read_run_store
from cltm.analysis.languages import display_names
from cltm.analysis.tables import read_matrix_csv
from cltm.config import AnalysisConfig
from cltm.jsonfile import write_json
from cltm.records import load_probes, no_probes_reason, probe_files
from cltm.stages._common import fresh_dir

log = logging.getLogger(__name__)


def run(task: str, runs_dir: Path, cltm_csv: Path, out: Path, out_json: Path,
        families: Mapping[str, str], a: AnalysisConfig) -> dict:
    runs = read_run_store(runs_dir, task)
    out_dir = fresh_dir(out)
    scores = gaps.condition_scores(runs)
    result: dict = {"performance_gap": {c: gaps.performance_gap(s) for c, s in scores.items()}}
    names = display_names(sorted(runs["target"].unique()))
    plots.plot_performance_gap(scores, result["performance_gap"], out_dir / "performance.png",
                               names=names, title=f"{task}: score per language and condition")
    probes = probe_files(runs_dir, runs["hash"])
    reason = no_probes_reason(a.probe_clips, len(runs), len(probes))
    if reason:
        result["cka"] = {"enabled": False, "reason": reason}
        log.warning("CKA skipped: %s", reason)
    else:
        matrix, base = gaps.cka_matrix(runs, lambda h: load_probes(probes[h])["target"])
        cltm = read_matrix_csv(cltm_csv, "CLTM")
        x, y = gaps.offdiag_pairs(cltm, matrix)
        result["cka"] = {
            "enabled": True,
            "mean_offdiag": float(np.nanmean(y)) if np.isfinite(y).any() else math.nan,
            "self_vs_base": {str(k): float(v) for k, v in base.items()},
            "correlation_with_cltm": gaps.correlations(x, y),
        }
        matrix.rename_axis("target").to_csv(out_dir / "cka.csv")
        plots.plot_similarity(matrix, out_dir / "cka.png", families=families, names=names,
            title=f"{task}: linear CKA, self model vs cross model (target's probe clips)")
    write_json(result, out_json)
    return result
