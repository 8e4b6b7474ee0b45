"""A release without clip_durations.tsv (Common Voice before 17.0): it reads, and a duration
filter chooses exactly what it would with the durations listed, measuring only chosen clips."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from cltm.config import config_from_dict
from cltm.data import build
from cltm.data.audio import clip_seconds
from cltm.data.build import build_subsets, choose_measured
from cltm.data.commonvoice import DURATIONS_FILE, TSV_COLUMNS, read_release, write_metadata
from cltm.data.subsets import select_curve, select_gender, select_speaker
from cltm.errors import CltmError
from tests.test_commonvoice import write_tsv

REPO = Path(__file__).resolve().parents[1]
LOCALES = ("es", "de")
BOUNDS = {"min_duration_s": 1.0, "max_duration_s": 3.0}
SELECT = {"pool": "validated", **BOUNDS}  # the selections' data settings
TRAINING = {"drop_short": False, "shared_pool": False}  # and D, D' of every language its own


def _write_release(root: Path) -> None:
    """Per locale and gender 10 pool speakers (every other one in train too), 1 dev and 3 test
    speakers, 4 MP3 clips each of 0.5-4 s (48 and 32 kHz), and clip_durations.tsv in ms."""
    rng = np.random.default_rng(7)
    for locale in LOCALES:
        clips = root / locale / "clips"
        clips.mkdir(parents=True)
        splits: dict[str, list[dict[str, str]]] = {s: [] for s in ("validated", "train", "dev",
                                                                   "test")}
        durations = []
        number = 0
        for gender in ("male_masculine", "female_feminine"):
            for k in range(14):
                role = "train" if k < 10 else "dev" if k == 10 else "test"
                for _ in range(4):
                    number += 1
                    name = f"common_voice_{locale}_{number}.mp3"
                    rate = 48_000 if number % 2 else 32_000
                    n = int(rate * rng.uniform(0.5, 4.0))
                    tone = 0.1 * np.sin(np.arange(n, dtype=np.float32) * 0.05)
                    sf.write(clips / name, tone, rate, format="MP3")
                    durations.append({"clip": name, "duration[ms]": str(round(1000 * n / rate))})
                    row = {"client_id": f"{locale}-{gender}-{k}", "path": name,
                           "sentence": f"s{number}", "gender": gender, "locale": locale}
                    splits["validated"].append(row)
                    if role != "train" or k % 2 == 0:
                        splits[role].append(row)
        for split, rows in splits.items():
            write_tsv(root / locale / f"{split}.tsv", TSV_COLUMNS, rows)
        write_tsv(root / locale / DURATIONS_FILE, ("clip", "duration[ms]"), durations)


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> tuple[Path, Path]:
    """(a release with clip_durations.tsv, the same release without it)."""
    base = tmp_path_factory.mktemp("cv")
    listed, old = base / "listed", base / "old"
    _write_release(listed)
    shutil.copytree(listed, old)
    for locale in LOCALES:
        (old / locale / DURATIONS_FILE).unlink()
    return listed, old


Choose = Callable[[pd.DataFrame, frozenset[str]], pd.DataFrame]
SELECTIONS: dict[str, Choose] = {
    "gender": lambda t, ex: select_gender(t, LOCALES, 4, 2, seed=1, exclude=ex,
                                         eval_max_per_language=None, **SELECT, **TRAINING),
    "gender, capped eval, per seed": lambda t, ex: select_gender(
        t, LOCALES, 2, 1, seed=2, eval_max_per_language=4, draws=[0, 1, 2], exclude=ex,
        **SELECT, **TRAINING),
    "gender, min only": lambda t, ex: select_gender(
        t, LOCALES, 2, 1, seed=5, exclude=ex, eval_max_per_language=None, pool="validated",
        min_duration_s=2.0, max_duration_s=None, **TRAINING),
    "speaker, max only": lambda t, ex: select_speaker(
        t, LOCALES, 4, 2, seed=6, exclude=ex, pool="validated", min_duration_s=None,
        max_duration_s=2.5, **TRAINING),
    "speaker, shared pool": lambda t, ex: select_speaker(
        t, LOCALES, 4, 2, seed=3, draws=[0, 1], drop_short=False, shared_pool=True, exclude=ex,
        **SELECT),
    "curve": lambda t, ex: select_curve(t, LOCALES, "gender", [2, 4], 1, seed=4,
                                        eval_max_per_language=4, exclude=ex, **SELECT),
}


class Counter:
    """clip_seconds, counting the clips it measures."""

    def __init__(self) -> None:
        self.clips: list[str] = []

    def __call__(self, path: str | Path) -> float:
        self.clips.append(Path(path).name)
        return clip_seconds(path)


def test_a_release_without_durations_reads(releases) -> None:
    listed, old = releases
    with_file, without = read_release(listed, LOCALES), read_release(old, LOCALES)
    assert without["duration_s"].isna().all()
    assert with_file["duration_s"].notna().all()
    pd.testing.assert_frame_equal(without.drop(columns="duration_s"),
                                  with_file.drop(columns="duration_s"))


def test_measured_and_listed_durations_agree(releases) -> None:
    listed, _ = releases
    table = read_release(listed, ["es"]).drop_duplicates("clip")
    for clip, seconds in zip(table["clip"][:8], table["duration_s"][:8], strict=True):
        assert clip_seconds(listed / "es" / "clips" / clip) == seconds


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_a_filtered_selection_equals_the_one_with_durations_listed(releases, name, monkeypatch):
    listed, old = releases
    choose = SELECTIONS[name]
    expected = choose(read_release(listed, LOCALES), frozenset())
    counter = Counter()
    monkeypatch.setattr(build, "clip_seconds", counter)
    failed: dict[str, str] = {}
    table = read_release(old, LOCALES)
    manifest, measured = choose_measured(choose, table, old, failed)
    pd.testing.assert_frame_equal(manifest, expected)
    assert not failed
    # Unknown durations alone would pass the filter and choose otherwise.
    assert not choose(table, frozenset()).equals(expected)
    # Each clip is measured once at most, and what was measured stays in the table.
    assert len(counter.clips) == len(set(counter.clips))
    assert set(measured.loc[measured["duration_s"].notna(), "clip"]) == set(counter.clips)


def test_only_chosen_clips_are_measured(releases, monkeypatch) -> None:
    _, old = releases
    counter = Counter()
    monkeypatch.setattr(build, "clip_seconds", counter)
    table = read_release(old, LOCALES)
    chosen: set[str] = set()

    def choose(t: pd.DataFrame, exclude: frozenset[str]) -> pd.DataFrame:
        manifest = SELECTIONS["gender"](t, exclude)
        chosen.update(manifest["clip"])
        return manifest

    manifest, _ = choose_measured(choose, table, old, {})
    assert set(manifest["clip"]) <= set(counter.clips) <= chosen
    # Not the whole release: the pool's clips that were never chosen stay unmeasured.
    assert len(counter.clips) < 0.6 * table["clip"].nunique()


def test_an_unreadable_clip_is_replaced_and_a_missing_one_named(releases, tmp_path, caplog):
    listed, old = releases
    broken = tmp_path / "broken"
    shutil.copytree(old, broken)
    choose = SELECTIONS["gender"]
    expected = choose(read_release(listed, LOCALES), frozenset())
    victim = expected[expected["role"] == "D"].iloc[0]
    path = broken / victim["language"] / "clips" / victim["clip"]
    path.write_bytes(b"garbage, not mp3")
    failed: dict[str, str] = {}
    with caplog.at_level(logging.ERROR):
        manifest, _ = choose_measured(choose, read_release(broken, LOCALES), broken, failed)
    assert list(failed) == [victim["clip"]]
    assert str(path) in caplog.text
    # The same choice as a listed release with that clip excluded, as after a failed decode.
    pd.testing.assert_frame_equal(
        manifest, choose(read_release(listed, LOCALES), frozenset(failed)))
    path.unlink()
    with pytest.raises(CltmError, match=str(path)):
        choose_measured(choose, read_release(broken, LOCALES), broken, {})


def _config(root: Path, **data):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"languages": list(LOCALES), "workers": 1, **data})
    raw["data"]["commonvoice"]["root"] = str(root)
    raw["tasks"]["gender"].update({"N": 2, "clips_per_speaker": 1, "seeds": None})
    raw["tasks"]["speaker"].update({"N": 4, "clips_per_speaker": 2})
    return config_from_dict(raw)


def _build(root: Path, workdir: Path, monkeypatch, **data) -> pd.DataFrame:
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # the metadata stage's tables, as `dvc repro` leaves them
    for locale in LOCALES:
        write_metadata(root, locale, workdir / "metadata")
    return build_subsets(_config(root, **data), "gender", workdir / "gender",
                         workdir / "metadata", progress=False)


def test_the_subsets_stage_measures_for_a_filter_only(releases, tmp_path, monkeypatch):
    listed, old = releases
    expected = _build(listed, tmp_path / "listed", monkeypatch, **BOUNDS)
    counter = Counter()
    monkeypatch.setattr(build, "clip_seconds", counter)
    pd.testing.assert_frame_equal(_build(old, tmp_path / "old", monkeypatch, **BOUNDS), expected)
    assert counter.clips
    counter.clips.clear()
    unfiltered = _build(old, tmp_path / "unfiltered", monkeypatch)
    assert counter.clips == []  # no filter: no duration is measured
    assert unfiltered["duration_s"].isna().all()
