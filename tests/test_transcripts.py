"""Character targets, the word separator and the vocabulary (torch-free)."""

from __future__ import annotations

import doctest
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from cltm.data import transcripts
from cltm.data.transcripts import (
    PAD,
    UNK,
    WORD_SEPARATOR,
    Vocabulary,
    build_vocabulary,
    char_tokens,
    has_digit,
    normalize_sentence,
    words,
)
from cltm.errors import CltmError

HINDI = "नमस्ते दुनिया, यह एक परीक्षण है।"  # "Hello world, this is a test."


def _reference(text: str) -> str:
    """The reference code's normalisation, for contrast."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(c for c in text if c.isalnum() or c.isspace()).split())


def test_devanagari_keeps_vowel_signs() -> None:
    out = normalize_sentence(HINDI)
    assert out == "नमस्ते दुनिया यह एक परीक्षण है"  # only the comma and the danda go
    marks = [c for c in HINDI if unicodedata.category(c).startswith("M")]
    assert len(marks) > 5 and all(c in out for c in marks)
    # The reference strips every one of them.
    assert not any(unicodedata.category(c).startswith("M") for c in _reference(HINDI))
    assert len(_reference(HINDI)) < len(out)


def test_docstring_example() -> None:
    assert doctest.testmod(transcripts).failed == 0


def test_latin_and_cyrillic() -> None:
    assert normalize_sentence("  Ça  va?\tNo—¡Sí! ") == "ça va nosí"  # deleted, not spaced
    # Decomposed input composes (NFC): e + combining acute is one code point.
    assert normalize_sentence("Cafe\u0301") == "café" and len(normalize_sentence("Cafe\u0301")) == 4
    assert normalize_sentence("Съешь же ещё, 42 булки!") == "съешь же ещё 42 булки"
    assert normalize_sentence("Straße") == "strasse"  # casefold, as the reference


def test_char_tokens() -> None:
    assert char_tokens("Hola, mundo.") == ["h", "o", "l", "a", WORD_SEPARATOR,
                                           "m", "u", "n", "d", "o"]
    assert char_tokens(" ¿?! ") == []


def test_has_digit() -> None:
    assert has_digit("Sáso 983.") and has_digit("१२ कुछ")  # Devanagari digits too
    assert not has_digit("Muli dojez llafe.")


def test_words() -> None:
    assert words(["a", "|", "b", "c"]) == [("a",), ("b", "c")]
    assert words(["|", "a", "|", "|", "b", "|"]) == [("a",), ("b",)]
    assert words([]) == []


def test_vocabulary(tmp_path: Path) -> None:
    targets = [char_tokens(s) for s in ("Hola mundo", "Привет мир", HINDI)]
    vocab = build_vocabulary("char", targets)
    assert vocab.symbols[:3] == (PAD, UNK, WORD_SEPARATOR)
    assert list(vocab.symbols[3:]) == sorted(vocab.symbols[3:])
    assert vocab.missing(targets) == set()  # covers every transcript it was built from
    for tokens in targets:
        ids = vocab.encode(tokens)
        assert 0 not in ids and vocab.decode(ids) == tokens
    assert vocab.encode(["ñ"]) == [vocab.unk] and vocab.missing([["ñ"]]) == {"ñ"}
    vocab.write(tmp_path / "vocab.json")
    assert Vocabulary.read(tmp_path / "vocab.json") == vocab
    assert (tmp_path / "vocab.json").read_text(encoding="utf-8") == vocab.to_json()
    # Same transcripts in another order: same bytes.
    assert build_vocabulary("char", targets[::-1]).to_json() == vocab.to_json()


def test_phone_vocabulary_keeps_phones_whole() -> None:
    vocab = build_vocabulary("phone", [["tʃ", "ˈ", "a", "|", "aː"]])
    assert vocab.symbols == (PAD, UNK, WORD_SEPARATOR, "a", "aː", "tʃ", "ˈ")
    assert vocab.decode(vocab.encode(["tʃ", "aː"])) == ["tʃ", "aː"]


def test_vocabulary_errors(tmp_path: Path) -> None:
    with pytest.raises(CltmError, match="kind"):
        build_vocabulary("word", [["a"]])
    with pytest.raises(CltmError, match="no char symbols"):
        build_vocabulary("char", [[], ["|"]])
    with pytest.raises(CltmError, match="starts with"):
        Vocabulary("char", ("a", PAD, UNK))
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(CltmError, match=r"bad\.json"):
        Vocabulary.read(tmp_path / "bad.json")


def test_targets_import_no_training_stack() -> None:
    # The ASR task's selection and targets run where torch is absent (a stage, a laptop).
    code = ("import sys, cltm.data.transcripts, cltm.data.phonemes\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')\n"
            "       or m.startswith(('cltm.train', 'cltm.analysis'))]\n"
            "print(bad); sys.exit(bool(bad))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
