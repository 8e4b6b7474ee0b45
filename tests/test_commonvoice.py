"""The Common Voice reader on a small release written to disk (TSVs only, no audio)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import pytest

from cltm.data.commonvoice import (
    RELEASE_COLUMNS,
    SPLITS,
    TSV_COLUMNS,
    check_clips_exist,
    clip_path,
    normalise_gender,
    read_locale,
    read_release,
    read_tsv,
)
from cltm.errors import CltmError

# Releases before 17.0 had fewer columns; this is such an older header.
OLD_COLUMNS = (
    "client_id",
    "path",
    "sentence",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
)


def write_tsv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(columns)]
    lines += ["\t".join(row.get(c, "") for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def es_row(n: int, speaker: str, gender: str, sentence: str = "") -> dict[str, str]:
    return {
        "client_id": speaker,
        "path": f"common_voice_es_{n}.mp3",
        "sentence": sentence or f"frase {n}",
        "gender": gender,
        "locale": "es",
    }


ES_VALIDATED = [
    es_row(1, "s1", "male_masculine"),
    # A lone quote: a quoting reader would take the rest of the file as one field.
    es_row(2, "s2", "female_feminine", 'Dijo "hola y se fue'),
    es_row(3, "s3", "intersex"),
    es_row(4, "s4", ""),
    es_row(5, "s5", "non-binary"),
    es_row(6, "s6", "do_not_wish_to_say"),
    es_row(7, "s1", "male_masculine"),
]
ES_TEST = [es_row(8, "s8", "female_feminine"), es_row(9, "s9", "transgender"), es_row(10, "s9", "")]


def de_row(n: int, speaker: str, gender: str) -> dict[str, str]:
    return {
        "client_id": speaker,
        "path": f"common_voice_de_{n}.mp3",
        "sentence": f"Satz {n}",
        "gender": gender,
    }


DE_VALIDATED = [de_row(1, "d1", "male"), de_row(2, "d2", "female"), de_row(3, "d3", "other")]
DE_TEST = [de_row(4, "d4", "female"), de_row(5, "d5", "")]


@pytest.fixture
def release(tmp_path: Path) -> Path:
    root = tmp_path / "cv"
    es = root / "es"
    write_tsv(es / "validated.tsv", TSV_COLUMNS, ES_VALIDATED)
    write_tsv(es / "train.tsv", TSV_COLUMNS, ES_VALIDATED[:2])
    write_tsv(es / "dev.tsv", TSV_COLUMNS, [])
    write_tsv(es / "test.tsv", TSV_COLUMNS, ES_TEST)
    durations = [
        {"clip": f"common_voice_es_{n}.mp3", "duration[ms]": str(1000 * n)} for n in range(1, 9)
    ]
    # Clips 9 and 10 have no duration row.
    write_tsv(es / "clip_durations.tsv", ("clip", "duration[ms]"), durations)
    de = root / "de"
    write_tsv(de / "validated.tsv", OLD_COLUMNS, DE_VALIDATED)
    write_tsv(de / "train.tsv", OLD_COLUMNS, DE_VALIDATED[:1])
    write_tsv(de / "dev.tsv", OLD_COLUMNS, DE_VALIDATED[1:2])
    write_tsv(de / "test.tsv", OLD_COLUMNS, DE_TEST)
    return root


def test_read_release_shape_and_columns(release: Path) -> None:
    table = read_release(release, ["es", "de"])
    assert tuple(table.columns) == RELEASE_COLUMNS
    sizes = table.groupby(["language", "split"]).size().to_dict()
    # Row counts prove the lone quote did not swallow the following lines.
    assert sizes == {
        ("es", "validated"): 7,
        ("es", "train"): 2,
        ("es", "test"): 3,
        ("de", "validated"): 3,
        ("de", "train"): 1,
        ("de", "dev"): 1,
        ("de", "test"): 2,
    }
    assert set(table["split"]) <= set(SPLITS)
    assert table["duration_s"].dtype == float


def test_lone_quote_is_kept_verbatim(release: Path) -> None:
    table = read_release(release, ["es"])
    row = table[(table["split"] == "validated") & (table["clip"] == "common_voice_es_2.mp3")]
    assert row["sentence"].tolist() == ['Dijo "hola y se fue']
    following = table[(table["split"] == "validated") & (table["clip"] == "common_voice_es_3.mp3")]
    assert following["speaker"].tolist() == ["s3"]


def test_both_gender_schemes_are_normalised(release: Path) -> None:
    table = read_release(release, ["es", "de"]).set_index(["language", "split", "clip"])
    gender = table["gender"]
    assert gender["es", "validated", "common_voice_es_1.mp3"] == "male"
    assert gender["es", "validated", "common_voice_es_2.mp3"] == "female"
    for n in (3, 4, 5, 6):
        assert gender["es", "validated", f"common_voice_es_{n}.mp3"] == ""
    assert gender["de", "validated", "common_voice_de_1.mp3"] == "male"
    assert gender["de", "validated", "common_voice_de_2.mp3"] == "female"
    assert gender["de", "validated", "common_voice_de_3.mp3"] == ""
    assert gender["de", "test", "common_voice_de_5.mp3"] == ""


def test_normalise_gender_ignores_case_and_spaces() -> None:
    raw = pd.Series([" Male_Masculine", "FEMALE ", "female_feminine", "other", None, "", "x"])
    assert normalise_gender(raw).tolist() == ["male", "female", "female", "", "", "", ""]


def test_older_tsv_without_recent_columns(release: Path) -> None:
    raw = read_tsv(release / "de" / "validated.tsv")
    assert "sentence_domain" not in raw.columns  # the file really is an old one
    table = read_locale(release, "de")
    assert tuple(table.columns) == RELEASE_COLUMNS
    assert table["speaker"].tolist()[:3] == ["d1", "d2", "d3"]
    assert table.loc[0, "sentence"] == "Satz 1"


def test_durations_in_seconds_and_nan_when_unknown(release: Path) -> None:
    table = read_release(release, ["es", "de"]).set_index(["language", "split", "clip"])
    duration = table["duration_s"]
    assert duration["es", "validated", "common_voice_es_2.mp3"] == pytest.approx(2.0)
    assert math.isnan(duration["es", "test", "common_voice_es_9.mp3"])  # no row for it
    assert duration.loc["de"].isna().all()  # no clip_durations.tsv at all


def test_logs_dropped_genders_per_locale(release: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="cltm.data.commonvoice"):
        read_release(release, ["es", "de"])
    lines = [r.getMessage() for r in caplog.records]
    es_lines = [line for line in lines if line.startswith("es:")]
    assert len(es_lines) == 1
    assert "validated: 7 rows, 3 with another gender, 1 with none" in es_lines[0]
    assert "test: 3 rows, 1 with another gender, 1 with none" in es_lines[0]
    de_lines = [line for line in lines if line.startswith("de:")]
    assert "validated: 3 rows, 1 with another gender, 0 with none" in de_lines[0]


def test_read_tsv_keeps_strings_exactly(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    write_tsv(
        path,
        ("client_id", "path", "up_votes", "gender"),
        [{"client_id": "00", "path": "NA", "up_votes": "002", "gender": "null"}],
    )
    raw = read_tsv(path)
    assert raw.iloc[0].tolist() == ["00", "NA", "002", "null"]


# --------------------------------------------------------------------------- errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(CltmError, match=r"root not found.*nowhere") as info:
        read_release(tmp_path / "nowhere", ["es"])
    message = str(info.value)
    assert "<root>/<locale>/{validated,train,dev,test}.tsv" in message
    assert "https://commonvoice.mozilla.org/datasets" in message


def test_missing_locale_lists_existing_ones(release: Path) -> None:
    with pytest.raises(CltmError, match=r"Locale folder not found: .*fr.*: de, es") as info:
        read_release(release, ["es", "fr"])
    assert "https://commonvoice.mozilla.org/datasets" in str(info.value)


def test_missing_tsv(release: Path) -> None:
    (release / "es" / "dev.tsv").unlink()
    with pytest.raises(CltmError, match=r"not found: .*es.dev\.tsv") as info:
        read_locale(release, "es")
    assert "clip_durations.tsv, clips/*.mp3" in str(info.value)


def test_missing_required_column(release: Path) -> None:
    columns = tuple(c for c in TSV_COLUMNS if c != "client_id")
    write_tsv(release / "es" / "test.tsv", columns, ES_TEST)
    with pytest.raises(CltmError, match=r"test\.tsv lacks the column\(s\) client_id"):
        read_release(release, ["es"])


def test_empty_tsv(release: Path) -> None:
    (release / "es" / "train.tsv").write_text("", encoding="utf-8")
    with pytest.raises(CltmError, match=r"train\.tsv is empty"):
        read_locale(release, "es")


def test_bad_durations_file(release: Path) -> None:
    write_tsv(release / "es" / "clip_durations.tsv", ("clip", "ms"), [])
    with pytest.raises(CltmError, match=r"clip_durations\.tsv lacks the column\(s\) duration"):
        read_locale(release, "es")


def test_clip_path_layout(release: Path) -> None:
    assert clip_path(release, "es", "a.mp3") == release / "es" / "clips" / "a.mp3"


def test_check_clips_exist(release: Path) -> None:
    table = read_release(release, ["es"])
    wanted = table[table["split"] == "validated"]
    clips = release / "es" / "clips"
    clips.mkdir()
    for clip in wanted["clip"].iloc[:-1]:
        (clips / clip).write_bytes(b"")
    with pytest.raises(CltmError, match=r"1 of 7 audio clips are missing: .*common_voice_es_7"):
        check_clips_exist(release, wanted)
    (clips / "common_voice_es_7.mp3").write_bytes(b"")
    check_clips_exist(release, wanted)


def test_check_clips_exist_names_only_a_few(release: Path) -> None:
    table = read_release(release, ["es"])
    with pytest.raises(CltmError, match=r"10 of 10 audio clips are missing: .* and 5 more"):
        check_clips_exist(release, table)
