"""Transcripts for the ASR task: normalisation, character tokens, and the vocabulary.

Torch-free. A target is a list of tokens: characters (code points of the normalised sentence)
or phones (:mod:`cltm.data.phonemes`); words are separated by :data:`WORD_SEPARATOR` in both.
One :class:`Vocabulary` per target kind, built over every language's transcripts, gives every
run the same head shape (so a seed gives every run the same head initialisation).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cltm.errors import CltmError

#: The word separator token (wav2vec2/HuBERT CTC vocabularies use the same).
WORD_SEPARATOR = "|"
#: Padding, and the CTC blank: index 0.
PAD = "[pad]"
#: Any symbol the vocabulary does not hold (a transcript seen only after it was built).
UNK = "[unk]"
#: Target kinds: one vocabulary and one grid each.
KINDS = ("char", "phone")

_SPECIAL = (PAD, UNK, WORD_SEPARATOR)


def normalize_sentence(text: str) -> str:
    """A Common Voice ``sentence`` as character targets see it.

    NFC, then casefold (ß -> ss, as the reference), then keep letters (L*), combining marks
    (M*), decimal digits (Nd) and spaces; every whitespace run becomes one space, trimmed. Other
    characters (punctuation, symbols, format characters such as ZWNJ) are deleted, not replaced
    by a space, as in the reference (so "don't" -> "dont").

    The reference's normalisation (NFKC, casefold, keep only ``str.isalnum()`` characters and
    spaces) deletes combining marks, because a mark is not alphanumeric: Devanagari vowel signs
    (Mc and Mn) disappear and a sentence loses its vowels. NFC keeps them, and composes Latin
    letter + accent into one code point where Unicode has one::

        >>> s = "नमस्ते दुनिया"                       # "hello world" in Hindi
        >>> normalize_sentence(s) == s                  # every vowel sign and virama kept
        True
        >>> ref = "".join(c for c in unicodedata.normalize("NFKC", s).casefold()
        ...               if c.isalnum() or c.isspace())
        >>> ref                                          # the reference's: signs stripped
        'नमसत दनय'

    NFC, not NFKC: compatibility folding rewrites characters (ligatures, full-width and
    superscript forms) into others that the audio need not say alike; NFC only unifies
    encodings of one character.
    """
    text = unicodedata.normalize("NFC", text).casefold()
    kept: list[str] = []
    for c in unicodedata.normalize("NFC", text):
        category = unicodedata.category(c)
        if c.isspace():
            kept.append(" ")
        elif category[0] in "LM" or category == "Nd":
            kept.append(c)
    return " ".join("".join(kept).split())


def char_tokens(sentence: str) -> list[str]:
    """A raw sentence's character targets: its normalised code points, spaces as
    :data:`WORD_SEPARATOR`."""
    return [WORD_SEPARATOR if c == " " else c for c in normalize_sentence(sentence)]


def has_digit(sentence: str) -> bool:
    """Whether the sentence holds a decimal digit (in any script): eSpeak reads digits as the
    language's number words, which character targets would not match."""
    return any(unicodedata.category(c) == "Nd" for c in sentence)


def words(tokens: Sequence[str], separator: str = WORD_SEPARATOR) -> list[tuple[str, ...]]:
    """Tokens -> words (tuples of tokens), split at ``separator``; empty words (a leading,
    trailing or doubled separator in a hypothesis) do not count."""
    out: list[tuple[str, ...]] = []
    word: list[str] = []
    for token in [*tokens, separator]:
        if token == separator:
            if word:
                out.append(tuple(word))
            word = []
        else:
            word.append(token)
    return out


@dataclass(frozen=True)
class Vocabulary:
    """Index <-> token for one target kind: [pad] (= CTC blank) 0, [unk] 1, "|" 2, then the
    symbols in code-point order."""

    kind: str
    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CltmError(f"unknown target kind {self.kind!r} (one of {', '.join(KINDS)})")
        if tuple(self.symbols[: len(_SPECIAL)]) != _SPECIAL:
            raise CltmError(f"a vocabulary starts with {', '.join(_SPECIAL)}")
        if len(set(self.symbols)) != len(self.symbols):
            raise CltmError("a vocabulary lists a symbol twice")

    @property
    def blank(self) -> int:
        return 0

    @property
    def unk(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.symbols)

    def _index(self) -> dict[str, int]:
        # Rebuilt per call, not cached on the frozen instance: encode runs once per clip.
        return {s: i for i, s in enumerate(self.symbols)}

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Tokens -> indices; a token not in the vocabulary -> [unk]."""
        index = self._index()
        return [index.get(t, self.unk) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Indices -> tokens, [pad] (the blank) dropped. (CTC's collapsing of repeats is the
        decoder's: :func:`cltm.train.ctc.greedy_decode`.)"""
        return [self.symbols[i] for i in ids if i != self.blank]

    def missing(self, token_lists: Iterable[Sequence[str]]) -> set[str]:
        """Tokens of ``token_lists`` the vocabulary lacks (empty: it covers them all)."""
        known = set(self.symbols)
        return {t for tokens in token_lists for t in tokens if t not in known}

    def to_json(self) -> str:
        # Sorted keys, no ASCII escapes, a final newline: the same vocabulary gives the same
        # bytes, so DVC sees no change where there is none.
        return json.dumps({"kind": self.kind, "symbols": list(self.symbols)},
                          ensure_ascii=False, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        return cls(kind=data["kind"], symbols=tuple(data["symbols"]))

    def write(self, path: Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> Vocabulary:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CltmError(f"cannot read the vocabulary {path}: {exc}") from exc


def build_vocabulary(kind: str, token_lists: Iterable[Sequence[str]]) -> Vocabulary:
    """One vocabulary over every language's transcripts (``token_lists``: the targets of every
    clip any run trains or is evaluated on), so that every run has the same head."""
    symbols = {t for tokens in token_lists for t in tokens} - set(_SPECIAL)
    if not symbols:
        raise CltmError(f"no {kind} symbols in the transcripts: cannot build a vocabulary")
    return Vocabulary(kind=kind, symbols=(*_SPECIAL, *sorted(symbols)))
