"""`cltm languages`: which locales of a release can fill each task's requests (a command)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cltm.config import Config
from cltm.data import commonvoice, subsets
from cltm.data.build import resolve_n
from cltm.errors import CltmError


def capacity(config: Config, root: Path, locales: Sequence[str],
             curves: Mapping[str, Path | None]) -> pd.DataFrame:
    """Per locale, whether it fills the gender and speaker requests; `curves`: each task's
    curve choice, read where tasks.<task>.N is auto."""
    table = commonvoice.read_release(root, locales)
    missing = [t for t in ("gender", "speaker") if t not in config.tasks]
    if missing:
        raise CltmError(f"`cltm languages` checks the paper's two tasks' requests; the params "
                        f"have no {' or '.join(missing)} task")
    g, s = config.tasks["gender"], config.tasks["speaker"]
    return subsets.language_capacity(
        table, locales, gender_N=resolve_n(config, "gender", curves["gender"]),
        gender_cps=g.clips_per_speaker,
        speaker_N=resolve_n(config, "speaker", curves["speaker"]),
        speaker_cps=s.clips_per_speaker, pool=config.data.commonvoice.pool,
        min_duration_s=config.data.min_duration_s, max_duration_s=config.data.max_duration_s,
    )
