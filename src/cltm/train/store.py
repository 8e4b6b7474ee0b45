"""The run store: one JSON line per finished run in `metrics/runs/<task>/runs.jsonl`.

One file per task, not one per run: 20,000 runs stay one file for DVC to hash. Each record is
appended and flushed to disk as soon as its run ends, so a killed process loses only the runs in
flight; a torn last line (a kill mid-write) is ignored on reading. When the grid finishes, the
store is rewritten to hold exactly the current grid's records, atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cltm.layout import PROBES_DIR, STORE_NAME
from cltm.records import read_records

log = logging.getLogger(__name__)



class RunStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / STORE_NAME

    def load(self) -> dict[str, dict[str, Any]]:
        """Records by run hash; the last record of a hash wins."""
        records: dict[str, dict[str, Any]] = {}
        if not self.path.is_file():
            return records
        for _, rec in read_records(self.path):
            records[rec["hash"]] = rec
        return records

    def append(self, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            # A torn line from an earlier kill must not swallow this record: start a new line.
            if fh.tell() and not self._ends_with_newline():
                fh.write("\n")
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"

    def write_probes(self, run_hash: str, arrays: dict[str, np.ndarray]) -> None:
        """Store a run's embedding probes; call before appending its record, so a record in
        the store always has its probes on disk."""
        directory = self.directory / PROBES_DIR
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f"{run_hash}.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(directory / f"{run_hash}.npz")

    def prune_probes(self, keep: Iterable[str]) -> None:
        """Delete the probes of runs no longer in the grid (and leftovers of killed writes)."""
        directory = self.directory / PROBES_DIR
        if not directory.is_dir():
            return
        wanted = {f"{h}.npz" for h in keep}
        for f in directory.iterdir():
            if f.name not in wanted:
                f.unlink()

    def rewrite(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the store's content (write aside, then rename: never half-written)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)


def read_runs(directory: str | Path) -> pd.DataFrame:
    """The store as a table, one row per run."""
    return pd.DataFrame(list(RunStore(directory).load().values()))
