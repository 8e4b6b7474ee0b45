"""The `metadata@LOCALE` stage: one locale's TSVs of a release read into one table."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cltm.data import commonvoice

log = logging.getLogger(__name__)


def run(root: Path, locales: Sequence[str], out: Path) -> None:
    for locale in locales:
        path = commonvoice.write_metadata(root, locale, out)
        log.info("%s: metadata table written to %s", locale, path)
