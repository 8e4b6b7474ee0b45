"""Reading the run store's JSON lines, shared by the training side (which writes the store) and
the analysis side (which must not import training code, see DESIGN.md)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
