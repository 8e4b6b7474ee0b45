"""`metrics/report.md`: Table 1 beside the paper's values, the heatmaps and the notable cells.

Built only from the files the cltm stage writes, so it can be regenerated without rerunning
anything; a task whose diagnostics.json is missing is left out.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd

from cltm.analysis.languages import display_names

log = logging.getLogger(__name__)

TASKS = ("gender", "speaker")
TASK_TITLES = {"gender": "Gender recognition (macro-F1)", "speaker": "Speaker verification (AUC)"}

#: The paper's Table 1 and §4.4 (full 44 x 44, mHuBERT-147, 10 seeds), as PROTOCOL.md gives it.
PAPER = {
    "gender": {"n_languages": 44, "rfd1": 0.162, "asym_rel": 0.175, "prop_pos": 0.9997,
               "reciprocity_pos": 0.9993, "cos_rows": 0.990, "intra_family_pos": 0.0498,
               "se_median": 0.062, "se_mean": 0.075, "rms": 0.935,
               "self_gain_mean": 0.304, "self_gain_std": 0.089},
    "speaker": {"n_languages": 44, "rfd1": 2.970, "asym_rel": 1.084, "prop_pos": 0.0893,
                "reciprocity_pos": 0.1691, "cos_rows": 0.615, "intra_family_pos": 0.4168,
                "se_median": 0.468, "se_mean": 0.545, "rms": 2.25,
                "self_gain_mean": 0.037, "self_gain_std": 0.016},
}

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
    if kind == "pct":
        return f"{100 * float(v):.2f}%"
    return f"{float(v):.3f}"


def _cell(d: dict, keys: tuple[str, ...], kind: str) -> str:
    if kind == "pm":
        mean, std = (d.get(k) for k in keys)
        return _fmt(mean, "num") + ("" if std is None else f" ± {_fmt(std, 'num')}")
    return " / ".join(_fmt(d.get(k), kind) for k in keys)


def _table1(diags: dict[str, dict]) -> list[str]:
    head = ["metric"]
    for task in diags:
        head += [task, f"{task} (paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, keys, kind in ROWS:
        cells = [label]
        for task, d in diags.items():
            cells += [_cell(d, keys, kind), _cell(PAPER[task], keys, kind)]
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


def _task_section(task: str, task_dir: Path, d: dict, report: Path) -> list[str]:
    out = [f"## {TASK_TITLES.get(task, task)}", ""]
    for file, alt in (("heatmap.png", "CLTM"), ("heatmap_highlight.png", "highlight CLTM"),
                      ("self_gain.png", "self-gains"), ("offdiag_hist.png", "off-diagonal")):
        if (task_dir / file).is_file():
            out += [f"![{task} {alt}]({_link(task_dir / file, report)})", ""]
    out += _undefined(task_dir, d)
    out += _pairs(task_dir)
    out += ["**Runs**", ""]
    out += _run_counts(task_dir)
    return out


def run_report(metrics_dir: Path, out_path: Path) -> None:
    """Write the Markdown report of every task whose `<metrics_dir>/<task>/diagnostics.json`
    exists."""
    metrics_dir, out_path = Path(metrics_dir), Path(out_path)
    diags = {}
    for task in TASKS:
        path = metrics_dir / task / "diagnostics.json"
        if path.is_file():
            diags[task] = json.loads(path.read_text(encoding="utf-8"))
    lines = ["# CLTM report", ""]
    if not diags:
        log.warning("no diagnostics.json under %s: the report says so and nothing else",
                    metrics_dir)
        lines += [f"No task has diagnostics yet (no `<task>/diagnostics.json` under "
                  f"`{metrics_dir}`); run the cltm stage first.", ""]
    else:
        lines += [
            "Diagnostics of each task's CLTM (row = target, column = donor) beside the paper's "
            "Table 1 (full 44 × 44, mHuBERT-147, 10 seeds). Proportions are shares of "
            "off-diagonal entries; SEs are delta-method standard errors over seeds; the "
            "self-gain std is over languages (ddof = 1).",
            "",
            *_table1(diags),
            "",
        ]
        for task, d in diags.items():
            lines += _task_section(task, metrics_dir / task, d, out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    log.info("report written to %s", out_path)
