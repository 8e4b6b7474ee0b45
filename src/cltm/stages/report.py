"""The `report` stage, `metrics/report.md`: Table 1 beside the paper's values, the heatmaps and
the notable cells.

Built from the files the cltm stage writes, so it can be regenerated without rerunning
anything; a task whose diagnostics.json is missing is left out. Each task ends with "Can these
numbers be trusted?": self-gains with SEs, the bootstrap intervals, the cell tests' counts and
the family-structure check (stats.py's files; a missing one is named, not fatal).

Each contrast of analysis.contrasts (the paper's: speaker − gender) is its contrast stage's
(contrast.py): the report shows its `<name>.json` and links its figure.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cltm.analysis.headline import HEADLINE, interval_of
from cltm.analysis.languages import display_names
from cltm.analysis.stats import (
    is_paired,
)
from cltm.config import ContrastConfig
from cltm.jsonfile import read_json
from cltm.layout import CI_FILE
from cltm.tasks.base import Task

log = logging.getLogger(__name__)

#: The verdict when the interval of the difference holds 0 (the tasks not told apart).
COVERS_ZERO = "covers 0, so the two tasks are not told apart"

#: Table rows: label, then the key(s) and how to print them.
ROWS = (
    ("languages (defined)", ("n_languages",), "int"),
    ("RFD₁ (`rfd1`)", ("rfd1",), "num"),
    ("Asym_rel (`asym_rel`)", ("asym_rel",), "num"),
    ("prop₊ (`prop_pos`)", ("prop_pos",), "pct"),
    ("reciprocity₊ (`reciprocity_pos`)", ("reciprocity_pos",), "pct"),
    ("mean row cosine (`cos_rows`)", ("cos_rows",), "num"),
    ("intra-family₊ (`intra_family_pos`)", ("intra_family_pos",), "pct"),
    ("SE median / mean", ("se_median", "se_mean"), "num"),
    ("RMS (`rms`)", ("rms",), "num"),
    ("mean self-gain ± std", ("self_gain_mean", "self_gain_std"), "pm"),
)

TOP = 5


def _fmt(v: object, kind: str) -> str:
    if v is None:
        return "n/a"
    if kind == "int":
        return str(int(v))
    if kind == "count":  # a count, or a bootstrap quantile of one (which may fall between two)
        return f"{float(v):g}"
    if kind == "pct":
        return f"{100 * float(v):.2f}%"
    return f"{float(v):.3f}"


def _cell(d: dict, keys: tuple[str, ...], kind: str) -> str:
    if kind == "pm":
        mean, std = (d.get(k) for k in keys)
        return _fmt(mean, "num") + ("" if std is None else f" ± {_fmt(std, 'num')}")
    return " / ".join(_fmt(d.get(k), kind) for k in keys)


def _table1(diags: dict[str, dict], tasks: Mapping[str, Task]) -> list[str]:
    head = ["metric"]
    for task in diags:
        head += [task, f"{task} (paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, keys, kind in ROWS:
        cells = [label]
        for task, d in diags.items():
            cells += [_cell(d, keys, kind), _cell(tasks[task].paper or {}, keys, kind)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _link(target: Path, report: Path) -> str:
    # Relative and with forward slashes: what GitHub resolves from the report's folder.
    return Path(os.path.relpath(target, report.parent)).as_posix()


def _label(loc: str, names: dict[str, str]) -> str:
    name = names.get(loc, loc)
    return loc if name == loc else f"{name} (`{loc}`)"


def _pairs(task_dir: Path) -> list[str]:
    path = task_dir / "offdiag.csv"
    if not path.is_file():
        return ["offdiag.csv is missing."]
    cells = pd.read_csv(path).dropna(subset=["value"])
    names = display_names(set(cells["target"]) | set(cells["donor"]))
    out = []
    for title, chosen in (
        (f"{TOP} strongest positive", cells[cells["value"] > 0].nlargest(TOP, "value")),
        (f"{TOP} most negative", cells[cells["value"] < 0].nsmallest(TOP, "value")),
    ):
        out += [f"**{title} off-diagonal cells**", ""]
        if chosen.empty:
            out += ["none", ""]
            continue
        out += ["| target | donor | CLTM | SE |", "|---|---|---|---|"]
        for row in chosen.itertuples():
            se = "n/a" if pd.isna(row.se) else f"{row.se:.3f}"
            out.append(f"| {_label(row.target, names)} | {_label(row.donor, names)} | "
                       f"{row.value:.3f} | {se} |")
        out.append("")
    return out


def _undefined(task_dir: Path, d: dict) -> list[str]:
    path = task_dir / "undefined.csv"
    if path.is_file():
        table = pd.read_csv(path)
        if table.empty:
            return ["Undefined targets: none (every self-gain is positive).", ""]
        names = display_names(table["target"])
        items = [f"{_label(t, names)} (self-gain {g:.4g})"
                 for t, g in zip(table["target"], table["self_gain"])]
    else:
        items = list(d.get("undefined_targets") or [])
        if not items:
            return ["Undefined targets: none.", ""]
    return ["Undefined targets (self-gain not positive; rows left out of the diagnostics): "
            + ", ".join(items) + ".", ""]


def _run_counts(task_dir: Path) -> list[str]:
    path = task_dir / "performance.csv"
    if not path.is_file():
        return ["performance.csv is missing.", ""]
    perf = pd.read_csv(path)
    lines = ["| condition | cells | seeds per cell | runs |", "|---|---|---|---|"]
    for cond in ("base", "self", "cross"):
        seeds = perf.loc[perf["condition"] == cond, "seeds"]
        if seeds.empty:
            continue
        lo, hi = int(seeds.min()), int(seeds.max())
        per = str(lo) if lo == hi else f"{lo}–{hi}"
        lines.append(f"| {cond} | {len(seeds)} | {per} | {int(seeds.sum())} |")
    lines.append(f"| all | {len(perf)} | | {int(perf['seeds'].sum())} |")
    return [*lines, ""]


def _task_section(task: str, title: str, task_dir: Path, d: dict, report: Path,
                  null_control: bool) -> list[str]:
    out = [f"## {title}", ""]
    # The cltm stage always draws its figures (layout.CLTM_PLOTS): they are linked, not looked
    # for, since the report declares the files it reads and the figures are not among them.
    for file, alt in (("heatmap.png", "CLTM"), ("heatmap_highlight.png", "highlight CLTM"),
                      ("self_gain.png", "self-gains"), ("offdiag_hist.png", "off-diagonal")):
        out += [f"![{task} {alt}]({_link(task_dir / file, report)})", ""]
    out += _undefined(task_dir, d)
    out += _pairs(task_dir)
    out += _donor_section(task, task_dir, report)
    out += ["**Runs**", ""]
    out += _run_counts(task_dir)
    out += _trust_section(task_dir, d, null_control)
    return out


def _donor_section(task: str, task_dir: Path, report: Path) -> list[str]:
    """Which donors help each target: the rankings, the profiles, the communities against the
    families and the map (the cltm stage's transfer files)."""
    graph = _read_json(task_dir / "transfer_graph.json")
    if graph is None:
        return []
    out = ["**Which donors help each language** (donors.csv: every target's donors ranked, with "
           "the intervals of value and rank)", ""]
    for file, alt in (("donors.png", "donor rankings"), ("profiles.png", "giving and receiving"),
                      ("coclustering.png", "co-clustering"), ("transfer_map.png", "map")):
        out += [f"![{task} {alt}]({_link(task_dir / file, report)})", ""]
    groups = "; ".join("{" + ", ".join(g) + "}" for g in graph.get("communities") or [])
    out += [f"Communities of the positive-transfer graph (Louvain, seed "
            f"{graph.get('louvain_seed')}): {groups or 'none'}. Against the "
            f"{graph.get('family_level')} labels: adjusted Rand index "
            f"{_fmt(graph.get('ari'), 'num')}"
            f" [{_fmt(graph.get('ari_low'), 'num')}, {_fmt(graph.get('ari_high'), 'num')}], "
            f"permutation p = {_fmt(graph.get('ari_p'), 'num')} (chance "
            f"{_fmt(graph.get('ari_chance'), 'num')}).", ""]
    return out


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _self_gains(task_dir: Path, info: dict) -> list[str]:
    path = task_dir / "self_gain.csv"
    if not path.is_file():
        return ["self_gain.csv is missing.", ""]
    table = pd.read_csv(path)
    names = display_names(table["target"])
    se_of = ("SE of the per-seed differences self − base" if is_paired(info) else
             "SE over seeds")
    seeds = info.get("seeds_per_cell")
    over = f", {seeds} seeds" if seeds else ""
    lines = [f"**Self-gains** (Δ_ii with its {se_of}{over}; a row is defined where Δ_ii > 0)", "",
             "| target | self-gain | SE | gain / SE | defined |", "|---|---|---|---|---|"]
    for t, g, se in zip(table["target"], table["self_gain"], table["se"]):
        ratio = "n/a" if pd.isna(se) or se <= 0 else f"{g / se:.1f}"
        se_text = "n/a" if pd.isna(se) else f"{se:.4f}"
        lines.append(f"| {_label(t, names)} | {g:.4f} | {se_text} | {ratio} | "
                     f"{'yes' if g > 0 else 'no'} |")
    return [*lines, ""]


def _intervals(task_dir: Path, d: dict, info: dict) -> list[str]:
    ci = _read_json(task_dir / "diagnostics_ci.json")
    if ci is None:
        return ["diagnostics_ci.json is missing.", ""]
    level = info.get("ci_level")
    reps = info.get("bootstrap")
    what = ("of the seeds, each drawn with all its runs" if is_paired(info) else
            "of each cell's seeds")
    head = (f"**Diagnostic intervals** ({100 * level:g}% percentile bootstrap, {reps} resamples "
            f"{what})" if level is not None and reps else
            "**Diagnostic intervals** (percentile bootstrap over seeds)")
    floor = info.get("noise_floor") or {}
    lines = [head, "", "| key | value | low | high | seed noise alone (CLTM = 1) |",
             "|---|---|---|---|---|"]
    outside = []
    for key, bounds in ci.items():
        kind = "count" if key == "n_languages" else "num"
        value, low, high = d.get(key), bounds.get("low"), bounds.get("high")
        cells = [_fmt(v, kind) for v in (value, low, high)]
        mark = ""
        if None not in (value, low, high) and not low <= value <= high:
            outside.append(key)
            mark = " †"
        f = floor.get(key) or {}
        noise = (f"{_fmt(f.get('mean'), 'num')} [{_fmt(f.get('low'), 'num')}, "
                 f"{_fmt(f.get('high'), 'num')}]" if f.get("mean") is not None else "")
        lines.append(f"| `{key}`{mark} | " + " | ".join(cells) + f" | {noise} |")
    lines.append("")
    if outside:
        lines += ["† The value lies outside its own interval. A resample in which a target's "
                  "self-gain falls to 0 or below drops that row, so the replicates average over "
                  "fewer, better-learnt languages; and a distance's percentile interval can sit "
                  "beside a value that noise only pushes one way. Read such an interval as the "
                  "spread of the resampled value, not as a range around this one.", ""]
    if floor:
        lines += ["The last column is the diagnostic's bootstrap distribution (mean [interval]) "
                  "when every cross cell is moved to its target's self mean and keeps its own "
                  "seed spread: what a language-agnostic truth would look like through this "
                  "much seed noise.", ""]
    moved = (info.get("bootstrap_replicates") or {}).get("all_defined_stayed_defined_share")
    if moved is not None:
        lines += [f"Every defined target stayed defined in {100 * moved:.1f}% of the resamples "
                  "(elsewhere the diagnostics are computed on the languages defined there). "
                  "Distances from the ideal (rfd1, asym_rel, 1 − cos_rows) only grow with noise: "
                  "their intervals describe the noisy value, not a noise-free matrix.", ""]
    return lines


def _cell_counts(info: dict) -> list[str]:
    cells, fdr = info.get("cells"), info.get("fdr")
    if not cells:
        return ["stats_info.json holds no cell counts.", ""]
    how = ("paired t-tests on the per-seed differences" if is_paired(info) else
           "Welch t-tests on the seed scores")
    return [
        f"**Cells** ({how}, Benjamini–Hochberg at FDR {fdr:g}): of {cells['off_diagonal']} "
        f"off-diagonal cells, {cells['differs_from_0']} of the {cells['tested_vs0']} testable "
        f"differ from 0 and {cells['differs_from_1']} of the {cells['tested_vs1']} testable "
        f"differ from 1 ({cells['above_1']} above, {cells['below_1']} below; marked + / − on "
        "the heatmaps). Untestable: undefined rows and cells with fewer than 2 seeds a side.", ""]


def _family_check(task_dir: Path) -> list[str]:
    fam = _read_json(task_dir / "family_structure.json")
    if fam is None:
        return ["family_structure.json is missing.", ""]
    if fam.get("contrast") is None:
        return [f"**Family structure** ({fam.get('family_level')}): not testable here (a "
                "language without a family, fewer than 2 families or no same-family pair).", ""]

    def num(key: str) -> str:
        return _fmt(fam.get(key), "num")

    share = fam.get("same_family_pair_share")
    return [
        f"**Family structure** ({fam.get('family_level')} level, {fam.get('n_families')} "
        f"families, {fam.get('permutations')} label permutations):", "",
        f"- same-family minus cross-family mean entry: {num('contrast')} (two-sided permutation "
        f"p = {num('contrast_p')}; chance {num('contrast_chance')})",
        f"- the same, each entry weighted by its target's self-gain (the family test; a target "
        f"whose self-gain is small against its noise weighs little): "
        f"{num('weighted_contrast')} (p = {num('weighted_contrast_p')}; chance "
        f"{num('weighted_contrast_chance')})",
        f"- intra_family_pos: {_fmt(fam.get('intra_family_pos'), 'pct')} (one-sided p = "
        f"{num('intra_family_pos_p')}, towards more within-family mass; chance "
        f"{_fmt(share, 'pct')} = the share of same-family pairs, permutation mean "
        f"{_fmt(fam.get('intra_family_pos_chance'), 'pct')})",
        _direction(fam), ""]


def _direction(fam: dict) -> str:
    """The cltm stage's family verdict (family_structure.json's family_test), in words."""
    test = fam.get("family_test") or {}
    contrast, p, alpha = test.get("contrast"), test.get("p"), test.get("alpha")
    if test.get("families_found") is None:
        return "- direction: not testable"
    way = "more" if contrast > 0 else "less"
    if test["families_found"]:
        verdict = f"found (p < {alpha:g})"
    elif p < alpha:
        verdict = (f"not found: p < {alpha:g}, but same-family donors transfer less, the "
                   "opposite of a family structure")
    else:
        verdict = f"not distinguishable from chance family labels (p ≥ {alpha:g})"
    return (f"- direction: donors of the target's own family transfer {way} than donors of "
            f"other families; family structure {verdict}")


def _null_control(info: dict) -> list[str]:
    """The cltm stage's answer to a null-control corpus's question (stats_info.json's `ones`):
    is the CLTM consistent with all ones?"""
    out = ["**Null control** (demo.null_control: every language's speakers dealt the same mix of "
           "voices, no family trait; only the labels differ, so the true CLTM is all ones):", ""]
    ones, cells, fdr = info.get("ones"), info.get("cells") or {}, info.get("fdr")
    if not ones:
        return [*out, "- stats_info.json holds no verdict", ""]
    out.append(f"- {cells['differs_from_1']} of {cells['tested_vs1']} cells differ from 1 at FDR "
               f"{fdr:g} (a true null allows about {ones['cells_allowed']:.1f}): "
               f"{'consistent' if ones['cells_consistent'] else 'NOT consistent'} with a CLTM "
               "of ones")
    if ones["rfd1_covers_noise"] is not None:
        covers = "covers" if ones["rfd1_covers_noise"] else "does NOT cover"
        out.append(f"- rfd1's interval {covers} the value seed noise alone gives")
    if ones["no_family_structure"] is not None:
        out.append(f"- family test: {'no' if ones['no_family_structure'] else 'spurious'} family "
                   "structure")
    out.append(f"- verdict: {'consistent' if ones['consistent'] else 'NOT consistent'} with a "
               "CLTM of ones")
    return [*out, ""]


def _health(task_dir: Path) -> list[str]:
    """How many runs learnt nothing their score can show, and the cltm stage's verdict
    (run_health.json)."""
    h = _read_json(task_dir / "run_health.json")
    if not h or not h.get("runs"):
        return ["- Degenerate runs: run_health.json is missing", ""]
    share = h["degenerate_share"]
    parts = ", ".join(f"{k} {100 * v:.0f}%" for k, v in h["by_condition"].items())
    seeds = ", ".join(f"{k}: {100 * v:.0f}%" for k, v in h["by_seed"].items())
    verdict = ("within" if h["within_limit"] else "ABOVE") + f" the {100 * h['limit']:g}% limit"
    return [f"- Degenerate runs ({h['what']}): {h['degenerate']} of {h['runs']} "
            f"({100 * share:.1f}%, {verdict}); by condition {parts}; by seed {seeds}. "
            "A self-gain over a base run that failed to start measures the failure, not D'.",
            ""]


def _trust_section(task_dir: Path, d: dict, null_control: bool) -> list[str]:
    info = _read_json(task_dir / "stats_info.json") or {}
    out = ["### Can these numbers be trusted?", ""]
    out += _health(task_dir)
    out += _self_gains(task_dir, info)
    out += _intervals(task_dir, d, info)
    out += _cell_counts(info)
    out += _family_check(task_dir)
    if null_control:
        out += _null_control(info)
    return out


def _curve_section(curves_dir: Path, report: Path, tasks: Mapping[str, Task]) -> list[str]:
    out = ["## Choosing N (learning curves, paper §2.2)", ""]
    any_curve = False
    for task, code in tasks.items():
        c = _read_json(curves_dir / f"{task}.json")
        if not c or not c.get("enabled"):
            continue
        any_curve = True
        p = c.get("params", {})
        out += [f"**{code.title}**: chosen N = **{c['chosen_N']}** from base "
                f"runs at N = {', '.join(map(str, c['N_grid']))} over {c['seeds']} seeds and "
                f"{len(c['languages'])} languages (interval score min(Δ/(τ·P(N)), Δ/(z·SE), "
                f"(Δ/ln 2)/ε) with τ = {p.get('tau')}, z = {p.get('z')}, ε = {p.get('eps')}; "
                "median over languages, smoothed over ln N).", "",
                "| N | median score | smoothed |", "|---|---|---|"]
        for n, v in c["score_by_N"].items():
            mark = " ←" if int(n) == c["chosen_N"] else ""
            out.append(f"| {n}{mark} | {_fmt(v['median'], 'num')} | "
                       f"{_fmt(v['smoothed'], 'num')} |")
        gains = c.get("implied_self_gain", {})
        out += ["", f"Self-gain this N implies (P(2N) − P(N) on the curve): "
                f"{c.get('implied_self_gain_positive')} of {len(gains)} languages positive; "
                + ", ".join(f"{k} {_fmt(v['delta'], 'num')} ± {_fmt(v['se'], 'num')}"
                            for k, v in gains.items()), ""]
        for file in ("curve.png", "interval_scores.png"):  # drawn whenever the curve ran
            out += [f"![{task} {file}]({_link(curves_dir / task / file, report)})",
                    ""]
    if not any_curve:
        out += ["Not run (curve.enabled: false): N is fixed in params.yaml.", ""]
    return out


def _corr_row(name: str, c: dict) -> str:
    return (f"| {name} | {c.get('n')} | {_fmt(c.get('spearman'), 'num')} | "
            f"{_fmt(c.get('spearman_p'), 'num')} | {_fmt(c.get('kendall'), 'num')} | "
            f"{_fmt(c.get('kendall_p'), 'num')} |")


CORR_HEAD = ["| measure | cells | Spearman ρ | p | Kendall τ | p |", "|---|---|---|---|---|---|"]


def _geometry_section(task_dir: Path, task: str, report: Path) -> list[str]:
    out = [f"## Embedding geometry ({task}, paper §4.3)", ""]
    g = _read_json(task_dir / "geometry.json")
    if g is None or not g.get("enabled"):
        reason = (g or {}).get("reason", "geometry.json is missing")
        return [*out, f"Not computed: {reason}.", ""]
    out += [f"Each cross model (target i, donor j) embeds {g['probe_clips']} probe clips of the "
            "donor and of the target; distances between the two clouds (centroids: Euclidean; "
            f"Sinkhorn: entropic OT, regularisation {g['sinkhorn_reg']} × median cost), mean "
            "over seeds, against CLTM[i, j] over the defined off-diagonal cells:", "",
            *CORR_HEAD]
    out += [_corr_row(k, v) for k, v in g["correlations"].items()]
    out += ["", "The most positive and most negative cells (the paper's Table 2):", "",
            "| target | donor | CLTM | centroid | Sinkhorn |", "|---|---|---|---|---|"]
    for r in g.get("extreme_pairs", []):
        out.append(f"| {r['target']} | {r['donor']} | {_fmt(r['cltm'], 'num')} | "
                   f"{_fmt(r.get('centroid'), 'num')} | {_fmt(r.get('sinkhorn'), 'num')} |")
    path = task_dir / "geometry" / "cltm_vs_distance.png"  # drawn when enabled
    out += ["", f"![geometry]({_link(path, report)})"]
    return [*out, ""]


def _gaps_section(tasks_dir: Path, report: Path, tasks: Mapping[str, Task]) -> list[str]:
    out = ["## Performance and linguistic gaps (phonemic-representations paper §3.3–3.4)", ""]
    found = False
    for task, code in tasks.items():
        g = _read_json(tasks_dir / task / "gaps.json")
        if g is None:
            continue
        found = True
        out += [f"**{code.title}**: performance gap over languages per "
                "condition (cross: each target's mean over donors)", "",
                "| condition | SD of scores | mean RPD (%) |", "|---|---|---|"]
        for cond, v in g["performance_gap"].items():
            out.append(f"| {cond} | {_fmt(v.get('std'), 'num')} | "
                       f"{_fmt(v.get('mean_rpd'), 'num')} |")
        cka = g.get("cka", {})
        if cka.get("enabled"):
            base = cka.get("self_vs_base", {})
            mean_base = (sum(base.values()) / len(base)) if base else None
            mean = _fmt(cka["mean_offdiag"], "num")
            out += ["", "Linear CKA between the self model's and each cross model's "
                    f"embeddings of the target's probe clips: mean {mean} "
                    f"(self vs base: {_fmt(mean_base, 'num')}). Against the CLTM:", "",
                    *CORR_HEAD, _corr_row("CKA", cka["correlation_with_cltm"])]
        else:
            out += ["", f"CKA not computed: {cka.get('reason', 'no probes')}."]
        # performance.png is always drawn, cka.png with the CKA
        for file in ("performance.png", "cka.png") if cka.get("enabled") else ("performance.png",):
            out += ["", f"![{task} {file}]({_link(tasks_dir / task / 'gaps' / file, report)})"]
        out.append("")
    if not found:
        out += ["No gaps.json yet: run the gaps stage.", ""]
    return out


def _difference_line(diags: dict[str, dict], tasks_dir: Path, pair: ContrastConfig,
                     contrast: dict | None, reason: str | None, key: str, what: str,
                     nearer: str) -> tuple[str, bool]:
    """One bullet: both tasks' values with their own intervals, then second − first with the
    interval of the difference and the verdict; and whether that interval covers 0."""
    first, second = pair.first, pair.second
    a, b = diags[first].get(key), diags[second].get(key)
    if None in (a, b):
        return f"- `{key}`: not available for both tasks", False

    def iv(task: str) -> str:
        i = interval_of(read_json(tasks_dir / task / CI_FILE), key)
        return "" if i is None else f" [{_fmt(i[0], 'num')}, {_fmt(i[1], 'num')}]"

    head = (f"- `{key}` ({what}, {nearer} is nearer): {first} {_fmt(a, 'num')}{iv(first)}, "
            f"{second} {_fmt(b, 'num')}{iv(second)}; ")
    d = ((contrast or {}).get("diagnostics") or {}).get(key)
    if d is None:
        return head + (f"{second} − {first} = {_fmt(b - a, 'num')}, no interval of the "
                       f"difference ({reason or 'not in the contrast file'})"), False
    text = head + f"{second} − {first} = {_fmt(d.get('difference'), 'num')}"
    if d.get("low") is None:
        why = ("the bootstrap is off" if not contrast.get("bootstrap") else
               "a value is undefined" if d.get("difference") is None else
               "no resample left it defined")
        return text + f", no interval ({why})", False
    level = contrast.get("ci_level")
    dropped = d.get("replicates_dropped") or 0
    text += (f", {100 * level:g}% interval of the difference [{_fmt(d['low'], 'num')}, "
             f"{_fmt(d['high'], 'num')}]" + (f" ({dropped} undefined resamples left out)"
                                              if dropped else "") + ": ")
    if not d.get("excludes_zero"):
        return text + COVERS_ZERO, True
    # second − first above 0 where lower is nearer the ideal: the first is nearer
    first_nearer = (d["low"] > 0) == (nearer == "lower")
    found = first if first_nearer else second
    verdict = f"excludes 0: {found} is nearer the language-agnostic ideal"
    if pair.expected_nearer is None:
        return text + verdict, False
    agrees = "as expected" if found == pair.expected_nearer else "NOT as expected"
    return text + f"{verdict}, {agrees} ({pair.expected_nearer})", False


def _contrast_section(name: str, pair: ContrastConfig, tasks_dir: Path, contrasts_dir: Path,
                      diags: dict[str, dict], report: Path) -> list[str]:
    """One contrast (the contrast stage's `<name>.json` and figure)."""
    if not {pair.first, pair.second} <= set(diags):
        return []
    path = contrasts_dir / f"{name}.json"
    contrast = _read_json(path)
    reason = (f"no {path.name} (the contrast stage writes it)" if contrast is None
              else contrast.get("reason"))
    if reason is not None:
        contrast = None
    verdicts = [_difference_line(diags, tasks_dir, pair, contrast, reason, key, what, nearer)
                for key, _, nearer, what in HEADLINE]
    how = ""
    if contrast is not None:
        how = (f" ({contrast['bootstrap']} resamples of each task's seeds, the two tasks "
               f"resampled independently, differences taken resample by resample; "
               f"`{path.name}`)")
    expected = ("" if pair.expected_nearer is None else
                f" The hypothesis: {pair.expected_nearer} transfers nearer the "
                "language-agnostic ideal (a CLTM of ones).")
    out = [f"## Contrast {name}: {pair.second} − {pair.first}", "",
           f"Each line gives the two values with their own intervals, then the difference "
           f"{pair.second} − {pair.first} with the percentile bootstrap interval of the "
           f"difference{how}. The verdict rests on that interval, not on whether the two "
           "intervals overlap: two overlapping intervals can hold a difference whose interval "
           f"excludes 0.{expected}", "", *(line for line, _ in verdicts), ""]
    if any(covers for _, covers in verdicts):
        # A difference lost in seed noise, and seeds are what a user can add.
        out += ["The interval of a difference narrows with more seeds: "
                "`benchmarks/seeds_needed.py` projects, from these run stores, how many would "
                "make it exclude 0.", ""]
    if contrast is not None:  # the stage draws its figure whenever it has both CLTMs
        figure = contrasts_dir / f"{name}.png"
        out += [f"![contrast {name}]({_link(figure, report)})", "",
                "Dots: the values; lines: their bootstrap intervals; grey: the interval of the "
                "same diagnostic when every cross cell is moved to its target's self mean (seed "
                "noise alone); dashed: the ideal.", ""]
    return out


def _planted_section(tasks_dir: Path, diags: dict[str, dict]) -> list[str]:
    """On the demo corpus: whether each task's CLTM recovers the planted families."""
    out = ["## Does the pipeline recover what the demo corpus planted?", ""]
    for task, d in diags.items():
        undefined = d.get("undefined_targets") or []
        n = (d.get("n_languages") or 0) + len(undefined)
        out.append(f"- {task}: {n - len(undefined)} of {n} self-gains positive"
                   + (f" (undefined: {', '.join(undefined)})" if undefined else
                      " (no undefined row)"))
    for task in diags:
        fam = _read_json(tasks_dir / task / "family_structure.json") or {}
        test = fam.get("family_test") or {}
        contrast, p, found = test.get("contrast"), test.get("p"), test.get("families_found")
        if found is None:
            out.append(f"- planted genera in the {task} task: not testable (see its section)")
            continue
        out.append(f"- planted genera in the {task} task: weighted family contrast "
                   f"{_fmt(contrast, 'num')}, permutation p = {_fmt(p, 'num')}: "
                   + ("detected; same-genus donors transfer more than others" if found
                      else "not detected"))
        if fam.get("intra_family_pos") is not None:
            out.append(f"- {task} intra_family_pos {_fmt(fam['intra_family_pos'], 'pct')} "
                       f"against a chance share of {_fmt(fam.get('same_family_pair_share'), 'pct')}"
                       f" (one-sided p = {_fmt(fam.get('intra_family_pos_p'), 'num')})")
    for task in diags:
        out += _partner_line(tasks_dir / task, task)
    return [*out, ""]


def _partner_line(task_dir: Path, task: str) -> list[str]:
    """Whether a planted family partner is each target's best donor, with the bootstrap's
    share of replicates in which one is (the cltm stage's transfer_graph.json)."""
    graph = _read_json(task_dir / "transfer_graph.json")
    if graph is None:
        return [f"- {task}: transfer_graph.json is missing: no donor ranking to read"]
    pf = graph["partner_first"]
    if not pf["targets"]:
        return [f"- {task}: no target has a planted family partner among its donors"]
    cells = ", ".join(f"{t} {100 * v:.0f}%" for t, v in pf["first_share"].items())
    return [f"- {task}: a planted family partner is the best donor of {pf['first']} of "
            f"{pf['targets']} targets in the data, and in at least {100 * pf['surely_share']:g}% "
            f"of the bootstrap replicates for {pf['surely_first']} (share of replicates in "
            f"which a partner ranks first: {cells})"]


def run_report(tasks_dir: Path, curves_dir: Path, contrasts_dir: Path, out_path: Path,
               tasks: Mapping[str, Task], contrasts: Mapping[str, ContrastConfig], *,
               null_control: bool, planted: bool) -> None:
    """Write the Markdown report of every task of `tasks` (name: its code) whose
    `<tasks_dir>/<task>/diagnostics.json` exists, with its learning curve from `curves_dir`
    and each contrast of `contrasts` from `contrasts_dir/<name>.json`; `null_control`: the
    runs come from a null-control corpus, so say whether the CLTMs are consistent with all
    ones; `planted`: they come from the demo corpus with its planted structure, so say whether
    it was recovered."""
    tasks_dir, out_path = Path(tasks_dir), Path(out_path)
    diags = {}
    for task in tasks:
        path = tasks_dir / task / "diagnostics.json"
        if path.is_file():
            diags[task] = json.loads(path.read_text(encoding="utf-8"))
    lines = ["# CLTM report", ""]
    if not diags:
        log.warning("no diagnostics.json under %s: the report says so and nothing else",
                    tasks_dir)
        lines += [f"No task has diagnostics yet (no `<task>/diagnostics.json` under "
                  f"`{tasks_dir}`); run the cltm stage first.", ""]
    else:
        lines += [
            "Diagnostics of each task's CLTM (row = target, column = donor) beside the paper's "
            "Table 1 (full 44 × 44, mHuBERT-147, 10 seeds). Proportions are shares of "
            "off-diagonal entries; SEs are delta-method standard errors over seeds; the "
            "self-gain std is over languages (ddof = 1).",
            "",
            *_table1(diags, tasks),
            "",
        ]
        for name, pair in contrasts.items():
            lines += _contrast_section(name, pair, tasks_dir, Path(contrasts_dir), diags,
                                       out_path)
        if planted and not null_control:
            lines += _planted_section(tasks_dir, diags)
        for task, d in diags.items():
            lines += _task_section(task, tasks[task].title, tasks_dir / task, d, out_path,
                                   null_control)
        lines += _curve_section(Path(curves_dir), out_path, tasks)
        for task, code in tasks.items():
            if code.donor_probes and task in diags:
                lines += _geometry_section(tasks_dir / task, task, out_path)
        lines += _gaps_section(tasks_dir, out_path, tasks)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    log.info("report written to %s", out_path)
