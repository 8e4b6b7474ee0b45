"""Phoneme targets through eSpeak NG: tokens, marks, voices, the clause loop."""

from __future__ import annotations

import dataclasses

import pytest

from cltm.data import espeak, phonemes
from cltm.data.transcripts import WORD_SEPARATOR
from cltm.errors import CltmError
from cltm.train.ctc import edit_distance
from tests.conftest import demo_spec

# One sentence of each demo language as the demo corpus (seed 0) wrote it. Pseudo-words of
# Finnish and Estonian have single-letter vowels only, so theirs hold numbers, which eSpeak
# reads with long vowels (aː, uː). Russian is the one non-Latin script.
DEMO_SENTENCES = {
    "es": "Naz cáp chúch jú ce lídócha.",
    "it": "Bo fèzà cigefiv co.",
    "de": "Bolepü kau sü schene wow fauköpäl schös zei.",
    "nl": "Vil loogoolijp wofaa.",
    "ru": "Люнямю выпэм пилисэз тасэги кюпюрог дегю шэ.",
    "pl": "Hyjog cóżół hiwypą lóz palano.",
    "fi": "4 ränuni 33 ha 903.",
    "et": "Todi lipõgõs bä rüp 63.",
}

# A multi-character phone each sentence must yield as one token.
EXPECTED_PHONE = {"es": "tʃ", "it": "tʃ", "de": "aʊ", "nl": "oː", "ru": "pʲ", "pl": "ts",
                  "fi": "aː", "et": "uː"}


@pytest.mark.parametrize("locale", list(DEMO_SENTENCES))
def test_demo_language(locale: str) -> None:
    [tokens] = phonemes.phonemize_locale([DEMO_SENTENCES[locale]], locale)
    words = DEMO_SENTENCES[locale].split()
    assert tokens and all(tokens), tokens
    assert tokens.count(WORD_SEPARATOR) >= len(words) - 1  # numbers may read as several words
    assert EXPECTED_PHONE[locale] in tokens
    # Nothing a phone's name is made of is left alone as a token.
    assert not {t for t in tokens if t in "ʲːˑ\u0303"}
    # A metric sees the phone as one symbol: replacing it by another phone is one edit, not two.
    i = tokens.index(EXPECTED_PHONE[locale])
    assert edit_distance(tokens, [*tokens[:i], "x", *tokens[i + 1:]]) == 1
    assert len(EXPECTED_PHONE[locale]) > 1


def test_affricates_and_stress() -> None:
    [tokens] = phonemes.phonemize(["ciao cena"], "it")
    assert "tʃ" in tokens and "t" not in tokens and "ʃ" not in tokens
    assert "ˈ" in tokens  # stress marks are tokens of their own, in front of the vowel
    assert tokens[tokens.index("ˈ") + 1] in {"a", "e", "ɛ"}


def test_fold_marks() -> None:
    text = DEMO_SENTENCES["fi"]
    [plain] = phonemes.phonemize([text], "fi")
    [folded] = phonemes.phonemize([text], "fi", fold_marks=True)
    marks = set(phonemes.STRESS_MARKS + phonemes.LENGTH_MARKS)
    assert "aː" in plain and "ˈ" in plain
    assert not any(c in marks for t in folded for c in t)
    assert folded == [t.replace("ː", "") for t in plain if t not in phonemes.STRESS_MARKS]


def test_every_clause_is_read() -> None:
    # eSpeak translates one clause a call: the text after the first comma must not be lost.
    [words] = phonemes.phonemize_words(["uno, dos; tres: cuatro. cinco"], "es")
    assert len(words) == 5
    [again] = phonemes.phonemize_words(["uno dos tres cuatro cinco"], "es")
    assert words[-1] == again[-1]  # (a word after a pause may begin otherwise: d, not ð)


def test_empty_and_punctuation_only() -> None:
    assert phonemes.phonemize(["", " ", "..."], "es") == [[], [], []]


def test_language_switch_flags_dropped() -> None:
    [tokens] = phonemes.phonemize(["Привет, Hello world"], "ru")
    assert not any("(" in t or ")" in t for t in tokens)
    assert tokens.count(WORD_SEPARATOR) == 2


def test_independent_of_what_came_before() -> None:
    alone = [phonemes.phonemize([s], "de") for s in DEMO_SENTENCES.values()]
    espeak.synthesize("eins zwei", "de+m3")  # synthesis in between must not leak in
    batch = phonemes.phonemize(list(DEMO_SENTENCES.values()), "de")
    assert [a[0] for a in alone] == batch
    assert phonemes.phonemize(list(DEMO_SENTENCES.values())[::-1], "de")[::-1] == batch


def test_locale_without_voice() -> None:
    with pytest.raises(CltmError, match="'ckb'"):
        phonemes.voice_for("ckb")
    with pytest.raises(CltmError, match="'mhr'"):
        phonemes.phonemize_locale(["текст"], "mhr")
    assert phonemes.locales_without_voice(["es", "ckb", "ru", "mhr"]) == ["ckb", "mhr"]
    assert phonemes.voice_for("zh-CN") == "cmn"


def test_unknown_voice() -> None:
    with pytest.raises(CltmError, match="no voice"):
        phonemes.phonemize(["hola"], "xx-nonexistent")


def test_demo_speaker_voices() -> None:
    from cltm.data import demo

    spec = demo_spec(("es", "ru", "fi"), speakers_per_language=6, dev_speakers=1,
                     test_speakers=1)
    voices = phonemes.demo_speaker_voices(spec)
    assert len(voices) == 18
    assert voices[demo.client_id(0, "ru", 3)] == "ru"
    null = phonemes.demo_speaker_voices(dataclasses.replace(spec, null=True))
    assert set(null) == set(voices) and set(null.values()) == {"es", "ru", "fi"}
    assert null != voices  # a null corpus's speakers read other languages than their locale's
