"""The analyses beyond the matrix, as stages: choosing N, embedding geometry, gaps.

  curve      metrics/curves/<task>.json        chosen N, the score of each N, implied self-gains
             metrics/curves/<task>/            curve.csv, interval_scores.csv, curve.png,
                                               interval_scores.png
  geometry   metrics/speaker/geometry.json     centroid and Sinkhorn distances between donor and
             metrics/speaker/geometry/         target embeddings per cross cell, Table 2 of the
                                               paper, correlations with the CLTM, plots
  gaps       metrics/<task>/gaps.json          performance gap (scores, SD, mean RPD) per
             metrics/<task>/gaps/              condition; linear CKA self vs cross; plots

Geometry and CKA read the embedding probes that the grid's runs wrote beside the run store
(`probes/<run hash>.npz`, analysis.probe_clips clips per language).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cltm.analysis import curve_plots, curves, gaps, geometry, plots
from cltm.analysis.cltm import read_run_store
from cltm.analysis.diagnostics import json_ready
from cltm.analysis.languages import display_names
from cltm.config import Config
from cltm.errors import CltmError
from cltm.layout import PROBES_DIR

log = logging.getLogger(__name__)



def _write_json(d: Mapping, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(d), indent=2) + "\n", encoding="utf-8")


def _fresh_dir(path: Path, note: str | None = None) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    if note:
        (path / "README.txt").write_text(note + "\n")
    return path


# --------------------------------------------------------------------------- curve


def curve_disabled(task: str, metrics_dir: Path = Path("metrics")) -> None:
    """What the curve stage leaves when curve.enabled is false."""
    _fresh_dir(metrics_dir / "curves" / task, "curve.enabled is false: no learning curve.")
    _write_json({"enabled": False, "chosen_N": None}, metrics_dir / "curves" / f"{task}.json")


def run_curve_analysis(config: Config, task: str, runs_dir: Path,
                       metrics_dir: Path = Path("metrics")) -> dict:
    """Learning curves from the curve store, the interval score of each N, the chosen N."""
    cv = config.curve
    runs = read_run_store(runs_dir, task)
    if "n" not in runs.columns:
        raise CltmError(f"{runs_dir} holds no curve runs (no `n` column)")
    runs = runs[runs["condition"] == "base"].astype({"n": int})
    table = curves.curve_table(runs)
    scores = curves.interval_scores(runs, tau=cv.tau, z=cv.z, eps=cv.eps)
    chosen, choice = curves.choose_n(scores, bandwidth=cv.bandwidth)
    at_chosen = scores[scores["n"] == chosen].set_index("target")
    result = {
        "enabled": True,
        "chosen_N": chosen,
        "N_grid": sorted(int(n) for n in runs["n"].unique()),
        "languages": sorted(runs["target"].unique()),
        "seeds": int(runs["seed"].nunique()),
        "params": {"tau": cv.tau, "z": cv.z, "eps": cv.eps, "bandwidth": cv.bandwidth},
        "score_by_N": {str(int(r.n)): {"median": r.median, "smoothed": r.smoothed}
                       for r in choice.itertuples()},
        # D + D' holds 2N clips: the curve's P(2N) - P(N) is the self-gain this N implies.
        "implied_self_gain": {t: {"delta": r.delta, "se": r.se_delta}
                              for t, r in at_chosen.iterrows()},
        "implied_self_gain_positive": int((at_chosen["delta"] > 0).sum()),
    }
    out = _fresh_dir(metrics_dir / "curves" / task)
    table.to_csv(out / "curve.csv", index=False)
    scores.to_csv(out / "interval_scores.csv", index=False)
    choice.to_csv(out / "choice.csv", index=False)
    curve_plots.plot_curves(table, chosen, out / "curve.png", task)
    curve_plots.plot_interval_scores(scores, choice, out / "interval_scores.png")
    _write_json(result, metrics_dir / "curves" / f"{task}.json")
    log.info("%s curve: chosen N = %d (median interval score by N: %s)", task, chosen,
             ", ".join(f"{int(r.n)}: {r.median:.3g}" for r in choice.itertuples()))
    return result


# --------------------------------------------------------------------------- probes


def _probes(runs_dir: Path, runs: pd.DataFrame) -> dict[str, Path]:
    """The probe files of the store's runs that exist, by run hash. They are read one at a
    time (_load): at paper scale all of them together would not fit in memory."""
    directory = Path(runs_dir) / PROBES_DIR
    paths = {h: directory / f"{h}.npz" for h in runs["hash"]}
    return {h: path for h, path in paths.items() if path.is_file()}


def _load(path: Path) -> dict[str, np.ndarray]:
    """One run's probes, in float64 for the analyses."""
    with np.load(path) as z:
        return {k: z[k].astype(np.float64) for k in z.files}


def _no_probes_reason(config: Config, runs: pd.DataFrame, probes: Mapping) -> str | None:
    if config.analysis.probe_clips <= 0:
        return "analysis.probe_clips is 0: the runs embedded no probes"
    if len(probes) < len(runs):
        return (f"{len(runs) - len(probes)} of {len(runs)} runs have no embedding probes; "
                "rerun the grid with analysis.probe_clips > 0")
    return None


def _cross_matrix(values: pd.DataFrame, languages: list[str]) -> pd.DataFrame:
    """Mean over seeds of a per-run value of cross runs, as a target x donor matrix."""
    mean = values.groupby(["target", "donor"])["value"].mean().unstack("donor")
    return mean.reindex(index=languages, columns=languages)


def _cltm(metrics_dir: Path, task: str) -> pd.DataFrame:
    path = metrics_dir / task / "cltm.csv"
    if not path.is_file():
        raise CltmError(f"{path} is missing: run `dvc repro cltm@{task}` first")
    return pd.read_csv(path).set_index("target")


def _offdiag_pairs(cltm: pd.DataFrame, other: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    langs = list(cltm.index)
    other = other.reindex(index=langs, columns=langs)
    mask = ~np.eye(len(langs), dtype=bool)
    return cltm[langs].to_numpy(float)[mask], other.to_numpy(float)[mask]


# --------------------------------------------------------------------------- geometry


def run_geometry(config: Config, runs_dir: Path, task: str = "speaker",
                 metrics_dir: Path = Path("metrics")) -> dict:
    """Distances between the donor's and the target's embeddings under each cross model."""
    runs = read_run_store(runs_dir, task)
    probes = _probes(runs_dir, runs)
    out_dir = _fresh_dir(metrics_dir / task / "geometry")
    reason = _no_probes_reason(config, runs, probes)
    if reason:
        _write_json({"enabled": False, "reason": reason}, metrics_dir / task / "geometry.json")
        (out_dir / "README.txt").write_text(reason + "\n")
        log.warning("geometry skipped: %s", reason)
        return {"enabled": False}
    reg = config.analysis.sinkhorn_reg
    rows = []
    cross = runs[runs["condition"] == "cross"]
    for r in cross.itertuples():
        p = _load(probes[r.hash])
        rows.append({"target": r.target, "donor": r.donor, "seed": r.seed,
                     "centroid": geometry.centroid_distance(p["donor"], p["target"]),
                     "sinkhorn": geometry.sinkhorn_distance(p["donor"], p["target"], reg)})
    per_run = pd.DataFrame(rows)
    languages = sorted(runs["target"].unique())
    distances = {k: _cross_matrix(per_run.rename(columns={k: "value"}), languages)
                 for k in ("centroid", "sinkhorn")}
    cltm = _cltm(metrics_dir, task)
    correlations = {}
    for name, matrix in distances.items():
        a, b = _offdiag_pairs(cltm, matrix)
        correlations[name] = gaps.correlations(a, b)
        matrix.rename_axis("target").to_csv(out_dir / f"{name}.csv")
    per_run.to_csv(out_dir / "per_run.csv", index=False)
    table = geometry.extreme_pairs(cltm, distances, k=2)
    result = {
        "enabled": True,
        "probe_clips": config.analysis.probe_clips,
        "sinkhorn_reg": reg,
        "cells": int(np.isfinite(_offdiag_pairs(cltm, distances["centroid"])[0]).sum()),
        "correlations": correlations,
        "extreme_pairs": table,
    }
    plots.plot_vs_cltm(cltm, distances, out_dir / "cltm_vs_distance.png",
                       title=f"{task}: CLTM against embedding distance (donor vs target)")
    _write_json(result, metrics_dir / task / "geometry.json")
    return result


# --------------------------------------------------------------------------- gaps


def _seed_means(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.groupby(["target", "condition", "donor"])["score"].mean().reset_index()


def _condition_scores(runs: pd.DataFrame) -> dict[str, pd.Series]:
    means = _seed_means(runs)
    by = {c: means[means["condition"] == c] for c in ("base", "self", "cross")}
    return {
        "base": by["base"].set_index("target")["score"],
        "self": by["self"].set_index("target")["score"],
        # a target's cross score: the mean over its donors of the seed-mean score
        "cross": by["cross"].groupby("target")["score"].mean(),
    }


def _cka(runs: pd.DataFrame, probes: Mapping) -> tuple[pd.DataFrame, pd.Series]:
    """Linear CKA between the self model's and each cross model's embeddings of the target's
    probe clips (same seed), mean over seeds; and the same for base vs self per target."""
    rows = []
    for (target, seed), group in runs.groupby(["target", "seed"]):
        own = group[group["condition"] == "self"]
        if own.empty:
            continue
        reference = _load(probes[own["hash"].iloc[0]])["target"]  # read once per group
        for r in group[group["condition"] != "self"].itertuples():
            value = gaps.linear_cka(reference, _load(probes[r.hash])["target"])
            rows.append({"target": target, "condition": r.condition, "donor": r.donor,
                         "seed": seed, "value": value})
    per_run = pd.DataFrame(rows)
    languages = sorted(runs["target"].unique())
    matrix = _cross_matrix(per_run[per_run["condition"] == "cross"], languages)
    for lang in languages:
        matrix.loc[lang, lang] = 1.0  # the self model against itself
    base = per_run[per_run["condition"] == "base"].groupby("target")["value"].mean()
    return matrix, base


def run_gaps(config: Config, task: str, runs_dir: Path, families: Mapping[str, str],
             metrics_dir: Path = Path("metrics")) -> dict:
    """Performance gap per condition and the linguistic gap (CKA) against the CLTM."""
    runs = read_run_store(runs_dir, task)
    out_dir = _fresh_dir(metrics_dir / task / "gaps")
    scores = _condition_scores(runs)
    result: dict = {"performance_gap": {c: gaps.performance_gap(s) for c, s in scores.items()}}
    names = display_names(sorted(runs["target"].unique()))
    plots.plot_performance_gap(scores, result["performance_gap"], out_dir / "performance.png",
                               names=names, title=f"{task}: score per language and condition")
    probes = _probes(runs_dir, runs)
    reason = _no_probes_reason(config, runs, probes)
    if reason:
        result["cka"] = {"enabled": False, "reason": reason}
        log.warning("CKA skipped: %s", reason)
    else:
        matrix, base = _cka(runs, probes)
        cltm = _cltm(metrics_dir, task)
        a, b = _offdiag_pairs(cltm, matrix)
        result["cka"] = {
            "enabled": True,
            "mean_offdiag": float(np.nanmean(b)) if np.isfinite(b).any() else math.nan,
            "self_vs_base": {str(k): float(v) for k, v in base.items()},
            "correlation_with_cltm": gaps.correlations(a, b),
        }
        matrix.rename_axis("target").to_csv(out_dir / "cka.csv")
        plots.plot_similarity(matrix, out_dir / "cka.png", families=families, names=names,
            title=f"{task}: linear CKA, self model vs cross model (target's probe clips)")
    _write_json(result, metrics_dir / task / "gaps.json")
    return result
