"""Text -> phoneme tokens, offline, through eSpeak NG (the library the demo corpus speaks with).

The ASR task's phone targets. Every sentence is phonemized with its language's eSpeak voice
(:data:`cltm.data.demo.SUPPORTED` maps Common Voice locales to voices); in the demo's
exchangeable-null corpus a clip's voice language differs from its locale, so the functions take
the voice, and :func:`voice_for` gives it for a real release's locale.

Tokens. eSpeak writes one phoneme name per phoneme, and a name may take several characters
(tʃ, dʑ, aʊ, pʲ, aː): the binding asks eSpeak to put a separator between phoneme names, so a
multi-character phone is one token and a metric never splits it. Words become
:data:`~cltm.data.transcripts.WORD_SEPARATOR` tokens, as for character targets. eSpeak writes
the stress marks ˈ ˌ in front of the stressed vowel, inside that phoneme's name: they become
tokens of their own (a stress mark marks the syllable, and kept inside the vowel it would double
the inventory of vowels); length marks ː ˑ stay inside their phone (aː and a contrast in Finnish,
Estonian, German and Dutch). ``fold_marks=True`` drops both kinds, so that, for instance, aː and
a are one target. Language-switch flags such as "(en)", which eSpeak writes where a word is read
with another language's rules, are dropped; the word's phones are kept.

Digits are read as the language's number words (eSpeak speaks them the same way), so phone
targets of a sentence with digits match what the demo corpus says; character targets do not,
which is why ASR on the demo selects digit-free sentences (see docs/asr.md).

Torch-free; eSpeak NG comes from espeakng-loader (GPL-3.0, loaded at run time).
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence

from cltm.data.demo import SUPPORTED, DemoSpec, client_id, voice_locale
from cltm.data.transcripts import WORD_SEPARATOR
from cltm.errors import CltmError

log = logging.getLogger(__name__)

#: Stress marks (primary, secondary): separate tokens, or dropped with fold_marks.
STRESS_MARKS = "ˈˌ"
#: Length marks (long, half-long): part of their phone, or dropped with fold_marks.
LENGTH_MARKS = "ːˑ"

_LANGUAGE_FLAG = re.compile(r"\([A-Za-z][A-Za-z0-9-]*\)")


def voice_for(locale: str) -> str:
    """The eSpeak NG voice for a Common Voice locale; CltmError naming it if it has none."""
    try:
        return SUPPORTED[locale]
    except KeyError:
        raise CltmError(
            f"no eSpeak NG voice for locale {locale!r}, so its sentences cannot be phonemized; "
            "drop it from data.languages (or set data.drop_short_languages: true to drop it "
            f"with a warning). Locales with a voice: {', '.join(sorted(SUPPORTED))}"
        ) from None


def locales_without_voice(locales: Iterable[str]) -> list[str]:
    """The locales of ``locales`` eSpeak NG has no voice for, in their order: the ones a
    phoneme task drops (with a warning) under ``data.drop_short_languages``."""
    return [locale for locale in locales if locale not in SUPPORTED]


def split_phones(clause: str, fold_marks: bool = False) -> list[list[str]]:
    """One clause string of :meth:`cltm.data.espeak.ESpeak.text_to_phonemes` -> its words, each
    a list of phone tokens (see the module docstring for the marks)."""
    from cltm.data.espeak import PHONEME_SEPARATOR

    words: list[list[str]] = []
    for word in _LANGUAGE_FLAG.sub("", clause).split():
        phones: list[str] = []
        for name in word.split(PHONEME_SEPARATOR):
            name = unicodedata.normalize("NFC", name)
            stress = [c for c in name if c in STRESS_MARKS]
            phone = "".join(c for c in name if c not in STRESS_MARKS)
            if fold_marks:
                phone = "".join(c for c in phone if c not in LENGTH_MARKS)
            elif stress:
                phones.extend(stress)
            # eSpeak leaves empty names where a phoneme has no IPA form (a syllable break,
            # a zero-length pause): nothing to hear, nothing to target.
            if phone:
                phones.append(phone)
        if phones:
            words.append(phones)
    return words


def phonemize_words(
    texts: Sequence[str], voice: str, fold_marks: bool = False
) -> list[list[list[str]]]:
    """Each text's words, each a list of phone tokens, as ``voice`` ("es", "ru", ...) reads it.

    Raises CltmError if eSpeak NG has no such voice.
    """
    from cltm.data.espeak import get_engine

    clauses = get_engine().text_to_phonemes([unicodedata.normalize("NFC", t) for t in texts],
                                            voice)
    return [
        [word for clause in text for word in split_phones(clause, fold_marks)]
        for text in clauses
    ]


def phonemize(texts: Sequence[str], voice: str, fold_marks: bool = False) -> list[list[str]]:
    """Each text's phone tokens, words joined by :data:`WORD_SEPARATOR` tokens: the phone
    targets of the ASR task. ``voice`` is the eSpeak voice the clip was spoken with (its
    language's: :func:`voice_for`)."""
    out: list[list[str]] = []
    for words in phonemize_words(texts, voice, fold_marks):
        tokens: list[str] = []
        for word in words:
            if tokens:
                tokens.append(WORD_SEPARATOR)
            tokens.extend(word)
        out.append(tokens)
    return out


def phonemize_locale(
    texts: Sequence[str], locale: str, fold_marks: bool = False
) -> list[list[str]]:
    """:func:`phonemize` with the voice of a Common Voice ``locale`` (CltmError if none)."""
    return phonemize(texts, voice_for(locale), fold_marks)


def demo_speaker_voices(spec: DemoSpec) -> dict[str, str]:
    """client_id -> the eSpeak voice language every speaker of the demo corpus ``spec`` speaks
    with. In the exchangeable-null corpus (``spec.null``) a speaker of one locale speaks another
    language, in that language's script: its sentences are phonemized with that voice, not its
    locale's. The corpus's TSVs do not record the voice; it follows from the spec alone."""
    return {
        client_id(spec.seed, locale, i): SUPPORTED[voice_locale(spec, locale, i)]
        for locale in spec.languages
        for i in range(spec.speakers_per_language)
    }
