"""`cltm compare A B`: two results (run stores) side by side, B − A of each diagnostic and each
cell with bootstrap intervals. A command, not a dvc.yaml stage."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from cltm.analysis.compare import (
    CELLS_FILE,
    HEATMAP_FILE,
    JSON_FILE,
    MARKDOWN_FILE,
    compare_runs,
    markdown,
    plot_difference,
    read_store,
)
from cltm.config import AnalysisConfig
from cltm.errors import CltmError
from cltm.jsonfile import json_ready, write_json
from cltm.layout import STORE_NAME

log = logging.getLogger(__name__)


def default_labels(stores: Sequence[Path]) -> tuple[str, str]:
    """The shortest trailing parts of the two store paths that tell them apart (metrics/runs/
    gender and metrics/runs/speaker: gender, speaker; a/gender and b/gender: a/gender,
    b/gender); A and B for one path given twice."""
    parts = [(p.parent if p.name == STORE_NAME else p).resolve().parts for p in stores]
    for depth in range(1, max(map(len, parts)) + 1):
        labels = ["/".join(x[-depth:]) for x in parts]
        if labels[0] != labels[1]:
            return labels[0], labels[1]
    return "A", "B"


def run_compare(store_a: Path, store_b: Path, out_dir: Path,
                labels: tuple[str | None, str | None], families: Mapping[str, str] | None,
                a: AnalysisConfig) -> dict[str, object]:
    """Compare two run stores (B − A) and write OUTPUT_FILES into `out_dir`; returns what
    compare.json holds. A label left None is the store folder's name."""
    stores = (Path(store_a), Path(store_b))
    runs = [read_store(p) for p in stores]
    default = default_labels(stores)
    chosen = tuple(lab or dflt for lab, dflt in zip(labels, default, strict=True))
    if chosen[0] == chosen[1]:
        raise CltmError(f"both results are labelled {chosen[0]!r}; give --label-a and --label-b")
    comparison = compare_runs(runs[0], runs[1], labels=chosen,  # type: ignore[arg-type]
                              stores=(str(stores[0]), str(stores[1])), families=families,
                              settings=a)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = json_ready(comparison.summary)
    write_json(summary, out_dir / JSON_FILE)
    comparison.cells.to_csv(out_dir / CELLS_FILE, index=False)
    significant = comparison.cells.assign(mark=comparison.cells["significant"].astype(float))
    plot_difference(comparison.difference, out_dir / HEATMAP_FILE,
                    significant=significant.pivot(index="target", columns="donor", values="mark"),
                    families=families or {},
                    title=f"CLTM {chosen[1]} − {chosen[0]}")
    (out_dir / MARKDOWN_FILE).write_text(markdown(summary).rstrip() + "\n", encoding="utf-8")
    log.info("%s − %s: %d of %d diagnostics differ beyond noise, %d of %d cells; written to %s",
             chosen[1], chosen[0],
             sum(bool(d["excludes_zero"]) for d in summary["diagnostics"].values()),
             len(summary["diagnostics"]), summary["cells"]["significant"],
             summary["cells"]["tested"], out_dir)
    return summary
