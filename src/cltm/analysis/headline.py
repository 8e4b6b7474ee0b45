"""The headline diagnostics a contrast of two tasks compares (the paper's: speaker − gender),
and how an interval is read from a diagnostics_ci.json. One sign everywhere: second − first."""

from __future__ import annotations

from collections.abc import Mapping

#: The headline contrast's diagnostics: (key, ideal value, which way is nearer it, what it is).
#: The paper's direction of speaker − gender follows: above 0 where lower is nearer the ideal
#: (rfd1: speaker higher), below 0 where higher is (cos_rows: speaker lower).
HEADLINE = (("rfd1", 0.0, "lower", "distance from the ideal"),
            ("cos_rows", 1.0, "higher", "row similarity"))
HEADLINE_KEYS = tuple(key for key, *_ in HEADLINE)


def interval_of(ci: Mapping | None, key: str) -> tuple[float, float] | None:
    """The bootstrap interval of diagnostic `key` in a diagnostics_ci.json's content."""
    bounds = (ci or {}).get(key) or {}
    low, high = bounds.get("low"), bounds.get("high")
    return None if low is None or high is None else (float(low), float(high))
