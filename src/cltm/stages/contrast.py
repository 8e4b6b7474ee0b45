"""The `contrast@NAME` stage: one pair of tasks (`analysis.contrasts`), second − first of the
headline diagnostics. The paper's headline is speaker − gender.

The verdict rests on the bootstrap interval of the difference, which needs both tasks' seeds:
the stage reads the two run stores (without the training package, as the cltm stage does) with
the bootstrap settings the cltm stage recorded in stats_info.json, and writes `contrast.json`
and the figure of both tasks' values with their intervals. Where the difference cannot be
computed, `contrast.json` says why (the report shows the reason), never stale numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cltm.analysis.cltm import read_run_store
from cltm.analysis.headline import HEADLINE, HEADLINE_KEYS, interval_of
from cltm.analysis.plots import note_image, plot_contrast
from cltm.analysis.stats import difference_summary, is_paired, seed_cells
from cltm.errors import CltmError
from cltm.jsonfile import read_json, write_json
from cltm.layout import CI_FILE, DIAGNOSTICS_FILE, INFO_FILE

log = logging.getLogger(__name__)

def _read_json(path: Path) -> dict | None:
    return read_json(path)


def interval(metrics_dir: Path, task: str, key: str) -> tuple[float, float] | None:
    """A task's bootstrap interval of diagnostic `key` (the cltm stage's diagnostics_ci.json)."""
    return interval_of(_read_json(metrics_dir / task / CI_FILE), key)


def _settings(metrics_dir: Path, pair: tuple[str, str]) -> tuple[dict | None, str | None]:
    """The cltm stage's bootstrap settings (stats_info.json) for the difference, or why not."""
    infos = {t: _read_json(metrics_dir / t / INFO_FILE) for t in pair}
    missing = [t for t, info in infos.items() if not info or info.get("bootstrap") is None]
    if missing:
        return None, f"{', '.join(missing)}/stats_info.json is missing"
    g, s = (infos[t] for t in pair)
    for key in ("bootstrap", "ci_level", "stats_seed"):
        if g.get(key) != s.get(key):
            log.warning("the tasks' stats_info.json differ in %s (%s, %s): the difference "
                        "uses %s's", key, g.get(key), s.get(key), pair[0])
    return {"replicates": int(g["bootstrap"]), "ci_level": float(g["ci_level"]),
            "stats_seed": int(g["stats_seed"]),
            # Each task pairs by seed where the cltm stage did: pair_seeds was on if either did,
            # and stats.pairing turns it off again for a store whose cells' seeds differ.
            "pair_seeds": any(is_paired(info) for info in (g, s))}, None


def _figure(metrics_dir: Path, diags: dict[str, dict], path: Path) -> None:
    values: dict[str, dict[str, dict]] = {}
    for task in diags:
        floor = (_read_json(metrics_dir / task / INFO_FILE) or {}).get("noise_floor") or {}
        values[task] = {}
        for key, *_ in HEADLINE:
            low_high = interval(metrics_dir, task, key) or (None, None)
            noise = floor.get(key) or {}
            values[task][key] = {"value": diags[task].get(key), "low": low_high[0],
                                 "high": low_high[1], "noise_low": noise.get("low"),
                                 "noise_high": noise.get("high")}
    plot_contrast(values, path, keys=[(key, ideal, what) for key, ideal, _, what in HEADLINE])


def run_contrast(first: str, second: str, metrics_dir: Path, runs_dir: Path, out: Path,
                 figure: Path) -> dict:
    """Write `out` (the pair's JSON) and `figure` for second − first, from the cltm stages'
    folders `metrics_dir/<task>` and the run stores `runs_dir/<task>`; returns what `out`
    holds: difference_summary's values, or {"reason": why there is no difference}."""
    metrics_dir, runs_dir, out, figure = map(Path, (metrics_dir, runs_dir, out, figure))
    pair = (first, second)
    if first == second:
        raise CltmError(f"a contrast compares two tasks; got {first} twice")
    diags = {t: _read_json(metrics_dir / t / DIAGNOSTICS_FILE) for t in pair}
    figure.parent.mkdir(parents=True, exist_ok=True)
    if not all(diags.values()):
        note_image(figure, f"The contrast needs the CLTMs of {first} and {second}.")
        result: dict = {"reason": f"the contrast needs the CLTMs of {first} and {second}"}
    else:
        _figure(metrics_dir, diags, figure)
        settings, reason = _settings(metrics_dir, pair)
        cells = {}
        if settings is not None:
            try:
                cells = {t: seed_cells(read_run_store(runs_dir / t, t)) for t in pair}
            except CltmError as exc:
                reason = f"the run stores could not be read ({exc})"
        if reason is not None:
            log.warning("no interval of the difference %s − %s: %s", second, first, reason)
            result = {"reason": reason}
        else:
            result = difference_summary(cells[first], cells[second], labels=pair,
                                        keys=HEADLINE_KEYS, **settings)
    write_json(result, out, digits=None)
    return result
