"""Read a Mozilla Common Voice release (the real one or the demo one) into one long table.

Only the TSV metadata is read here; audio is decoded elsewhere. The table has one row per
(locale, split, clip) and the columns of RELEASE_COLUMNS; cltm.data.subsets selects from it.

A release holds millions of clips, and a DVC dependency on its root would hash every one of
them (about 1.5 hours for a release of 10 million clips, then minutes for every `dvc status`).
So the pipeline's `metadata@<locale>` stage reads one locale's TSVs (`write_metadata`) into a
table under data/metadata/ that the later stages read (`read_metadata`): adding a language
reads one locale, and changing nothing reads nothing. A release's clips never change (a new
release is a new root), so the clips a selection picks are decoded from the root, unhashed.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from cltm.errors import CltmError

log = logging.getLogger(__name__)

TSV_COLUMNS: tuple[str, ...] = (
    "client_id",
    "path",
    "sentence_id",
    "sentence",
    "sentence_domain",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "variant",
    "locale",
    "segment",
)
# Every release since the first one has these; the rest came and went over the versions.
REQUIRED_COLUMNS: tuple[str, ...] = ("client_id", "path", "gender")
SPLITS: tuple[str, ...] = ("validated", "train", "dev", "test")
RELEASE_COLUMNS: tuple[str, ...] = (
    "language",
    "split",
    "clip",
    "speaker",
    "gender",
    "sentence",
    "sentence_id",
    "duration_s",
)
DURATIONS_FILE = "clip_durations.tsv"
DURATION_COLUMNS: tuple[str, ...] = ("clip", "duration[ms]")
LAYOUT = "<root>/<locale>/{validated,train,dev,test}.tsv, clip_durations.tsv, clips/*.mp3"
DOWNLOAD_URL = "https://commonvoice.mozilla.org/datasets"

# Releases before 17.0 wrote male/female/other; later ones male_masculine/female_feminine plus
# intersex, transgender, non-binary, do_not_wish_to_say. The tasks need a binary label, so only
# the two binary values survive and everything else becomes "" (unlabelled).
_BINARY_GENDER = {
    "male": "male",
    "male_masculine": "male",
    "female": "female",
    "female_feminine": "female",
}
# Splits whose gender labels the selection uses (training pool and evaluation).
_GENDER_REPORT_SPLITS: tuple[str, ...] = ("validated", "test")
_MAX_LISTED_MISSING = 5


def _layout_hint() -> str:
    return (
        f"Expected a Common Voice release laid out as {LAYOUT}. Download Common Voice from "
        f"{DOWNLOAD_URL} and unpack it (or generate the demo release), then point the data root "
        "at the folder that holds the locale folders."
    )


def read_tsv(path: Path) -> pd.DataFrame:
    """Read one Common Voice TSV with every value as a string, exactly as written.

    The files are not CSV-quoted: a sentence may hold a lone `"`, which a quoting reader would
    take as the start of a field and swallow the following lines, so quoting is disabled.
    """
    path = Path(path)
    if not path.is_file():
        raise CltmError(f"Common Voice file not found: {path}. {_layout_hint()}")
    try:
        return pd.read_csv(
            path,
            sep="\t",
            quoting=csv.QUOTE_NONE,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8-sig",  # tolerate a byte-order mark before client_id
        )
    except pd.errors.EmptyDataError as exc:
        raise CltmError(
            f"{path} is empty (not even a header row). The download or unpacking was probably "
            f"cut short: unpack the release again. {_layout_hint()}"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CltmError(
            f"Cannot read {path} as a UTF-8 tab-separated file ({exc}). The file is probably "
            f"damaged: unpack the release again. {_layout_hint()}"
        ) from exc


def normalise_gender(values: pd.Series) -> pd.Series:
    """Map both gender schemes to "male", "female" or "" (anything else, or no answer)."""
    cleaned = values.fillna("").astype(str).str.strip().str.lower()
    return cleaned.map(_BINARY_GENDER).fillna("").astype(object)


def clip_path(root: Path, locale: str, clip: str) -> Path:
    """Where the audio of `clip` (the TSV's `path` column) lies in the release."""
    return Path(root) / locale / "clips" / clip


def check_clips_exist(root: Path, table: pd.DataFrame) -> None:
    """Raise CltmError if any clip of `table` (columns `language`, `clip`) has no audio file."""
    pairs = table[["language", "clip"]].drop_duplicates()
    paths = [
        clip_path(root, lang, clip)
        for lang, clip in zip(pairs["language"], pairs["clip"], strict=True)
    ]
    missing = [p for p in paths if not p.is_file()]
    if not missing:
        return
    shown = ", ".join(str(p) for p in missing[:_MAX_LISTED_MISSING])
    hidden = len(missing) - _MAX_LISTED_MISSING
    more = f" and {hidden} more" if hidden > 0 else ""
    raise CltmError(
        f"{len(missing)} of {len(paths)} audio clips are missing: {shown}{more}. The release "
        f"is probably not fully unpacked: unpack it again (or regenerate the demo release). "
        f"{_layout_hint()}"
    )


def _requested(locales: Sequence[str]) -> list[str]:
    """The locales in order, each once; an error when there are none."""
    unique = list(dict.fromkeys(locales))
    if not unique:
        raise CltmError("No languages requested: list at least one Common Voice locale.")
    return unique


def read_release(root: Path, locales: Sequence[str]) -> pd.DataFrame:
    """One long table (RELEASE_COLUMNS) for the given locales of the release at `root`."""
    root = Path(root)
    _check_root(root)
    unique = _requested(locales)
    parts = [read_locale(root, locale) for locale in unique]
    return _finish(pd.concat(parts, ignore_index=True))


def read_locale(root: Path, locale: str) -> pd.DataFrame:
    """The rows (RELEASE_COLUMNS) of one locale: every split of SPLITS, in that order."""
    root = Path(root)
    _check_root(root)
    folder = _locale_folder(root, locale)
    durations = _read_durations(folder / DURATIONS_FILE)
    parts = []
    report = []
    for split in SPLITS:
        raw = _read_split(folder / f"{split}.tsv")
        parts.append(_release_rows(raw, locale, split, durations))
        if split in _GENDER_REPORT_SPLITS:
            report.append(_gender_report(split, raw["gender"]))
    log.info(
        "%s: %s (rows other than male/female are left out of gender-dependent use)",
        locale,
        "; ".join(report),
    )
    return _finish(pd.concat(parts, ignore_index=True))


def metadata_path(directory: Path, locale: str) -> Path:
    """A locale's table inside the metadata stage's folder."""
    return Path(directory) / f"{locale}.parquet"


def write_metadata(root: Path, locale: str, directory: Path) -> Path:
    """Read one locale of the release at `root` and write its table (RELEASE_COLUMNS) to
    `directory`/<locale>.parquet (written aside, then renamed: never half-written)."""
    table = read_locale(root, locale)
    path = metadata_path(directory, locale)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_metadata(locales: Sequence[str], directory: Path) -> pd.DataFrame:
    """The release table of `locales` from the metadata stage's tables (as read_release)."""
    unique = _requested(locales)
    missing = [loc for loc in unique if not metadata_path(directory, loc).is_file()]
    if missing:
        first = missing[0]
        raise CltmError(
            f"no metadata table for {', '.join(missing)} in {directory}: the metadata stage "
            f"reads each locale's TSVs first. Run `dvc repro` (or `cltm metadata --locale "
            f"{first}` for each locale)")
    parts = [pd.read_parquet(metadata_path(directory, loc)) for loc in unique]
    table = pd.concat(parts, ignore_index=True)
    lacking = [c for c in RELEASE_COLUMNS if c not in table.columns]
    if lacking:
        raise CltmError(f"the metadata tables in {directory} lack {', '.join(lacking)} (written "
                        "by an older cltm): run `dvc repro` to rewrite them")
    return _finish(table)


def _check_root(root: Path) -> None:
    if not root.is_dir():
        raise CltmError(f"Common Voice root not found (or not a folder): {root}. {_layout_hint()}")


def _locale_folder(root: Path, locale: str) -> Path:
    folder = root / locale
    if folder.is_dir():
        return folder
    existing = sorted(p.name for p in root.iterdir() if p.is_dir())
    listed = ", ".join(existing) if existing else "none"
    raise CltmError(
        f"Locale folder not found: {folder}. Locale folders in {root}: {listed}. Check the "
        f"locale code (e.g. zh-CN, sv-SE) or download that language. {_layout_hint()}"
    )


def _read_split(path: Path) -> pd.DataFrame:
    raw = read_tsv(path)
    lacking = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if lacking:
        raise CltmError(
            f"{path} lacks the column(s) {', '.join(lacking)} (it has: "
            f"{', '.join(raw.columns)}). A Common Voice TSV needs at least "
            f"{', '.join(REQUIRED_COLUMNS)}; replace the file with the release's own. "
            f"{_layout_hint()}"
        )
    # Older releases lack some of the recent columns; fill them so callers see one schema.
    for column in TSV_COLUMNS:
        if column not in raw.columns:
            raw[column] = ""
    return raw


def _read_durations(path: Path) -> pd.Series | None:
    """Seconds per clip name, or None when the release has no durations file."""
    if not path.is_file():
        # Releases before 17.0 and hand-made ones have no durations file: durations are then
        # unknown, and the subsets stage measures the chosen clips where a filter needs them.
        log.info("%s not found: durations unknown (measured from the audio of chosen clips "
                 "where data.min_duration_s or data.max_duration_s needs them)", path)
        return None
    raw = read_tsv(path)
    lacking = [c for c in DURATION_COLUMNS if c not in raw.columns]
    if lacking:
        raise CltmError(
            f"{path} lacks the column(s) {', '.join(lacking)}; it should have "
            f"{', '.join(DURATION_COLUMNS)}. Replace it with the release's own file or delete "
            f"it (durations are then unknown). {_layout_hint()}"
        )
    seconds = pd.to_numeric(raw["duration[ms]"], errors="coerce") / 1000.0
    durations = pd.Series(seconds.to_numpy(dtype=float), index=raw["clip"].to_numpy())
    return durations[~durations.index.duplicated(keep="first")]


def _release_rows(
    raw: pd.DataFrame, locale: str, split: str, durations: pd.Series | None
) -> pd.DataFrame:
    clips = raw["path"].astype(object)
    if durations is None:
        duration = pd.Series(float("nan"), index=raw.index, dtype=float)
    else:
        duration = clips.map(durations).astype(float)
    return pd.DataFrame(
        {
            "language": locale,
            "split": split,
            "clip": clips,
            "speaker": raw["client_id"].astype(object),
            "gender": normalise_gender(raw["gender"]),
            "sentence": raw["sentence"].astype(object),
            "sentence_id": raw["sentence_id"].astype(object),
            "duration_s": duration,
        },
        index=raw.index,
    )


def _gender_report(split: str, raw_gender: pd.Series) -> str:
    cleaned = raw_gender.fillna("").astype(str).str.strip()
    binary = normalise_gender(cleaned) != ""
    empty = cleaned == ""
    other = ~binary & ~empty
    return (
        f"{split}: {len(cleaned)} rows, {int(other.sum())} with another gender, "
        f"{int(empty.sum())} with none"
    )


def _finish(table: pd.DataFrame) -> pd.DataFrame:
    table = table.loc[:, list(RELEASE_COLUMNS)].reset_index(drop=True)
    # One dtype per column whichever way the table came (TSVs, or Parquet's string dtype).
    text = dict.fromkeys((c for c in RELEASE_COLUMNS if c != "duration_s"), object)
    return table.astype({**text, "duration_s": float})
