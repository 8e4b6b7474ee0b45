"""The `curve@TASK` stage: learning curves of base runs over curve.N_grid and the N they choose
(the paper's dynamic interval, §2.2), which `tasks.<task>.N: auto` uses.

  --out    curve.csv, interval_scores.csv, choice.csv, curve.png, interval_scores.png
  --json   chosen N, the score of each N, implied self-gains
With curve.enabled: false it only leaves notes (the run store is kept: turning the curve on
again resumes it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from cltm.analysis import curve_plots, curves
from cltm.analysis.cltm import read_run_store
from cltm.config import Config
from cltm.errors import CltmError
from cltm.jsonfile import write_json
from cltm.stages._common import fresh_dir

log = logging.getLogger(__name__)

DISABLED = "curve.enabled is false: no learning curve."


def run(config: Config, task: str, metadata: Path, data: Path, runs: Path, out: Path,
        out_json: Path, progress: bool) -> None:
    if not config.curve.enabled:
        for d in (data, runs):
            d.mkdir(parents=True, exist_ok=True)
            (d / "README.txt").write_text(DISABLED + "\n")
        fresh_dir(out, DISABLED)
        write_json({"enabled": False, "chosen_N": None}, out_json)
        log.info("curve.enabled is false: no %s learning curve", task)
        return
    from cltm.data.build import build_curve_subsets
    from cltm.train.runner import run_curve

    (data / "README.txt").unlink(missing_ok=True)
    build_curve_subsets(config, task, data, metadata, progress=progress)
    run_curve(config, task, data, runs, progress=progress)
    analyse(config, task, runs, out, out_json)


def analyse(config: Config, task: str, runs_dir: Path, out: Path, out_json: Path) -> dict:
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
    out = fresh_dir(out)
    table.to_csv(out / "curve.csv", index=False)
    scores.to_csv(out / "interval_scores.csv", index=False)
    choice.to_csv(out / "choice.csv", index=False)
    curve_plots.plot_curves(table, chosen, out / "curve.png", task)
    curve_plots.plot_interval_scores(scores, choice, out / "interval_scores.png")
    write_json(result, out_json)
    log.info("%s curve: chosen N = %d (median interval score by N: %s)", task, chosen,
             ", ".join(f"{int(r.n)}: {r.median:.3g}" for r in choice.itertuples()))
    return result
