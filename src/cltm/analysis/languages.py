"""Language metadata: display names and family groupings for the family metric and the heatmaps.

`languages.csv` ships with the package (its header comment names the sources). A demo corpus
plants its own families; its `families.csv` overrides the metadata for the locales it lists, at
both levels, because the planted family is the structure the analysis should find there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from pathlib import Path

import pandas as pd

from cltm.errors import CltmError

log = logging.getLogger(__name__)

FAMILY_LEVELS = ("family", "genus")


@lru_cache(maxsize=1)
def _table() -> pd.DataFrame:
    with resources.files("cltm.analysis").joinpath("languages.csv").open(encoding="utf-8") as fh:
        table = pd.read_csv(fh, comment="#", dtype=str, keep_default_na=False)
    return table.set_index("locale")


def load_languages() -> pd.DataFrame:
    """The metadata table, indexed by locale, with columns name, family and genus."""
    return _table().copy()


def check_family_level(level: str) -> None:
    if level not in FAMILY_LEVELS:
        raise CltmError(
            f"family level {level!r} is not one of {', '.join(FAMILY_LEVELS)}; "
            "set analysis.family_level (or --family-level) to family or genus"
        )


def read_families_csv(path: Path) -> dict[str, str]:
    """A `locale,family` file, such as the one the demo corpus writes."""
    path = Path(path)
    if not path.is_file():
        raise CltmError(f"families file {path} does not exist; give the demo corpus's families.csv")
    table = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    if not {"locale", "family"} <= set(table.columns):
        raise CltmError(
            f"{path} has columns {list(table.columns)}; a families file needs 'locale,family'"
        )
    return dict(zip(table["locale"].str.strip(), table["family"].str.strip()))


def family_map(level: str = "genus", families_csv: Path | None = None) -> dict[str, str]:
    """Locale -> group at `level`, with a families file's entries taking precedence."""
    check_family_level(level)
    groups = {loc: grp for loc, grp in _table()[level].items() if grp}
    if families_csv is not None:
        groups.update(read_families_csv(families_csv))
    return groups


def display_names(locales: Iterable[str]) -> dict[str, str]:
    """Locale -> display name; a locale the metadata lacks keeps its code."""
    names = _table()["name"]
    return {loc: names.get(loc, loc) or loc for loc in locales}
