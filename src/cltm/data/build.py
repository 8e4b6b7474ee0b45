"""The subsets stage: read the release, select D / D' / eval, decode the audio once, write it down.

Selection and decoding meet here because a clip that fails to decode must be replaced by another
eligible clip: the selection is re-run with the failed clip excluded, and only the clips that are
new to the selection get decoded. The selection's stable ranking keeps every other choice as it was.
The same holds for a clip of unknown duration (releases before 17.0 list none) that a duration
filter must judge: the chosen ones are measured and the selection re-run (`choose_measured`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cltm.config import Config
from cltm.data import commonvoice
from cltm.data.audio import clip_seconds, decode_many
from cltm.data.pack import PackWriter
from cltm.errors import CltmError
from cltm.layout import MANIFEST

log = logging.getLogger(__name__)

MAX_ROUNDS = 20

#: A selection: the manifest chosen from the release table with some clips excluded.
Choose = Callable[[pd.DataFrame, frozenset[str]], pd.DataFrame]


def select(config: Config, task: str, table: pd.DataFrame, exclude: frozenset[str],
           N: int) -> pd.DataFrame:
    """The manifest of `task` for this config, with `exclude` clips treated as unusable.

    N: the resolved tasks.<task>.N (resolve_n).
    """
    d = config.data
    common = dict(
        seed=d.selection_seed,
        shared_pool=d.selection_pool == "shared",
        pool=d.commonvoice.pool,
        exclude=exclude,
        drop_short=d.drop_short_languages,
        min_duration_s=d.min_duration_s,
        max_duration_s=d.max_duration_s,
    )
    return config.task(task).select(config, task, table, N, common)


def build_subsets(config: Config, task: str, out_dir: Path, metadata_dir: Path,
                  curve_choice: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Write manifest.csv, the packed audio and (speaker) trials.csv into `out_dir` from the
    metadata stage's tables in `metadata_dir`; return the manifest. `curve_choice`: the curve
    stage's JSON, read when tasks.<task>.N is auto."""
    out_dir = Path(out_dir)
    N = resolve_n(config, task, curve_choice)
    manifest = _select_and_decode(
        config, out_dir, Path(metadata_dir),
        lambda table, exclude: select(config, task, table, exclude, N),
        what=f"{task} subsets", progress=progress)
    config.task(task).write_extras(config, task, manifest, out_dir)
    return manifest


def build_curve_subsets(config: Config, task: str, out_dir: Path, metadata_dir: Path,
                        progress: bool = True) -> pd.DataFrame:
    """The curve stage's data: nested training sets for every N of curve.N_grid.<task>."""
    d, cv, code = config.data, config.curve, config.task(task)

    def choose(table: pd.DataFrame, exclude: frozenset[str]) -> pd.DataFrame:
        common = dict(languages=cv.languages or d.languages, seed=d.selection_seed,
                      pool=d.commonvoice.pool, exclude=exclude,
                      min_duration_s=d.min_duration_s, max_duration_s=d.max_duration_s)
        return code.select_curve(config, task, table, cv.N_grid[task], common)

    manifest = _select_and_decode(config, Path(out_dir), Path(metadata_dir), choose,
                                  what=f"{task} curve", progress=progress)
    code.write_extras(config, task, manifest, Path(out_dir))
    return manifest


def resolve_n(config: Config, task: str, curve_choice: Path | None) -> int:
    """tasks.<task>.N, with `auto` read from the curve stage's choice (its JSON file)."""
    N = config.tasks[task].N
    if N != "auto":
        return N
    if curve_choice is None:
        raise CltmError(f"tasks.{task}.N is auto: give the curve stage's choice (--curve)")
    path = Path(curve_choice)
    if not path.is_file():
        raise CltmError(f"tasks.{task}.N is auto but {path} is missing: run "
                        f"`dvc repro curve@{task}` (or `cltm curve --task {task}`) first")
    choice = json.loads(path.read_text())
    if not choice.get("enabled") or choice.get("chosen_N") is None:
        raise CltmError(f"tasks.{task}.N is auto but {path} holds no chosen N (curve.enabled "
                        f"was false when it was written): run `dvc repro curve@{task}`")
    return int(choice["chosen_N"])


def choose_measured(choose: Choose, table: pd.DataFrame, root: Path,
                    failed: dict[str, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`choose(table, exclude)` once every clip it picks has a known duration, and `table`
    with the durations measured on the way; a clip that cannot be measured joins `failed`.

    For a duration filter to hold where the release lists no durations, the selection lets an
    unknown duration through; the clips it picks that way are measured from their audio and the
    choice is made again, until it picks measured clips only. The stable ranking makes a clip
    that fails the filter change only its own slot, so this ends at the very choice that known
    durations give, having measured only the clips picked on the way, never a whole locale.
    """
    while True:
        manifest = choose(table, frozenset(failed))
        where = _lies_in(manifest)
        unknown = where.loc[where["duration_s"].isna(), ["language", "clip"]].drop_duplicates()
        if unknown.empty:
            return manifest, table
        commonvoice.check_clips_exist(root, unknown)
        log.info("measuring %d chosen clips that no clip_durations.tsv lists", len(unknown))
        seconds: dict[tuple[str, str], float] = {}
        for language, clip in zip(unknown["language"], unknown["clip"], strict=True):
            path = commonvoice.clip_path(root, language, clip)
            try:
                seconds[language, clip] = clip_seconds(path)
            except Exception as exc:  # whatever libsndfile raises: as a failed decode
                failed[clip] = f"{type(exc).__name__}: {exc}"
                log.error("could not read the duration of %s (%s); replacing it with another "
                          "eligible clip", path, failed[clip])
        table = _with_durations(table, seconds)


def _with_durations(table: pd.DataFrame,
                    seconds: dict[tuple[str, str], float]) -> pd.DataFrame:
    """`table` with the unknown durations of the (language, clip) pairs of `seconds` filled in,
    in every split that lists the clip."""
    rows = table["duration_s"].isna() & table["clip"].isin({clip for _, clip in seconds})
    pairs = zip(table.loc[rows, "language"], table.loc[rows, "clip"], strict=True)
    found = pd.Series([seconds.get(pair, np.nan) for pair in pairs], index=table.index[rows],
                      dtype=float)
    return table.assign(duration_s=table["duration_s"].fillna(found))


def _lies_in(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest with `language` the locale each clip lies in: a shared pool's training
    rows serve a language other than the one they lie in."""
    return manifest.assign(language=manifest["locale"]) if "locale" in manifest else manifest


def _select_and_decode(config: Config, out_dir: Path, metadata_dir: Path, choose: Choose,
                       what: str, progress: bool) -> pd.DataFrame:
    """Select with `choose(table, exclude)`, decode what was chosen, replace what fails."""
    root = config.corpus_root
    table = commonvoice.read_metadata(config.data.languages, metadata_dir)
    writer = PackWriter(out_dir)
    failed: dict[str, str] = {}
    # Durations are measured only for a filter: without one an unknown duration harms nothing.
    filtered = config.data.min_duration_s is not None or config.data.max_duration_s is not None
    for _ in range(MAX_ROUNDS):
        if filtered:
            manifest, table = choose_measured(choose, table, root, failed)
        else:
            manifest = choose(table, frozenset(failed))
        todo = manifest[~manifest["clip"].isin(writer.slots.keys())].drop_duplicates("clip")
        if todo.empty:
            break
        where = _lies_in(todo)
        paths = [commonvoice.clip_path(root, lang, clip)
                 for lang, clip in zip(where["language"], where["clip"])]
        commonvoice.check_clips_exist(root, where)
        for i, samples, err in decode_many(paths, config.data.workers, progress,
                                           desc=f"decoding {what} clips"):
            clip = todo["clip"].iloc[i]
            if samples is None or samples.size == 0:
                failed[clip] = err or "empty audio"
                log.error("could not decode %s (%s); replacing it with another eligible clip",
                          paths[i], failed[clip])
            else:
                writer.append(clip, samples)
    else:
        raise CltmError(f"{len(failed)} clips failed to decode and replacements kept failing "
                        f"after {MAX_ROUNDS} rounds; first failures: {list(failed)[:5]}")
    # A clip may serve several draws (data.selection: per_seed), and with a shared pool
    # several languages, but it lies in one.
    lies_in = "locale" if "locale" in manifest.columns else "language"
    if manifest.drop_duplicates([lies_in, "clip"])["clip"].duplicated().any():
        raise CltmError("clip names repeat across languages; the pack needs unique clip names")

    slots = writer.finish(keep=list(dict.fromkeys(manifest["clip"])))
    manifest = manifest.assign(
        offset=[slots[c].offset for c in manifest["clip"]],
        n_samples=[slots[c].n_samples for c in manifest["clip"]],
    )
    manifest.to_csv(out_dir / MANIFEST, index=False)
    _log_summary(what, manifest, failed)
    return manifest


def _log_summary(what: str, manifest: pd.DataFrame, failed: dict[str, str]) -> None:
    counts = manifest.pivot_table(index="language", columns="role", values="clip",
                                  aggfunc="count", fill_value=0)
    hours = manifest.drop_duplicates("clip")["n_samples"].sum() / 16_000 / 3600
    log.info("%s (%.2f h of audio):\n%s", what, hours, counts.to_string())
    if failed:
        log.warning("%d clips could not be read and were replaced: %s", len(failed),
                    ", ".join(failed))
