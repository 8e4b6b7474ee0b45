"""The one way a stage writes JSON: numbers made JSON-ready, indented, with a trailing newline."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def json_ready(d: Mapping, digits: int | None = 6) -> dict:
    """Floats rounded to `digits` decimals (None: as they are), NaN as None, numpy scalars as
    Python numbers."""

    def conv(v: object) -> object:
        if isinstance(v, Mapping):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
            return int(v)
        if isinstance(v, (np.floating, float)):
            if not math.isfinite(float(v)):
                return None
            return float(v) if digits is None else round(float(v), digits)
        return v

    return {k: conv(v) for k, v in d.items()}


def write_json(d: Mapping, path: Path, digits: int | None = 6) -> None:
    """`d` at `path` (its folder made), json_ready to `digits` decimals (None: every digit a
    float has), indent 2, trailing newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(d, digits), indent=2) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict | None:
    """The JSON object at `path`, or None where there is no such file."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
