"""Reading the run store's JSON lines, shared by the training side (which writes the store) and
the analysis side (which must not import training code, see DESIGN.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cltm.layout import PROBES_DIR

log = logging.getLogger(__name__)


def read_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every whole line; a torn line (a process killed mid-write) is
    skipped with a warning, blank lines silently."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d is a torn record (an interrupted write); ignoring it", path, n)


def probe_files(runs_dir: Path, hashes: Iterable[str]) -> dict[str, Path]:
    """The probe files (`<runs_dir>/probes/<hash>.npz`) of the runs `hashes` that exist, by hash.
    They are read one at a time (load_probes): at paper scale all of them would not fit in
    memory."""
    directory = Path(runs_dir) / PROBES_DIR
    paths = {h: directory / f"{h}.npz" for h in hashes}
    return {h: path for h, path in paths.items() if path.is_file()}


def load_probes(path: Path) -> dict[str, np.ndarray]:
    """One run's probe embeddings (`donor`, `target`), in float64 for the analyses."""
    with np.load(path) as z:
        return {k: z[k].astype(np.float64) for k in z.files}


def no_probes_reason(probe_clips: int, runs: int, probes: int) -> str | None:
    """Why the probes of a store cannot be analysed (None: they can)."""
    if probe_clips <= 0:
        return "analysis.probe_clips is 0: the runs embedded no probes"
    if probes < runs:
        return (f"{runs - probes} of {runs} runs have no embedding probes; rerun the grid with "
                "analysis.probe_clips > 0")
    return None
