"""The calibration's stages (calibration/dvc.yaml): each variant's params and summary, and the
experiment's report. The summary: per variant and task, what the CLTM found against what
the corpus planted, and the experiment's checks (calibration/dvc.yaml runs the variants).

Read only from the files the cltm stage writes for each variant (and, for the difference of the
two tasks and the growth with strength, their run stores), so it needs neither torch nor the
corpora.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cltm.analysis.cltm import DEGENERATE_LIMIT, read_run_store
from cltm.analysis.headline import HEADLINE_KEYS
from cltm.analysis.languages import read_families_csv
from cltm.analysis.stats import (
    FAMILY_ALPHA,
    contrast_stream,
    difference_of_draws,
    pairing,
    seed_cells,
    weighted_contrast_draws,
)
from cltm.analysis.transfer_graph import planted_agreement
from cltm.config import Config, load_calibration, variant_params, variant_strength
from cltm.errors import CltmError
from cltm.jsonfile import write_json
from cltm.layout import INFO_FILE, MATRIX_FILE, STORE_NAME

log = logging.getLogger(__name__)

#: The checks' thresholds (issue "The instrument proves itself, second design").
ALPHA = FAMILY_ALPHA  # family permutation test
MIN_SPEAKER_Z = 2.0  # mean self-gain / SE over speaker targets
HEADLINE = HEADLINE_KEYS


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def task_summary(metrics: Path, task: str) -> dict[str, Any]:
    """One task of one variant, from `metrics/<task>/` of the variant's work directory."""
    d = metrics / task
    diag, ci = _json(d / "diagnostics.json"), _json(d / "diagnostics_ci.json")
    fam, info = _json(d / "family_structure.json"), _json(d / "stats_info.json")
    health = _json(d / "run_health.json")
    gains = pd.read_csv(d / "self_gain.csv") if (d / "self_gain.csv").is_file() else None
    cells = info.get("cells", {})
    tested = cells.get("tested_vs1") or 0
    out: dict[str, Any] = {
        "languages": None if gains is None else len(gains),
        "undefined_rows": list(diag.get("undefined_targets") or []),
        "degenerate_share": health.get("degenerate_share"),
        "family_contrast": fam.get("contrast"),
        "family_contrast_p": fam.get("contrast_p"),
        # The family test the checks read (stats.py's module doc says why).
        "weighted_contrast": fam.get("weighted_contrast"),
        "weighted_contrast_p": fam.get("weighted_contrast_p"),
        "intra_family_pos": fam.get("intra_family_pos"),
        "intra_family_pos_chance": fam.get("intra_family_pos_chance"),
        "intra_family_pos_p": fam.get("intra_family_pos_p"),
        "cells_differ_from_1": cells.get("differs_from_1"),
        "cells_tested": tested,
        "cells_allowed": (info.get("ones") or {}).get("cells_allowed"),
        # The cltm stage's verdicts, read, never recomputed here.
        "families_found": (fam.get("family_test") or {}).get("families_found"),
        "consistent_with_ones": (info.get("ones") or {}).get("consistent"),
        "cells_consistent_with_ones": (info.get("ones") or {}).get("cells_consistent"),
        "no_family_structure": (info.get("ones") or {}).get("no_family_structure"),
        "degenerate_within_limit": health.get("within_limit"),
    }
    for key in HEADLINE:
        out[key] = diag.get(key)
        out[f"{key}_ci"] = [ci.get(key, {}).get("low"), ci.get(key, {}).get("high")]
    if gains is not None:
        z = gains["self_gain"] / gains["se"].replace(0.0, np.nan)
        out.update({
            "self_gain_mean": float(gains["self_gain"].mean()),
            "self_gains_positive": int((gains["self_gain"] > 0).sum()),
            "self_gain_z_mean": float(z.mean()) if z.notna().any() else None,
            "self_gain_z_min": float(z.min()) if z.notna().any() else None,
        })
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in out.items()}


def variant_summary(metrics: Path, contrast: Path, families_csv: Path | None, name: str, *,
                    tasks: Sequence[str], strength: float, held_out: bool,
                    exchangeable: bool) -> dict[str, Any]:
    """The `tasks` of one variant, from the cltm stages' folders `metrics/<task>`, and the
    contrast stage's speaker − gender difference of the headline diagnostics with its
    bootstrap interval (`contrast`, its contrast.json). `families_csv`: the corpus's planted
    families, against which the communities are reported."""
    out: dict[str, Any] = {"variant": name, "strength": strength, "held_out": held_out,
                           "exchangeable": exchangeable,
                           **{t: task_summary(metrics, t) for t in tasks}}
    if families_csv is not None:
        out["families"] = read_families_csv(families_csv)
        for t in tasks:  # a reported figure, not a check: do the communities find them?
            settings = _json(metrics / t / INFO_FILE)
            if (metrics / t / MATRIX_FILE).is_file():
                out[t]["communities"] = planted_agreement(
                    metrics / t, out["families"], permutations=int(settings["permutations"]),
                    stats_seed=int(settings["stats_seed"]))
    difference = _json(contrast)
    out["speaker_minus_gender"] = difference.get("diagnostics")
    return out


def dose_series(variants: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The dose-response: the planted corpora of the demo's languages, by strength."""
    planted = [v for v in variants if not v.get("exchangeable") and not v["held_out"]]
    return sorted(planted, key=lambda v: v["strength"])


def dose_growth(runs: Path, variants: Sequence[Mapping[str, Any]], tasks: Sequence[str], *,
                replicates: int, ci_level: float, stats_seed: int,
                pair_seeds: bool) -> dict[str, list[dict]]:
    """Per task, each step of the dose series (weaker → stronger corpus): the growth of the
    weighted family contrast with the bootstrap interval of the difference, the two corpora's
    seeds resampled independently (as stats.difference_intervals does for two results).
    Reads each variant's run stores under `runs/<variant>/<task>`."""
    series = dose_series(variants)
    out: dict[str, list[dict]] = {}
    for task in tasks:
        cells = {}
        for v in series:
            store = runs / v["variant"] / task
            if not (store / STORE_NAME).is_file() or "families" not in v:
                cells[v["variant"]] = None
                continue
            seeds = seed_cells(read_run_store(store, task))
            cells[v["variant"]] = (seeds, pairing(seeds, pair_seeds))
        steps = []
        for a, b in pairwise(series):
            step: dict[str, Any] = {"from": a["variant"], "to": b["variant"],
                                    "strengths": [a["strength"], b["strength"]]}
            if cells[a["variant"]] is not None and cells[b["variant"]] is not None:
                rng = contrast_stream(stats_seed)  # A's replicates first, then B's
                (pa, da), (pb, db) = (
                    weighted_contrast_draws(cells[v["variant"]][0], v["families"],
                                            replicates=replicates, rng=rng,
                                            paired=cells[v["variant"]][1])
                    for v in (a, b))
                if pa is not None and pb is not None and da.size == db.size:
                    step.update(difference_of_draws(pa, pb, da, db, ci_level))
            steps.append(step)
        out[task] = steps
    return out


def checks(variants: Sequence[Mapping[str, Any]], tasks: Sequence[str], default_strength: float,
           growth: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> dict[str, Any]:
    """The experiment's pass/fail checks over every variant and task of `tasks` (None where
    nothing to check). `growth` is dose_growth's: without it the dose-response is not
    checked. The speaker checks hold where speaker is among the tasks."""
    def each(pred) -> bool:
        return all(pred(v[t]) for v in variants for t in tasks)

    null = [v for v in variants if v["strength"] == 0]
    # Where every true cell is 1: the exchangeable corpus. Languages that really differ (the
    # demo's at strength 0) hold true cells other than 1, which the per-cell test should find;
    # without an exchangeable corpus the strength-0 ones stand in.
    exchangeable = [v for v in variants if v.get("exchangeable")] or null
    planted = [v for v in variants if not v.get("exchangeable")]
    default = [v for v in planted if v["strength"] == default_strength]

    def contrast_grows(task: str) -> bool | None:
        # The step from nothing planted (0) to the default strength, judged by the interval of
        # its difference, not by two point values: with 8 languages a corpus's contrast moves
        # by ±0.1-0.3 between seed draws. Steps beyond the default are reported, not checked
        # (the spread between corpora is as large as the step; docs/findings.md).
        steps = [s for s in (growth or {}).get(task) or []
                 if s["strengths"][0] == 0 and s["strengths"][1] == default_strength]
        if not steps or steps[0].get("excludes_zero") is None:
            return None
        return bool(steps[0]["excludes_zero"] and steps[0]["difference"] > 0)

    def detected(v: Mapping, t: str) -> bool:
        return bool(v[t]["families_found"])

    out = {
        "every_row_defined": each(lambda s: not s["undefined_rows"]),
        "null_no_more_cells_than_fdr_allows": (all(
            v[t]["cells_consistent_with_ones"] for v in exchangeable for t in tasks)
            if exchangeable else None),
        "null_family_p_at_least_alpha": (all(
            v[t]["no_family_structure"] for v in null for t in tasks) if null else None),
        "default_families_detected": (all(detected(v, t) for v in default for t in tasks)
                                      if default else None),
        "default_families_detected_held_out": (all(
            detected(v, t) for v in default if v["held_out"] for t in tasks)
            if any(v["held_out"] for v in default) else None),
        "contrast_grows_with_strength": {t: contrast_grows(t) for t in tasks},
        "degenerate_runs_at_most_5pct": each(lambda s: bool(s["degenerate_within_limit"])),
    }
    if "speaker" in tasks:
        out["speaker_self_gains_positive"] = all(
            v["speaker"]["self_gains_positive"] == v["speaker"]["languages"] for v in variants)
        out["speaker_mean_gain_over_se_at_least_2"] = all(
            (v["speaker"]["self_gain_z_mean"] or 0) >= MIN_SPEAKER_Z for v in variants)
    return out


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def _interval(pair: Sequence[Any]) -> str:
    return "–" if None in pair else f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def table(variants: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> list[str]:
    """The calibration table in Markdown: one row per variant and task."""
    head = ["| corpus | strength | task | weighted contrast (p) | plain contrast (p) | "
            "intra-family+ (chance) | cells ≠ 1 at FDR (allowed) | rfd1 [95%] | cos_rows [95%] | "
            "undefined rows | degenerate runs | self-gains > 0 | mean gain/SE | "
            "communities vs families: ARI (p) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for v in variants:
        # A variant's role beside its name, unless the name already says it.
        roles = [r for r, on in (("held out", v["held_out"]),
                                 ("exchangeable", v.get("exchangeable"))) if on]  # fmt: skip
        tags = [r for r in roles if r.replace(" ", "") != v["variant"]]
        name = v["variant"] + "".join(f" ({r})" for r in tags)
        for t in tasks:
            s = v[t]
            communities = s.get("communities") or {}  # a reported figure, not a check
            rows.append(
                f"| {name} | {_fmt(v['strength'])} | {t} | {_fmt(s.get('weighted_contrast'))} "
                f"({_fmt(s.get('weighted_contrast_p'))}) | {_fmt(s['family_contrast'])} "
                f"({_fmt(s['family_contrast_p'])}) | {_fmt(s['intra_family_pos'])} "
                f"({_fmt(s['intra_family_pos_chance'])}) | {_fmt(s['cells_differ_from_1'])} of "
                f"{_fmt(s['cells_tested'])} ({_fmt(s['cells_allowed'], 2)}) | {_fmt(s['rfd1'])} "
                f"{_interval(s['rfd1_ci'])} | {_fmt(s['cos_rows'])} {_interval(s['cos_rows_ci'])} "
                f"| {', '.join(s['undefined_rows']) or 'none'} | {_share(s['degenerate_share'])} "
                f"| {_fmt(s.get('self_gains_positive'))} of {_fmt(s['languages'])} | "
                f"{_fmt(s.get('self_gain_z_mean'), 2)} | "
                f"{_fmt(communities.get('ari'))} ({_fmt(communities.get('ari_p'))}) |")
    return head + rows


def growth_table(growth: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Each step of the dose-response with the interval of its difference."""
    rows = ["| task | step (strength) | weighted contrast | growth | 95% interval | "
            "excludes 0 |", "|---|---|---|---|---|---|"]
    for task, steps in growth.items():
        for d in steps:
            a, b = d["strengths"]
            rows.append(f"| {task} | {d['from']} → {d['to']} ({_fmt(a)} → {_fmt(b)}) | "
                        f"{_fmt(d.get('a'))} → {_fmt(d.get('b'))} | "
                        f"{_fmt(d.get('difference'))} | "
                        f"{_interval([d.get('low'), d.get('high')])} | "
                        f"{_fmt(d.get('excludes_zero'))} |")
    return rows


def difference_table(variants: Sequence[Mapping[str, Any]]) -> list[str]:
    """Speaker − gender of the headline diagnostics (the contrast stage's, as in the demo's
    report) with the interval of the difference."""
    rows = ["| corpus | diagnostic | speaker − gender | 95% interval | excludes 0 |",
            "|---|---|---|---|---|"]
    for v in variants:
        for key, d in (v.get("speaker_minus_gender") or {}).items():
            rows.append(f"| {v['variant']} | {key} | {_fmt(d.get('difference'))} | "
                        f"{_interval([d.get('low'), d.get('high')])} | "
                        f"{_fmt(d.get('excludes_zero'))} |")
    return rows


CHECK_TEXT = {
    "every_row_defined": "every CLTM row defined (self-gain > 0), every corpus and task",
    "null_no_more_cells_than_fdr_allows": "exchangeable languages (every true cell 1): no more "
                                          "cells differ from 1 than the FDR allows",
    "null_family_p_at_least_alpha": f"strength 0: family permutation p ≥ {ALPHA:g}",
    "default_families_detected": f"default strength: planted families detected (p < {ALPHA:g}, "
                                 "contrast > 0), every corpus",
    "default_families_detected_held_out": "… on the held-out corpus",
    "contrast_grows_with_strength": "weighted family contrast grows from strength 0 to the "
                                    "default, the interval of the growth above 0 (demo "
                                    "corpus; later steps reported, not checked)",
    "degenerate_runs_at_most_5pct": f"at most {100 * DEGENERATE_LIMIT:g}% degenerate runs "
                                    "(one class / chance)",
    "speaker_self_gains_positive": "every speaker self-gain positive",
    "speaker_mean_gain_over_se_at_least_2": f"speaker mean self-gain/SE ≥ {MIN_SPEAKER_Z:g}",
}


def check_lines(result: Mapping[str, Any]) -> list[str]:
    lines = []
    for key, text in CHECK_TEXT.items():
        value = result.get(key)
        if isinstance(value, dict):
            value = ", ".join(f"{t} {_fmt(x)}" for t, x in value.items())
        lines.append(f"- {text}: **{_fmt(value)}**")
    return lines


def summarize(out: Path, variants: Sequence[Mapping[str, Any]], tasks: Sequence[str],
              default_strength: float,
              growth: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
              ) -> dict[str, Any]:
    """Write `out/metrics.json` (a DVC metric) and `out/report.md`; returns the metrics.
    `growth`: dose_growth's steps (the dose-response check needs them)."""
    growth = dict(growth or {})
    result = {"default_strength": default_strength,
              "checks": checks(variants, tasks, default_strength, growth),
              "growth": growth, "variants": {v["variant"]: v for v in variants}}
    write_json(result, out / "metrics.json", digits=None)
    lines = ["# Calibration: does the CLTM find what the corpus planted, and only that?", "",
             "Each corpus is the eSpeak NG demo corpus with a planted family structure of the "
             "given strength (0: none); the held-out corpus (other languages, another seed) "
             "was never used to choose a param; in the exchangeable corpus every language's "
             "speakers are dealt the same mix of the corpus's voices and nothing is planted, "
             "so its languages differ only in "
             "their labels and every true cell is 1 (the null of the per-cell tests: at "
             "strength 0 the demo's languages still differ in their phonetics, and the cells "
             "that differ from 1 there can be real). Degenerate runs: gender runs that predict "
             "one class, speaker runs at chance AUC. The family test is the weighted contrast "
             "(each cell weighted by its target's self-gain; the plain contrast, each target "
             "weighing the same, beside it).", "", *table(variants, tasks), "",
             "## Growth with strength, with the interval of each step's difference", "",
             *(growth_table(growth) if growth else ["No dose-response (fewer than 2 strengths "
                                                    "or no run stores)."]), "",
             "## Speaker − gender (the paper's contrast), with the interval of the difference",
             "", *difference_table(variants), "", "## Checks", "",
             *check_lines(result["checks"]), ""]
    (out / "report.md").write_text("\n".join(lines))
    return result


def write_params(root_params: Path, calibration: Path, variant: str, *, corpus: str,
                 encoder: str, out: Path) -> None:
    """The `params@VARIANT` stage: the root params with the variant's changes."""
    import yaml

    raw = yaml.safe_load(root_params.read_text())
    params = variant_params(raw, load_calibration(calibration), variant, corpus=corpus,
                            encoder=encoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(params, sort_keys=False))


def write_summary(config: Config, calibration: Path, variant: str, *, metrics: Path,
                  contrast: Path, families_csv: Path | None, out: Path) -> None:
    """The `summary@VARIANT` stage: one variant's summary (variant_summary) as JSON."""
    cal = load_calibration(calibration)
    v = cal.variants[variant]
    summary = variant_summary(
        metrics, contrast, families_csv, variant, tasks=list(config.tasks),
        strength=variant_strength(cal, variant, config.demo.family_trait_strength),
        held_out=v.held_out, exchangeable=v.exchangeable)
    write_json(summary, out, digits=None)


def write_report(config: Config, calibration: Path, *, summaries: Path, runs: Path,
                 out: Path) -> dict[str, Any]:
    """The `report` stage: the calibration table, the growth with strength and the checks."""
    cal = load_calibration(calibration)
    missing = [n for n in cal.variants if not (summaries / f"{n}.json").is_file()]
    if missing:
        raise CltmError(f"calibration variants not run yet: {', '.join(missing)}; run "
                        "`dvc repro` in calibration/")
    variants = [json.loads((summaries / f"{n}.json").read_text()) for n in cal.variants]
    a = config.analysis
    growth = dose_growth(runs, variants, list(config.tasks), replicates=a.bootstrap,
                         ci_level=a.ci_level, stats_seed=a.stats_seed, pair_seeds=a.pair_seeds)
    result = summarize(out, variants, list(config.tasks), config.demo.family_trait_strength,
                       growth)
    failed = [k for k, v in result["checks"].items()
              if v is False or (isinstance(v, dict) and False in v.values())]
    log.info("calibration report written to %s; checks failed: %s", out,
             ", ".join(failed) or "none")
    return result
