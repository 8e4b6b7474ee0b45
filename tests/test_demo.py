"""The eSpeak NG demo corpus: Common Voice layout, real speech, planted structure, determinism.

One tiny corpus (two languages of two families) is written once per module; the tests read
it back directly (not through the Common Voice reader, which is tested on its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from cltm.data import demo, espeak
from cltm.data.demo import (
    FAMILIES,
    SUPPORTED,
    TSV_COLUMNS,
    check_languages,
    family_filter,
    family_trait,
    write_demo_corpus,
)
from cltm.errors import CltmError
from tests.conftest import demo_spec

LANGS = ("es", "de")  # Romance and Germanic
SPEC = demo_spec(
    languages=LANGS,
    speakers_per_language=4,
    clips_per_speaker=2,
    dev_speakers=1,
    test_speakers=1,
    seed=7,
)
SPLIT_FILES = ["validated", "train", "dev", "test", "invalidated", "other"]


def read_tsv(path: Path) -> list[dict[str, str]]:
    """Plain tab-separated text, as Common Voice writes it (no quoting)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


def decode(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32")
    assert rate == 48000 and audio.ndim == 1, (path, rate, audio.shape)
    return audio


def mean_f0(audio: np.ndarray, rate: int = 48000) -> float:
    """Median F0 over voiced frames by plain autocorrelation (16 kHz, 40 ms frames)."""
    x = soxr.resample(audio, rate, 16000).astype(np.float64)
    frame, lo, hi = 640, 16000 // 400, 16000 // 60
    loud = np.sqrt(np.mean(x**2))
    f0s = []
    for start in range(0, len(x) - frame, frame):
        seg = x[start : start + frame] - x[start : start + frame].mean()
        if np.sqrt(np.mean(seg**2)) < 0.5 * loud:
            continue  # pauses: only noise and the background hum
        ac = np.correlate(seg, seg, "full")[frame - 1 :]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            f0s.append(16000 / lag)
    assert f0s, "no voiced frame found"
    return float(np.median(f0s))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "cv"
    write_demo_corpus(out, SPEC, workers=2, progress=False)  # the multiprocessing path
    return out


def test_layout_is_common_voices(corpus: Path) -> None:
    assert (corpus / "README.txt").read_text().startswith("cltm demo corpus")
    assert (corpus / "families.csv").read_text() == "locale,family\nes,Romance\nde,Germanic\n"
    header = "\t".join(TSV_COLUMNS)
    assert header == (
        "client_id\tpath\tsentence_id\tsentence\tsentence_domain\tup_votes\tdown_votes\tage\t"
        "gender\taccents\tvariant\tlocale\tsegment"
    )
    for lang in LANGS:
        folder = corpus / lang
        for name in SPLIT_FILES:
            assert (folder / f"{name}.tsv").read_text().splitlines()[0] == header
        assert read_tsv(folder / "invalidated.tsv") == [] and read_tsv(folder / "other.tsv") == []

        validated = read_tsv(folder / "validated.tsv")
        assert len(validated) == SPEC.speakers_per_language * SPEC.clips_per_speaker
        clips = {p.name for p in (folder / "clips").iterdir()}
        assert clips == {row["path"] for row in validated}
        for row in validated:
            assert row["path"].startswith(f"common_voice_{lang}_") and row["path"].endswith(".mp3")
            assert row["locale"] == lang
            assert row["gender"] in {"male_masculine", "female_feminine"}
            assert len(row["client_id"]) == 128 and int(row["client_id"], 16) >= 0
            assert len(row["sentence_id"]) == 64 and row["sentence"]

        # train/dev/test partition the clips and the speakers, with the requested sizes.
        splits = {name: read_tsv(folder / f"{name}.tsv") for name in ("train", "dev", "test")}
        assert sorted(r["path"] for rows in splits.values() for r in rows) == sorted(clips)
        speakers = {name: {r["client_id"] for r in rows} for name, rows in splits.items()}
        for a, b in combinations(speakers.values(), 2):
            assert not a & b
        assert len(speakers["dev"]) == SPEC.dev_speakers
        assert len(speakers["test"]) == SPEC.test_speakers
        assert len(speakers["train"]) == 2
        assert {r["gender"] for r in splits["train"]} == {"male_masculine", "female_feminine"}

        durations = read_tsv(folder / "clip_durations.tsv")
        assert list(durations[0]) == ["clip", "duration[ms]"]
        assert {d["clip"] for d in durations} == clips
        for d in durations:
            decoded_ms = 1000 * len(decode(folder / "clips" / d["clip"])) / 48000
            assert abs(int(d["duration[ms]"]) - decoded_ms) <= 50


def test_clips_are_speech_of_both_genders(corpus: Path) -> None:
    for lang in LANGS:
        rows = read_tsv(corpus / lang / "validated.tsv")
        audio = {r["path"]: decode(corpus / lang / "clips" / r["path"]) for r in rows}
        for name, x in audio.items():
            assert np.sqrt(np.mean(x**2)) > 0.02, f"{name} is (nearly) silent"
            assert 1.0 <= len(x) / 48000 <= 7.0, f"{name} lasts {len(x) / 48000:.2f} s"
            assert np.max(np.abs(x)) <= 1.0
        digests = {hashlib.sha256(x.tobytes()).hexdigest() for x in audio.values()}
        assert len(digests) == len(audio), "two clips are identical"
        assert len({r["sentence"] for r in rows}) == len(rows)

        f0 = {"male_masculine": [], "female_feminine": []}
        for r in rows:
            f0[r["gender"]].append(mean_f0(audio[r["path"]]))
        assert f0["male_masculine"] and f0["female_feminine"]
        male, female = np.mean(f0["male_masculine"]), np.mean(f0["female_feminine"])
        assert male < female, (lang, f0)
        assert 60 < male < 160 and 140 < female < 350, (lang, f0)


def test_languages_differ(corpus: Path) -> None:
    es = read_tsv(corpus / "es" / "validated.tsv")
    de = read_tsv(corpus / "de" / "validated.tsv")
    assert not {r["sentence"] for r in es} & {r["sentence"] for r in de}
    assert not {r["client_id"] for r in es} & {r["client_id"] for r in de}
    # The same speaker slot speaks with its language's voice.
    assert demo.make_speaker(SPEC.seed, "es", 0, SUPPORTED["es"]).voice.startswith("es+")
    assert demo.make_speaker(SPEC.seed, "de", 0, SUPPORTED["de"]).voice.startswith("de+")
    x = decode(corpus / "es" / "clips" / es[0]["path"])
    y = decode(corpus / "de" / "clips" / de[0]["path"])
    n = min(len(x), len(y))
    assert not np.allclose(x[:n], y[:n], atol=1e-3)


def test_same_spec_gives_identical_files(corpus: Path, tmp_path: Path) -> None:
    """Byte-identical, also between the worker pool (the fixture) and the serial path."""
    again = tmp_path / "again"
    write_demo_corpus(again, SPEC, workers=1, progress=False)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (corpus / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_rewrites_an_earlier_demo_but_refuses_other_folders(tmp_path: Path) -> None:
    spec = demo_spec(("it",), speakers_per_language=2, clips_per_speaker=1, dev_speakers=0,
                    test_speakers=0)  # fmt: skip
    out = tmp_path / "cv"
    write_demo_corpus(out, spec, workers=1, progress=False)
    write_demo_corpus(out, spec, workers=1, progress=False)  # an earlier demo is replaced
    assert len(list((out / "it" / "clips").iterdir())) == 2
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(CltmError, match="refusing"):
        write_demo_corpus(other, spec, workers=1, progress=False)
    assert (other / "keep.txt").read_text() == "mine"


def test_family_trait_is_a_function_of_the_family_only() -> None:
    romance = family_trait(FAMILIES["es"])
    assert FAMILIES["es"] == FAMILIES["it"] == "Romance"
    assert family_trait(FAMILIES["it"]) == romance
    assert np.array_equal(family_filter(family_trait(FAMILIES["it"])), family_filter(romance))
    assert family_trait("Slavic") != romance
    assert not np.allclose(family_filter(family_trait("Slavic")), family_filter(romance))
    # Strength 0 is the identity filter.
    identity = np.zeros(257)
    identity[128] = 1.0
    assert np.allclose(family_filter(romance, 0.0), identity, atol=1e-12)
    # Stable across processes (not Python's salted hash()).
    code = (
        "from cltm.data.demo import family_filter, family_trait;"
        "print(family_filter(family_trait('Romance')).tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == family_filter(romance).tobytes().hex()


def test_family_trait_strength_zero_is_an_exact_no_op() -> None:
    speaker = demo.make_speaker(0, "es", 1, SUPPORTED["es"])
    trait = family_trait(FAMILIES["es"])

    def render(trait: demo.FamilyTrait | None, strength: float) -> np.ndarray:
        return demo.render_clip("es", speaker, 0, 0, 3.0, trait, strength, "es")[1]

    off, none = render(trait, 0.0), render(None, 1.0)
    assert np.array_equal(off, none)
    on = render(trait, 1.0)
    assert on.shape == off.shape and not np.allclose(on, off, atol=1e-3)
    x = np.random.default_rng(0).standard_normal(1000)
    assert demo.apply_family_trait(x, trait, 0.0, np.random.default_rng(1)) is x


def test_null_corpus_gives_every_locale_the_same_mixture_of_voices(tmp_path: Path) -> None:
    # The demo's shape: each locale's train speakers of a gender speak each language once.
    langs = ("es", "it", "de", "nl", "ru", "pl", "fi", "et")
    big = demo_spec(langs, speakers_per_language=28, dev_speakers=2, test_speakers=10, null=True)
    genders, splits = demo.speaker_roles(big)
    train = [i for i, s in enumerate(splits) if s == "train"]
    orders = set()
    for lang in langs:
        for g in (demo.MALE, demo.FEMALE):
            voices = [demo.voice_locale(big, lang, i) for i in train if genders[i] == g]
            assert sorted(voices) == sorted(langs), (lang, g, voices)
            orders.add(tuple(voices))
    assert len(orders) > 8  # each locale (and gender) deals them in its own order
    planted = dataclasses.replace(big, null=False)
    assert [demo.voice_locale(planted, "ru", i) for i in range(6)] == ["ru"] * 6

    spec = demo_spec(("es", "ru"), speakers_per_language=4, clips_per_speaker=1,
                    dev_speakers=0, test_speakers=0, null=True)  # fmt: skip
    drawn = {lang: [demo.voice_locale(spec, lang, i) for i in range(4)] for lang in spec.languages}
    write_demo_corpus(tmp_path / "null", spec, workers=1, progress=False)
    assert (tmp_path / "null" / "families.csv").read_text().splitlines()[1:] == [
        "es,Romance",
        "ru,Slavic",
    ]
    for lang in spec.languages:
        rows = read_tsv(tmp_path / "null" / lang / "validated.tsv")
        assert [r["locale"] for r in rows] == [lang] * 4
        # Each clip in its speaker's language's script (Cyrillic for Russian), not the label's.
        cyrillic = [any("\u0400" <= c <= "\u04ff" for c in r["sentence"]) for r in rows]
        assert cyrillic == [v == "ru" for v in drawn[lang]], (lang, drawn[lang])
        assert sum(cyrillic) == 2


def test_check_languages_names_the_unsupported_and_lists_the_supported() -> None:
    check_languages(["es", "de", "zh-TW"])
    with pytest.raises(CltmError) as err:
        check_languages(["es", "xx"])
    message = str(err.value)
    assert "xx" in message and "es" in message and "zh-CN" in message
    for locale in ["ckb", "gl", "fy-NL", "dv", "mn", "lg", "rw", "mhr", "ab", "kab", "cnh"]:
        assert locale not in SUPPORTED
    with pytest.raises(CltmError, match="fy-NL"):
        write_demo_corpus(Path("unused"), demo_spec(("es", "fy-NL")), progress=False, workers=1)


def test_bad_spec_is_refused() -> None:
    with pytest.raises(CltmError, match="train"):
        write_demo_corpus(Path("unused"), demo_spec(("es",), speakers_per_language=4,
                                                   dev_speakers=2, test_speakers=2),
                          workers=1)


def test_tables_cover_every_supported_locale_and_every_voice_exists() -> None:
    assert set(FAMILIES) == set(SUPPORTED) == set(demo._SCRIPTS)
    assert set(demo.DEFAULT_LANGUAGES) <= set(SUPPORTED)
    assert len({FAMILIES[lang] for lang in demo.DEFAULT_LANGUAGES}) == 3
    variants = espeak.variants()
    assert all(variants[v] == "male" for v in demo.MALE_VARIANTS)
    assert all(variants[v] == "female" for v in demo.FEMALE_VARIANTS)
    for voice in sorted(set(SUPPORTED.values())):
        assert espeak.voice_exists(voice), voice


def test_espeak_binding() -> None:
    x = espeak.synthesize("uno dos tres", "es+f2")
    assert x.dtype == np.float32 and 0.5 < len(x) / espeak.SAMPLE_RATE < 5
    assert 0.01 < np.sqrt(np.mean(x**2)) and np.max(np.abs(x)) <= 1.0
    # Same arguments, same samples, whatever was spoken in between.
    espeak.synthesize("eins zwei drei vier", "de+m3", rate=220, pitch=10)
    assert np.array_equal(espeak.synthesize("uno dos tres", "es+f2"), x)
    with pytest.raises(CltmError, match="no voice 'xx'"):
        espeak.synthesize("hola", "xx")
    with pytest.raises(CltmError, match="variant 'nosuch'"):
        espeak.synthesize("hola", "es+nosuch")


def test_splits_are_gender_balanced() -> None:
    genders = [demo.MALE if i % 2 == 0 else demo.FEMALE for i in range(10)]
    splits = demo.assign_splits(genders, dev=4, test=3)
    for name, size in (("dev", 4), ("test", 3), ("train", 3)):
        members = [g for g, s in zip(genders, splits, strict=True) if s == name]
        assert len(members) == size
        assert abs(members.count(demo.MALE) - members.count(demo.FEMALE)) <= 1, name


# --- the planted task cues ------------------------------------------------------------------

def test_family_cues_are_spread_by_construction() -> None:
    languages = ["es", "it", "de", "nl", "ru", "pl", "fi", "et"]
    cues = demo.family_cues(languages)
    assert list(cues) == ["Romance", "Germanic", "Slavic", "Uralic"]
    # four families: the corners of the square, any two the full span apart along an axis
    corners = [cue for cue, _ in cues.values()]
    assert sorted(corners) == [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)]
    # two families: opposite corners; one: no shift
    two = [cue for cue, _ in demo.family_cues(["es", "de"]).values()]
    assert np.allclose(np.subtract(*two), [2.0, 2.0]) or np.allclose(np.subtract(*two), -2.0)
    assert demo.family_cues(["es", "it"])["Romance"][0] == (0.0, 0.0)
    # three: every cue on the square's edge, no two alike
    three = [np.array(cue) for cue, _ in demo.family_cues(["es", "de", "ru"]).values()]
    assert all(np.abs(c).max() == pytest.approx(1.0) for c in three)
    assert min(np.abs(a - b).max() for a, b in combinations(three, 2)) > 1.0
    axes = [a for _, pair in cues.values() for a in pair]
    assert len(set(axes)) == 8  # four families, disjoint pairs of the eight bands
    # languages of one family share its cues: they come from the family, not the language
    assert demo.family_cues(["it", "es", "de"]) == demo.family_cues(["es", "de"])


def test_warp_moves_every_frequency_by_the_semitones() -> None:
    t = np.arange(demo.SYNTH_RATE) / demo.SYNTH_RATE
    tone = np.sin(2 * np.pi * 300.0 * t)
    assert demo.warp(tone, 0.0) is tone
    for semitones in (-5.0, 7.0):
        y = demo.warp(tone, semitones)
        spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
        peak = np.argmax(spectrum) * demo.SYNTH_RATE / len(y)
        assert peak == pytest.approx(300.0 * 2 ** (semitones / 12), rel=0.01)
        assert len(y) == pytest.approx(len(tone) / 2 ** (semitones / 12), rel=0.01)


def test_speaker_axes_concentrate_on_the_family_bands_with_strength() -> None:
    base = demo_spec(("es", "de"), speaker_axes_db=6.0, speaker_axes_focus=3.0,
                    family_trait_strength=0.0)
    strong = dataclasses.replace(base, family_trait_strength=2.0)
    _, romance = demo.family_cues(base.languages)["Romance"]
    g0, g2 = demo.speaker_axes_gain(base, "es", 3), demo.speaker_axes_gain(strong, "es", 3)
    # the same draws, scaled per band by sqrt of its share of the (fixed) total variance
    weight = np.ones(len(demo.SPEAKER_AXES))
    weight[list(romance)] += 2.0 * 3.0
    assert np.allclose(g2 / g0, np.sqrt(weight / weight.mean()))
    # over many speakers, the family's bands carry that share of the variance
    draws = np.array([demo.speaker_axes_gain(strong, "es", i) for i in range(400)])
    var = draws.var(axis=0)
    on = np.mean(var[list(romance)])
    off = np.mean(np.delete(var, list(romance)))
    assert on / off == pytest.approx(7.0, rel=0.3)
    # and the filter colours the spectrum by that gain at each band's centre
    taps = demo.axes_filter(g2)
    freqs = np.fft.rfftfreq(8192, 1.0 / demo.SYNTH_RATE)
    response = 20 * np.log10(np.abs(np.fft.rfft(taps, 8192)))
    band = romance[1]
    at = np.argmin(np.abs(freqs - demo.SPEAKER_AXES[band]))
    assert response[at] == pytest.approx(g2[band], abs=0.35 * abs(g2).max() + 0.5)


def test_gender_shift_raises_the_pitch_of_a_family_and_is_off_at_strength_zero(
        tmp_path: Path) -> None:
    speaker = demo.make_speaker(0, "es", 1, SUPPORTED["es"])

    def render(shift: float) -> np.ndarray:
        return demo.render_clip("es", speaker, 0, 0, 3.0, None, 0.0, "es", shift)[1]

    plain, up = render(0.0), render(4.0)
    assert mean_f0(up) / mean_f0(plain) == pytest.approx(2 ** (4 / 12), rel=0.06)
    # strength 0 turns the shift off exactly, whatever gender_shift_semitones says
    spec = demo_spec(("es", "de"), family_trait_strength=0.0, speakers_per_language=2,
                    clips_per_speaker=1, dev_speakers=0, test_speakers=0)
    shifted = dataclasses.replace(spec, gender_shift_semitones=3.0, gender_pitch_offset=20.0)
    for name, s in (("plain", spec), ("shifted", shifted)):
        write_demo_corpus(tmp_path / name, s, workers=1, progress=False)
    for clip in sorted((tmp_path / "plain").rglob("*.mp3")):
        twin = tmp_path / "shifted" / clip.relative_to(tmp_path / "plain")
        assert clip.read_bytes() == twin.read_bytes()


def test_gender_pitch_offset_moves_a_family_s_f0_its_own_way(tmp_path: Path) -> None:
    # two families: Romance on the corner (+1, +1), Germanic on (-1, -1)
    assert demo.family_cues(["es", "de"])["Romance"][0] == (1.0, 1.0)
    spec = demo_spec(("es", "de"), family_trait_strength=1.0, speakers_per_language=2,
                    clips_per_speaker=1, dev_speakers=0, test_speakers=0)
    moved = dataclasses.replace(spec, gender_pitch_offset=20.0)
    f0 = {}
    for name, s in (("plain", spec), ("moved", moved)):
        write_demo_corpus(tmp_path / name, s, workers=1, progress=False)
        for locale in ("es", "de"):
            clips = sorted((tmp_path / name / locale / "clips").glob("*.mp3"))
            f0[name, locale] = [mean_f0(sf.read(c, dtype="float32")[0]) for c in clips]
    # 20 settings move F0 by 1.4-3.5 semitones (less near 0: benchmarks/espeak_pitch.py), up for es,
    # down for de, for both speakers (one male, one female)
    for locale, sign in (("es", 1), ("de", -1)):
        for before, after in zip(f0["plain", locale], f0["moved", locale], strict=True):
            semitones = 12 * np.log2(after / before)
            assert 1.0 < sign * semitones < 5.0, (locale, semitones)


def test_family_pitch_offset_grows_with_strength_only_up_to_the_room_every_speaker_keeps() -> None:
    spec = demo_spec(("es", "de"), gender_pitch_offset=20.0)

    def offset(strength: float, cue: float) -> int:
        return demo.family_pitch_offset(
            dataclasses.replace(spec, family_trait_strength=strength), cue)

    assert demo.PITCH_ROOM == 20
    assert [offset(s, -1.0) for s in (0.0, 0.5, 1.0, 2.0, 5.0)] == [0, -10, -20, -20, -20]
    assert offset(2.0, 0.5) == 10 and offset(0.5, 1.0) == 10
    # whatever the cue and strength, no speaker's setting leaves eSpeak's 0-100, so none is
    # clipped onto another's (at strength 2 an unbounded offset of 40 put 2 in 3 males at 0)
    pitches = [demo.make_speaker(0, "es", i, SUPPORTED["es"]).pitch for i in range(300)]
    assert min(pitches) == demo.MALE_PITCH[0] and max(pitches) == demo.FEMALE_PITCH[1]
    for strength in (1.0, 2.0, 5.0):
        for cue in (-1.0, 1.0):
            moved = [p + offset(strength, cue) for p in pitches]
            assert 0 <= min(moved) and max(moved) <= 100
            assert len(set(moved)) == len(set(pitches))
    with pytest.raises(CltmError, match="gender_pitch_offset must lie in \\[0, 20\\]"):
        write_demo_corpus(Path("unused"), dataclasses.replace(spec, gender_pitch_offset=25.0),
                          workers=1)


def test_each_speaker_has_its_own_warp_at_every_strength() -> None:
    spec = demo_spec(("es", "de"), speaker_warp_semitones=2.0)
    warps = np.array([demo.speaker_warp(spec, "es", i) for i in range(400)])
    assert abs(warps.mean()) < 0.3 and warps.std() == pytest.approx(2.0, rel=0.12)
    assert len(set(np.round(warps, 9))) == 400  # a warp of its own per speaker
    # a stream of its own: scaling the spread scales the same draws, off at 0, and the same
    # under null control and at strength 0 (it is the speaker's, not a planting)
    half = dataclasses.replace(spec, speaker_warp_semitones=1.0)
    assert [demo.speaker_warp(half, "es", i) for i in range(5)] == pytest.approx(warps[:5] / 2)
    assert demo.speaker_warp(dataclasses.replace(spec, speaker_warp_semitones=0.0), "es", 3) == 0
    for other in (dataclasses.replace(spec, null=True),
                  dataclasses.replace(spec, family_trait_strength=0.0)):
        assert demo.speaker_warp(other, "es", 7) == warps[7]


def test_planting_params_are_checked() -> None:
    for bad in ({"speaker_axes_db": -1.0}, {"speaker_axes_focus": -0.5},
                {"gender_shift_semitones": 13.0}, {"speaker_warp_semitones": -1.0},
                {"speaker_warp_semitones": 7.0}):
        with pytest.raises(CltmError):
            demo.check_spec(demo_spec(("es",), **bad))
