"""A demo speech corpus in Mozilla Common Voice's on-disk layout, spoken by eSpeak NG.

The pipeline measures how well gender recognition and speaker verification transfer from one
language to another. Its offline demo needs data that (a) a Common Voice reader accepts exactly
like a real release, (b) is real speech in real languages, with speakers of both genders, and
(c) has a *known* cross-lingual structure, so the demo can show the analysis recovering it.

(c) is planted on purpose, in three parts that ``family_trait_strength`` scales together (0 turns
every one off exactly):

- a recording trait shared by a family (a spectral colouring and a faint stationary background,
  derived only from the family's name): languages of one family look alike to a model;
- a shift of the cues gender recognition uses, along two axes: every voice of a family is
  warped in frequency by the family's own number of semitones (up to ``gender_shift_semitones``
  at strength 1), pitch and formants together, and its eSpeak pitch setting (F0 alone) is moved
  by up to ``gender_pitch_offset`` (growing with strength only up to ``PITCH_ROOM``, the room
  eSpeak's 0-100 leaves every speaker: clipping at the ends would give most of a family's
  speakers of one gender the same pitch, and take a speaker cue away). The families sit on the
  corners of a square in those two axes (``family_cues``), so the boundary between the genders
  sits elsewhere in each family, and a donor of any other family teaches a boundary that is off
  for the target along at least one axis by the full span;
- the axes along which speakers differ: every speaker carries a spectral colouring of its own,
  ``speaker_axes_db`` of spread over ``len(SPEAKER_AXES)`` smooth bands; within a family the
  spread concentrates on the family's two bands (their variance ``1 + strength ·
  speaker_axes_focus`` times the others', the total kept), so a speaker-ID model trained on one
  family learns to listen where that family's speakers differ.

A task can only use a planting that acts on its own cue; a colouring alone may or may not make
same-family donors more useful. ``null=True`` removes every difference between languages but
their labels, which is the control where no transfer structure should appear: every locale's
speakers of one split and gender speak the corpus's languages in turn (``voice_locale``), so
every locale's training pool holds the same mixture of voices.

Nothing is copied from a text corpus: sentences are random numbers (eSpeak reads them in each
language's own words) and pseudo-words built from each language's letters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from cltm.config import MAX_STRENGTH
from cltm.errors import CltmError

log = logging.getLogger(__name__)

#: Sample rate of eSpeak NG's output (where all the signal processing here happens).
SYNTH_RATE = 22050
#: Common Voice releases are MP3 at 48 kHz, mono.
CV_RATE = 48000

#: Common Voice locale -> eSpeak NG voice. Each one was checked against espeak-ng-data as
#: installed by espeakng-loader (the voice exists and speaks the sample text of its script).
#: Not supported (eSpeak NG has no voice): ab, ckb, cnh, dv, fy-NL, gl, kab, lg, mhr, mn, rw.
SUPPORTED: dict[str, str] = {
    # Romance
    "an": "an", "ca": "ca", "es": "es", "fr": "fr", "it": "it", "pt": "pt-BR", "ro": "ro",
    # Germanic
    "af": "af", "da": "da", "de": "de", "en": "en", "is": "is", "nl": "nl", "sv-SE": "sv",
    # Slavic
    "be": "be", "bg": "bg", "cs": "cs", "mk": "mk", "pl": "pl", "ru": "ru", "sk": "sk",
    "sl": "sl", "sr": "sr", "uk": "uk",
    # Baltic
    "lt": "lt", "ltg": "ltg", "lv": "lv",
    # Celtic
    "cy": "cy", "ga-IE": "ga",
    # Other Indo-European branches
    "el": "el", "hy-AM": "hy", "sq": "sq",
    # Indo-Aryan
    "as": "as", "bn": "bn", "hi": "hi", "mr": "mr", "ne-NP": "ne", "or": "or", "pa-IN": "pa",
    "ur": "ur",
    # Iranian
    "fa": "fa", "kmr": "ku",
    # Turkic
    "az": "az", "ba": "ba", "cv": "cv", "kk": "kk", "ky": "ky", "tk": "tk", "tr": "tr",
    "tt": "tt", "ug": "ug", "uz": "uz",
    # Uralic
    "et": "et", "fi": "fi", "hu": "hu",
    # Semitic
    "am": "am", "ar": "ar", "he": "he", "mt": "mt", "ti": "ti",
    # Isolates and single-genus families in Common Voice
    "eu": "eu", "ka": "ka", "ja": "ja", "ko": "ko",
    # Dravidian
    "ml": "ml", "ta": "ta", "te": "te",
    # Sinitic (Taiwan's Common Voice data is Mandarin; Hong Kong's is Cantonese)
    "yue": "yue", "zh-CN": "cmn", "zh-HK": "yue", "zh-TW": "cmn",
    # South-East Asia, Africa, the Americas
    "my": "my", "th": "th", "vi": "vi", "id": "id", "sw": "sw", "gn": "gn", "quy": "qu",
    # Constructed
    "eo": "eo", "ia": "ia",
}  # fmt: skip

#: The family planted for each supported locale, at about the genus level (so that a demo of
#: six languages can hold several languages of one family).
FAMILIES: dict[str, str] = {
    **dict.fromkeys(["an", "ca", "es", "fr", "it", "pt", "ro"], "Romance"),
    **dict.fromkeys(["af", "da", "de", "en", "is", "nl", "sv-SE"], "Germanic"),
    **dict.fromkeys(["be", "bg", "cs", "mk", "pl", "ru", "sk", "sl", "sr", "uk"], "Slavic"),
    **dict.fromkeys(["lt", "ltg", "lv"], "Baltic"),
    **dict.fromkeys(["cy", "ga-IE"], "Celtic"),
    "el": "Hellenic",
    "hy-AM": "Armenian",
    "sq": "Albanian",
    **dict.fromkeys(["as", "bn", "hi", "mr", "ne-NP", "or", "pa-IN", "ur"], "Indo-Aryan"),
    **dict.fromkeys(["fa", "kmr"], "Iranian"),
    **dict.fromkeys(["az", "ba", "cv", "kk", "ky", "tk", "tr", "tt", "ug", "uz"], "Turkic"),
    **dict.fromkeys(["et", "fi", "hu"], "Uralic"),
    **dict.fromkeys(["am", "ar", "he", "mt", "ti"], "Semitic"),
    "eu": "Basque",
    "ka": "Kartvelian",
    "ja": "Japonic",
    "ko": "Koreanic",
    **dict.fromkeys(["ml", "ta", "te"], "Dravidian"),
    **dict.fromkeys(["yue", "zh-CN", "zh-HK", "zh-TW"], "Sinitic"),
    "my": "Tibeto-Burman",
    "th": "Tai",
    "vi": "Vietic",
    "id": "Malayo-Polynesian",
    "sw": "Bantu",
    "gn": "Tupian",
    "quy": "Quechuan",
    **dict.fromkeys(["eo", "ia"], "Constructed"),
}

#: Two languages each from Romance, Germanic and Slavic: the smallest set where a family
#: structure can show (within-family pairs beside across-family pairs).
DEFAULT_LANGUAGES = ["es", "it", "de", "nl", "ru", "pl"]

#: eSpeak NG variants whose files declare the gender (checked by F0: the male ones sit at about
#: 70-115 Hz and the female ones at about 150-280 Hz over the pitch settings used below).
MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "antonio", "Denis", "michel", "miguel", "travis", "victor",
)  # fmt: skip
FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "anika", "belinda", "linda", "steph",
)  # fmt: skip

#: Columns of Common Voice's per-split TSV files (releases since 17.0), in order.
TSV_COLUMNS = [
    "client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes",
    "down_votes", "age", "gender", "accents", "variant", "locale", "segment",
]  # fmt: skip
MALE, FEMALE = "male_masculine", "female_feminine"
_AGES = ("teens", "twenties", "thirties", "fourties", "fifties", "sixties")  # CV's spelling
_AGE_WEIGHTS = (0.10, 0.30, 0.25, 0.15, 0.12, 0.08)
_README_MARK = "cltm demo corpus"


@dataclass(frozen=True)
class DemoSpec:
    """What to generate. Per language: ``speakers_per_language`` speakers (half male, half
    female), each with ``clips_per_speaker`` clips; ``dev_speakers`` and ``test_speakers`` of
    them go to dev and test, the rest to train (speaker-disjoint, gender-balanced). Every field
    is params' (the demo block; `null` is demo.null_control)."""

    languages: tuple[str, ...]
    speakers_per_language: int
    clips_per_speaker: int
    dev_speakers: int
    test_speakers: int
    family_trait_strength: float
    null: bool
    seed: int
    clip_seconds: float
    # The planting the tasks use, all scaled by family_trait_strength (see the module doc).
    gender_shift_semitones: float
    gender_pitch_offset: float
    speaker_axes_db: float
    speaker_axes_focus: float
    # Not a planting: each speaker's own frequency warp, N(0, this²) semitones, at every
    # strength and in the null control alike, so that the genders' pitch and formant ranges
    # overlap as real voices do and gender recognition is not solved by any one clip.
    speaker_warp_semitones: float

    def __post_init__(self) -> None:
        # Accept any sequence (a list from a config file) but keep the spec hashable.
        object.__setattr__(self, "languages", tuple(self.languages))


# --------------------------------------------------------------------------------------------
# Deterministic seeding


def stable_int(text: str) -> int:
    """A 64-bit integer from ``text`` that is the same in every process and run (unlike
    Python's salted ``hash``): seeds and traits must not change between runs."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def _speaker_rng(seed: int, locale: str, speaker: int) -> np.random.Generator:
    return np.random.default_rng([seed, stable_int(locale), speaker])


def _clip_rng(seed: int, locale: str, speaker: int, clip: int) -> np.random.Generator:
    # A separate stream per clip, so a clip does not depend on how many random numbers its
    # predecessors happened to draw.
    return np.random.default_rng([seed, stable_int(locale), speaker, 1_000 + clip])


def client_id(seed: int, locale: str, speaker: int) -> str:
    """A 128-hex-digit id like Common Voice's (a SHA-512 hex digest), stable per speaker."""
    return hashlib.sha512(f"cltm-demo/{seed}/{locale}/{speaker}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Text: random numbers and pseudo-words in each language's own script


@dataclass(frozen=True)
class _Script:
    """How to make pseudo-words: a syllable is an onset followed by a nucleus; a word is 1-3
    syllables and, for scripts with ``codas``, sometimes a final consonant."""

    onsets: tuple[str, ...] = ()
    nuclei: tuple[str, ...] = ("",)
    codas: tuple[str, ...] = ()
    numbers: bool = True  # False where eSpeak skips digits (Chuvash)
    sep: str = " "
    stop: str = "."
    min_syllables: int = 1
    max_syllables: int = 3
    capitals: bool = True  # False for scripts whose capitals eSpeak may not know (Georgian)


def _cv(consonants: str, vowels: str, coda: bool = True, **kw: object) -> _Script:
    """An alphabet: space-separated consonant and vowel graphemes."""
    cons = tuple(consonants.split())
    return _Script(cons, tuple(vowels.split()), cons if coda else (), **kw)  # type: ignore[arg-type]


def _abugida(consonants: str, vowel_signs: str, **kw: object) -> _Script:
    """A Brahmic script: a consonant alone carries the inherent vowel, or takes a vowel sign."""
    return _Script(tuple(consonants.split()), ("", *vowel_signs.split()), **kw)  # type: ignore[arg-type]


def _abjad(consonants: str, long_vowels: str, **kw: object) -> _Script:
    """Arabic/Hebrew scripts: consonants, some followed by a long-vowel letter."""
    # A lone consonant letter would be spelt out, so words have at least two syllables.
    nuclei = ("", "", *long_vowels.split())
    return _Script(tuple(consonants.split()), nuclei, min_syllables=2, **kw)  # type: ignore[arg-type]


def _syllabary(syllables: Iterable[str], **kw: object) -> _Script:
    return _Script(tuple(syllables), ("",), **kw)  # type: ignore[arg-type]


def _hangul() -> tuple[str, ...]:
    # Hangul syllables are composed arithmetically: 0xAC00 + (lead * 21 + vowel) * 28 + tail.
    leads = (0, 2, 3, 5, 6, 7, 9, 11, 12, 14, 15, 16, 17, 18)
    vowels = (0, 4, 5, 8, 13, 18, 20)
    return tuple(chr(0xAC00 + (lead * 21 + v) * 28) for lead in leads for v in vowels)


def _ethiopic() -> tuple[str, ...]:
    # Each Ethiopic consonant is a row of 8 code points; the first 7 are its vowel orders.
    rows = (0x1208, 0x1218, 0x1228, 0x1230, 0x1238, 0x1240, 0x1260, 0x1270, 0x1290, 0x12A8,
            0x12C8, 0x12D8, 0x12E8, 0x12F0, 0x1300, 0x1308, 0x1320, 0x1348)  # fmt: skip
    return tuple(chr(row + order) for row in rows for order in range(7))


# Characters that are the same in simplified and traditional writing and common in Mandarin
# and Cantonese alike, so one table serves zh-CN, zh-TW, zh-HK and yue.
_HANZI = "一二三四五六七八九十人大小中天日月水火山木口手心目子女上下生出工土王田石文方正年本白自色"
_KANA = "かきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわ"
_DEVANAGARI = _abugida(
    "क ख ग घ च छ ज झ ट ठ ड ढ ण त थ द ध न प फ ब भ म य र ल व श ष स ह",
    "ा ि ी ु ू े ै ो ौ", stop="।",
)  # fmt: skip
_BENGALI = _abugida(
    "ক খ গ ঘ চ ছ জ ঝ ট ঠ ড ঢ ণ ত থ দ ধ ন প ফ ব ভ ম য ল শ ষ স হ", "া ি ী ু ূ ে ৈ ো ৌ", stop="।"
)
_CYR_RU = _cv("б в г д ж з к л м н п р с т ф х ц ч ш щ", "а е и о у ы я ю э")

_SCRIPTS: dict[str, _Script] = {
    "an": _cv("b c d f g ch l ll m n ñ p r s t x z", "a e i o u"),
    "ca": _cv("b c d f g j l ll m n ny p r s t v x", "a e i o u à è é í ò ó ú"),
    "es": _cv("b c d f g j l ll m n ñ p r s t v ch z", "a e i o u á é í ó ú"),
    "fr": _cv("b c d f g j l m n p r s t v ch", "a e i o u é è ou ai on an"),
    "it": _cv("b c d f g l m n p r s t v z", "a e i o u à è ò"),
    "pt": _cv("b c d f g j l lh m n nh p r s t v x z", "a e i o u á é ê ã õ ão"),
    "ro": _cv("b c d f g j l m n p r s ș t ț v z", "a e i o u ă â î"),
    "af": _cv("b d f g h k l m n p r s t v w", "a e i o u ê ie oe"),
    "da": _cv("b d f g h j k l m n p r s t v", "a e i o u y æ ø å"),
    "de": _cv("b d f g h k l m n p r s t w z sch", "a e i o u ä ö ü ei au"),
    "en": _cv("b d f g h k l m n p r s t v w", "a e i o u ee oo ay"),
    "is": _cv("b d f g h j k l m n p r s t v ð þ", "a e i o u á é í ó ú ö æ"),
    "nl": _cv("b d f g h j k l m n p r s t v w z", "a e i o u aa ee oo ij ui"),
    "sv-SE": _cv("b d f g h j k l m n p r s t v", "a e i o u y å ä ö"),
    "be": _cv("б в г д ж з к л м н п р с т ў ф х ц ч ш", "а е і о у ы э ю я"),
    "bg": _cv("б в г д ж з к л м н п р с т ф х ц ч ш щ", "а е и о у ъ ю я"),
    "cs": _cv("b c d f g h j k l m n p r s t v z č ř š ž", "a e i o u y á é í ů ý"),
    "mk": _cv("б в г д ѓ ж з ѕ ј к л љ м н њ п р с т ќ ф х ц ч џ ш", "а е и о у"),
    "pl": _cv("b c d f g h j k l ł m n p r s t w z ś ż sz cz", "a e i o u y ę ą ó"),
    "ru": _CYR_RU,
    "sk": _cv("b c d f g h j k l ľ m n p r s t v z č š ž", "a e i o u y á é í ó ú ä"),
    "sl": _cv("b c d f g h j k l m n p r s t v z č š ž", "a e i o u"),
    "sr": _cv("б в г д ђ ж з ј к л љ м н њ п р с т ћ ф х ц ч џ ш", "а е и о у"),
    "uk": _cv("б в г ґ д ж з к л м н п р с т ф х ц ч ш щ", "а е и і ї о у є ю я"),
    "lt": _cv("b c d f g h j k l m n p r s t v z č š ž", "a e i o u y ą ę ė į ų ū"),
    "ltg": _cv("b c d f g h j k l m n p r s t v z č š ž", "a e i o u y ā ē ī ō ū"),
    "lv": _cv("b c d f g h j k l m n p r s t v z č š ž ķ ļ ņ ģ", "a e i o u ā ē ī ū"),
    "cy": _cv("b c d dd f ff g h l ll m n p r s t th", "a e i o u w y"),
    "ga-IE": _cv("b c d f g h l m n p r s t", "a e i o u á é í ó ú"),
    "el": _cv("β γ δ ζ θ κ λ μ ν ξ π ρ σ τ φ χ", "α ε η ι ο υ ω ά έ ί ό", coda=False),
    "hy-AM": _cv("բ գ դ զ թ ժ լ խ ծ կ հ ձ ղ ճ մ յ ն շ չ պ ջ ռ ս վ տ ր ց փ ք ֆ", "ա ե է ը ի ո ու"),
    "sq": _cv(
        "b c ç d dh f g gj h j k l ll m n nj p q r rr s sh t th v x xh z zh", "a e ë i o u y"
    ),
    "as": _BENGALI,
    "bn": _BENGALI,
    "hi": _DEVANAGARI,
    "mr": _DEVANAGARI,
    "ne-NP": _DEVANAGARI,
    "or": _abugida(
        "କ ଖ ଗ ଘ ଚ ଛ ଜ ଝ ଟ ଠ ଡ ଢ ଣ ତ ଥ ଦ ଧ ନ ପ ଫ ବ ଭ ମ ଯ ର ଲ ଶ ଷ ସ ହ", "ା ି ୀ ୁ ୂ େ ୈ ୋ ୌ", stop="।"
    ),
    "pa-IN": _abugida(
        "ਕ ਖ ਗ ਘ ਚ ਛ ਜ ਝ ਟ ਠ ਡ ਢ ਣ ਤ ਥ ਦ ਧ ਨ ਪ ਫ ਬ ਭ ਮ ਯ ਰ ਲ ਵ ਸ ਹ", "ਾ ਿ ੀ ੁ ੂ ੇ ੈ ੋ ੌ", stop="।"
    ),
    "ur": _abjad("ب پ ت ٹ ج چ د ڈ ر ز س ش ک گ ل م ن", "ا و ی", stop="۔"),
    "fa": _abjad("ب پ ت ج چ خ د ر ز س ش ف ک گ ل م ن", "ا و ی"),
    "kmr": _cv("b c ç d f g h j k l m n p q r s ş t v w x y z", "a e ê i î o u û"),
    "az": _cv("b c ç d f g ğ h j k l m n p q r s ş t v x y z", "a e ə ı i o ö u ü"),
    "ba": _cv("б г ғ д ҙ ж з й к ҡ л м н ң п р с ҫ т х һ ш", "а ә е и о ө у ү ы"),
    # eSpeak's Chuvash voice does not read digits, so its text is pseudo-words only.
    "cv": _cv("б в г д ж з й к л м н п р с ҫ т х ц ч ш", "а ӑ е ӗ и о у ӳ ы", numbers=False),
    "kk": _cv("б г ғ д ж з й к қ л м н ң п р с т ш", "а ә е и о ө ұ ү ы і"),
    "ky": _cv("б г д ж з й к л м н ң п р с т ш", "а е и о ө у ү ы"),
    "tk": _cv("b ç d f g h j k l m n p r s ş t w ý z ž", "a ä e i ö o u ü y"),
    "tr": _cv("b c ç d f g ğ h j k l m n p r s ş t v y z", "a e ı i o ö u ü"),
    "tt": _cv("б в г д ж з й к л м н ң п р с т х ч ш һ", "а ә е и о ө у ү ы"),
    "ug": _abjad("ب پ ت ج چ خ د ر ز س ش غ ف ق ك گ ڭ ل م ن ھ", "ا ە و ۇ ۆ ۈ ې ى"),
    "uz": _cv("b d f g h j k l m n p q r s t v x y z sh ch", "a e i o u oʻ"),
    "et": _cv("b d f g h j k l m n p r s t v", "a e i o u õ ä ö ü"),
    "fi": _cv("d h j k l m n p r s t v", "a e i o u y ä ö"),
    "hu": _cv("b c d f g h j k l m n p r s t v z sz zs gy ny ty", "a e i o u á é í ó ö ő ú ü ű"),
    "am": _syllabary(_ethiopic()),
    "ti": _syllabary(_ethiopic()),
    "ar": _abjad("ب ت ث ج ح د ذ ر ز س ش ص ط ع ف ق ك ل م ن ه", "ا و ي"),
    "he": _abjad("ב ג ד ה ז כ ל מ נ ס ע פ צ ק ר ש ת", "ו י"),
    "mt": _cv("b ċ d f ġ g għ h ħ j k l m n p q r s t v w x ż z", "a e i o u ie"),
    "eu": _cv("b d f g h j k l m n p r s t x z tz tx ts", "a e i o u"),
    "ka": _cv(
        "ბ გ დ ვ ზ თ კ ლ მ ნ პ ჟ რ ს ტ ფ ქ ღ ყ შ ჩ ც ძ წ ჭ ხ ჯ ჰ",
        "ა ე ი ო უ",
        coda=False,
        capitals=False,
    ),
    "ja": _syllabary(_KANA, sep="", stop="。"),
    "ko": _syllabary(_hangul()),
    "ml": _abugida(
        "ക ഖ ഗ ഘ ച ഛ ജ ഝ ട ഠ ഡ ഢ ണ ത ഥ ദ ധ ന പ ഫ ബ ഭ മ യ ര ല വ ശ ഷ സ ഹ", "ാ ി ീ ു ൂ െ േ ൈ ൊ ോ"
    ),
    "ta": _abugida("க ங ச ஞ ட ண த ந ப ம ய ர ல வ ழ ள ற ன", "ா ி ீ ு ூ ெ ே ை ொ ோ"),
    "te": _abugida("క ఖ గ ఘ చ ఛ జ ఝ ట ఠ డ ఢ ణ త థ ద ధ న ప ఫ బ భ మ య ర ల వ శ ష స హ", "ా ి ీ ు ూ ె ే ై ొ ో"),
    "yue": _syllabary(_HANZI, sep="", stop="。", max_syllables=2),
    "zh-CN": _syllabary(_HANZI, sep="", stop="。", max_syllables=2),
    "zh-HK": _syllabary(_HANZI, sep="", stop="。", max_syllables=2),
    "zh-TW": _syllabary(_HANZI, sep="", stop="。", max_syllables=2),
    "my": _abugida(
        "က ခ ဂ င စ ဆ ဇ ည တ ထ ဒ န ပ ဖ ဗ ဘ မ ယ ရ လ ဝ သ ဟ", "ာ ိ ီ ု ူ", stop="။", max_syllables=2
    ),
    "th": _abugida("ก ข ค ง จ ช ซ ด ต ท น บ ป พ ฟ ม ย ร ล ว ส ห อ", "า ี ู", max_syllables=2),
    "vi": _cv(
        "b c d đ g h k l m n p r s t v x",
        "a á à ả ã ạ e é è ê ế ề i í ì o ó ò ô ố ồ ơ ớ u ú ù ư ứ y",
        coda=False,
        max_syllables=1,
    ),
    "id": _cv("b c d f g h j k l m n p r s t w y", "a e i o u"),
    "sw": _cv("b ch d f g h j k l m n p r s sh t v w y z", "a e i o u", coda=False),
    "gn": _cv("ch h j k m mb n nd ng p r s t v", "a e i o u y ã ẽ ĩ õ ũ ỹ", coda=False),
    "quy": _cv("ch h k l ll m n ñ p q r s t w y", "a i u"),
    "eo": _cv("b c ĉ d f g ĝ h ĵ k l m n p r s ŝ t v z", "a e i o u aŭ"),
    "ia": _cv("b c d f g l m n p r s t v", "a e i o u"),
}

_NUMBER_DIGITS = (1, 2, 3)
_NUMBER_DIGIT_P = (0.3, 0.4, 0.3)


def _tokens(script: _Script, rng: np.random.Generator, n: int) -> list[str]:
    """``n`` random tokens: numbers (read out in the language's words) and pseudo-words."""
    tokens: list[str] = []
    for _ in range(n):
        if script.numbers and (not script.onsets or rng.random() < 0.35):
            digits = int(rng.choice(_NUMBER_DIGITS, p=_NUMBER_DIGIT_P))
            low = 10 ** (digits - 1) if digits > 1 else 0
            tokens.append(str(int(rng.integers(low, 10**digits))))
            continue
        syllables = int(rng.integers(script.min_syllables, script.max_syllables + 1))
        word = "".join(
            script.onsets[rng.integers(len(script.onsets))]
            + script.nuclei[rng.integers(len(script.nuclei))]
            for _ in range(syllables)
        )
        if script.codas and rng.random() < 0.3:
            word += script.codas[rng.integers(len(script.codas))]
        tokens.append(word)
    return tokens


def _sentence(script: _Script, tokens: Sequence[str]) -> str:
    # Scripts written without spaces still keep one around numbers: adjacent numbers would
    # otherwise merge into one.
    parts: list[str] = []
    for token in tokens:
        if parts:
            numeric = token.isdigit() or parts[-1][-1].isdigit()
            parts.append(" " if numeric and not script.sep else script.sep)
        parts.append(token)
    text = "".join(parts)
    # Capitalised like a written sentence, except an initial i/ı: Python's "I" would be the
    # capital of the other letter in Turkish and Azerbaijani.
    if script.capitals and text[:1] not in ("i", "ı"):
        text = text[:1].upper() + text[1:]
    return text + script.stop


# --------------------------------------------------------------------------------------------
# Speakers and the recording channel


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an eSpeak voice plus a recording channel, drawn from the seed."""

    index: int
    gender: str  # MALE or FEMALE
    age: str
    voice: str  # eSpeak "language+variant"
    rate: int  # words per minute
    pitch: int  # eSpeak 0-100, relative to the variant's own pitch
    pitch_range: int
    mic_taps: tuple[float, ...]  # microphone colouring (a short FIR)
    rt60: float  # room reverberation time, s
    drr_db: float  # direct-to-reverberant ratio
    snr_db: float  # speech to the speaker's own background noise
    noise_slope: float  # noise spectrum ~ f^-slope (0 white, 1 pink)


#: eSpeak pitch settings (0-100) of the demo's speakers. The setting shifts the variant's own
#: range; these intervals keep every male F0 (about 75-115 Hz) below every female one (about
#: 150-270 Hz), and leave PITCH_ROOM settings on either side for a family's pitch offset.
MALE_PITCH, FEMALE_PITCH = (20, 50), (40, 75)
PITCH_ROOM = min(MALE_PITCH[0], FEMALE_PITCH[0], 100 - MALE_PITCH[1], 100 - FEMALE_PITCH[1])


def family_pitch_offset(spec: DemoSpec, pitch_cue: float) -> int:
    """The eSpeak pitch setting a family's ``pitch_cue`` (in [-1, 1]) adds to its speakers':
    ``strength · gender_pitch_offset``, at most PITCH_ROOM, so that no speaker is clipped."""
    return round(pitch_cue * min(spec.family_trait_strength * spec.gender_pitch_offset,
                                 PITCH_ROOM))


def make_speaker(seed: int, locale: str, index: int, voice_language: str) -> Speaker:
    """Speaker ``index`` of ``locale``: even indices are male, odd ones female, so any prefix
    of the speakers is gender-balanced. Everything else comes from the speaker's own RNG."""
    rng = _speaker_rng(seed, locale, index)
    male = index % 2 == 0
    variants = MALE_VARIANTS if male else FEMALE_VARIANTS
    variant = variants[int(rng.integers(len(variants)))]
    low, high = MALE_PITCH if male else FEMALE_PITCH
    pitch = int(rng.integers(low, high + 1))
    taps = np.concatenate([[1.0], rng.normal(0.0, 0.3, 11) * 0.6 ** np.arange(1, 12)])
    tilt = rng.uniform(-0.5, 0.6)  # >0 brightens (a difference), <0 darkens (a sum)
    taps = np.convolve(taps, [1.0, -tilt])
    taps /= np.sqrt(np.sum(taps**2))
    return Speaker(
        index=index,
        gender=MALE if male else FEMALE,
        age=str(rng.choice(_AGES, p=_AGE_WEIGHTS)),
        voice=f"{voice_language}+{variant}",
        rate=int(rng.integers(140, 201)),
        pitch=pitch,
        pitch_range=int(rng.integers(30, 81)),
        mic_taps=tuple(float(t) for t in taps),
        rt60=float(rng.uniform(0.1, 0.45)),
        drr_db=float(rng.uniform(4.0, 14.0)),
        snr_db=float(rng.uniform(20.0, 40.0)),
        noise_slope=float(rng.uniform(0.0, 1.5)),
    )


def _fft_convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Full linear convolution through the FFT (room responses are thousands of taps long)."""
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[:n]
    return y


def _coloured_noise(rng: np.random.Generator, n: int, slope: float) -> np.ndarray:
    """Unit-RMS noise whose power spectrum falls as f^-slope."""
    size = 1 << (n - 1).bit_length()  # a power of two: FFTs of odd lengths are far slower
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1.0 / SYNTH_RATE)
    spectrum *= np.maximum(freqs, 20.0) ** (-slope / 2.0)
    noise = np.fft.irfft(spectrum, size)[:n]
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _room_response(speaker: Speaker, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: the direct sound, then an exponentially decaying noise tail (the
    classic statistical model of late reverberation)."""
    length = int(speaker.rt60 * SYNTH_RATE)
    predelay = int(rng.integers(int(0.002 * SYNTH_RATE), int(0.010 * SYNTH_RATE)))
    t = np.arange(length) / SYNTH_RATE
    tail = rng.standard_normal(length) * np.exp(-6.91 * t / speaker.rt60)
    tail *= 10 ** (-speaker.drr_db / 20) / (np.sqrt(np.sum(tail**2)) + 1e-12)
    ir = np.zeros(predelay + length)
    ir[0] = 1.0
    ir[predelay:] += tail
    return ir


# --------------------------------------------------------------------------------------------
# The planted family trait


@dataclass(frozen=True)
class FamilyTrait:
    """A recording trait shared by every language of a family: a smooth spectral colouring
    (a tilt plus a few resonances) and a faint stationary background (a hum with harmonics and
    coloured noise). Levels are relative to the speech RMS, at strength 1."""

    family: str
    tilt_db_per_octave: float
    peak_hz: tuple[float, ...]
    peak_db: tuple[float, ...]
    peak_octaves: tuple[float, ...]
    hum_hz: float
    hum_harmonic_db: tuple[float, ...]  # level of harmonic k+1 relative to the fundamental
    hum_db: float
    noise_slope: float
    noise_db: float

    def gain_db(self, freqs_hz: np.ndarray) -> np.ndarray:
        """The colouring's gain at ``freqs_hz`` (dB, strength 1)."""
        octaves = np.log2(np.maximum(freqs_hz, 100.0) / 1000.0)
        gain = self.tilt_db_per_octave * np.clip(octaves, -3.0, 3.0)
        for hz, db, width in zip(self.peak_hz, self.peak_db, self.peak_octaves, strict=True):
            gain = gain + db * np.exp(-0.5 * ((octaves - np.log2(hz / 1000.0)) / width) ** 2)
        return gain


@cache
def family_trait(family: str) -> FamilyTrait:
    """The trait of ``family``, a function of its name only: the same in every run, whichever
    languages are generated and in whatever order."""
    rng = np.random.default_rng(stable_int(f"cltm-demo-family/{family}"))
    n_peaks = int(rng.integers(2, 4))
    return FamilyTrait(
        family=family,
        tilt_db_per_octave=float(rng.uniform(-4.0, 4.0)),
        peak_hz=tuple(float(f) for f in np.exp(rng.uniform(np.log(150), np.log(7000), n_peaks))),
        peak_db=tuple(float(g) for g in rng.choice([-1, 1], n_peaks) * rng.uniform(8, 15, n_peaks)),
        peak_octaves=tuple(float(w) for w in rng.uniform(0.4, 1.2, n_peaks)),
        hum_hz=float(rng.uniform(50.0, 160.0)),
        hum_harmonic_db=tuple(float(g) for g in -rng.uniform(4.0, 16.0, 3)),
        hum_db=float(rng.uniform(-24.0, -16.0)),
        noise_slope=float(rng.uniform(0.0, 2.0)),
        noise_db=float(rng.uniform(-28.0, -20.0)),
    )


def family_filter(trait: FamilyTrait, strength: float = 1.0, n_taps: int = 257) -> np.ndarray:
    """The trait's colouring as a linear-phase FIR at 22050 Hz (gains in dB scaled by
    ``strength``; strength 0 gives a unit impulse)."""
    n_fft = 2 * (n_taps - 1)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SYNTH_RATE)
    magnitude = 10 ** (strength * trait.gain_db(freqs) / 20)
    # Zero-phase response -> centre it -> window it to n_taps.
    impulse = np.roll(np.fft.irfft(magnitude, n_fft), n_taps // 2)[:n_taps]
    return impulse * np.hanning(n_taps + 2)[1:-1]


def apply_family_trait(
    speech: np.ndarray, trait: FamilyTrait, strength: float, rng: np.random.Generator
) -> np.ndarray:
    """Colour ``speech`` (22050 Hz, unit RMS) with ``trait`` and add its background.
    Strength 0 returns the input untouched: the switch must be exact, not merely small."""
    if strength == 0:
        return speech
    taps = family_filter(trait, strength)
    delay = len(taps) // 2
    y = _fft_convolve(speech, taps)[delay : delay + len(speech)]
    n = len(y)
    t = np.arange(n) / SYNTH_RATE
    hum = np.sin(2 * np.pi * trait.hum_hz * t + rng.uniform(0, 2 * np.pi))
    for k, db in enumerate(trait.hum_harmonic_db, start=2):
        phase = rng.uniform(0, 2 * np.pi)
        hum += 10 ** (db / 20) * np.sin(2 * np.pi * k * trait.hum_hz * t + phase)
    hum /= np.sqrt(np.mean(hum**2)) + 1e-12
    noise = _coloured_noise(rng, n, trait.noise_slope)
    y = y + strength * (10 ** (trait.hum_db / 20) * hum + 10 ** (trait.noise_db / 20) * noise)
    return y


# --------------------------------------------------------------------------------------------
# One clip


# --------------------------------------------------------------------------------------------
# The planted task cues: a family's gender boundary, a family's speaker axes

#: Centres (Hz) of the bands along which demo speakers differ; Gaussian in log frequency.
#: Above the voice's fundamental and first formant, so as not to colour the bands that carry
#: the pitch gender recognition uses (a precaution: the probes in docs/findings.md did not
#: show that bands from 250 Hz hurt gender more).
SPEAKER_AXES = (1000.0, 1300.0, 1700.0, 2200.0, 2900.0, 3700.0, 4900.0, 6300.0)
SPEAKER_AXIS_OCTAVES = 0.18


def family_cues(
    languages: Sequence[str],
) -> dict[str, tuple[tuple[float, float], tuple[int, int]]]:
    """Per planted family of ``languages``: its gender cue at strength 1, (warp, pitch) as
    fractions in [-1, 1] of gender_shift_semitones and gender_pitch_offset, and the two
    SPEAKER_AXES its speakers differ along most.

    Spread by construction, in the order the families first appear: the gender cues at evenly
    spaced angles, projected onto the square [-1, 1]² (four families: its corners, so any two
    differ by the full span along at least one axis; on a line, as one axis gave, the middle
    families stood closer to their neighbours than the genders' ranges are apart), and axis
    pairs disjoint for up to four families (one low band, one high band each). A family's cues
    therefore depend on which families the corpus holds, not on its name alone.
    """
    families = list(dict.fromkeys(FAMILIES[lang] for lang in languages))
    n, half = len(families), len(SPEAKER_AXES) // 2
    cues = {}
    for i, family in enumerate(families):
        angle = np.pi / 4 + 2 * np.pi * i / n
        point = np.array([np.cos(angle), np.sin(angle)])
        cue = (0.0, 0.0) if n == 1 else tuple(
            float(c) for c in np.round(point / np.abs(point).max(), 12))
        cues[family] = (cue, (i % half, half + (i + 1) % half))
    return cues


def speaker_axes_gain(spec: DemoSpec, locale: str, index: int) -> np.ndarray:
    """The speaker's gain (dB) along each of SPEAKER_AXES: N(0, spread²), the spread
    concentrated on the family's axes by ``family_trait_strength · speaker_axes_focus``."""
    rng = np.random.default_rng([spec.seed, stable_int(locale), index, 7])
    weight = np.ones(len(SPEAKER_AXES))
    if not spec.null:
        _, axes = family_cues(spec.languages)[FAMILIES[locale]]
        weight[list(axes)] += spec.family_trait_strength * spec.speaker_axes_focus
    weight /= weight.mean()  # the same total spread at every strength
    return spec.speaker_axes_db * np.sqrt(weight) * rng.standard_normal(len(SPEAKER_AXES))


def speaker_warp(spec: DemoSpec, locale: str, index: int) -> float:
    """The speaker's own frequency warp in semitones, N(0, speaker_warp_semitones²), from a
    stream of its own (so that the speaker's other draws do not change with it)."""
    if spec.speaker_warp_semitones == 0:
        return 0.0
    rng = np.random.default_rng([spec.seed, stable_int(locale), index, 11])
    return spec.speaker_warp_semitones * float(rng.standard_normal())


def voice_locale(spec: DemoSpec, locale: str, index: int) -> str:
    """The locale whose eSpeak voice and script speaker ``index`` of ``locale`` speaks: its own,
    or under ``null`` one of ``spec.languages``, dealt so that every locale's speakers of one
    split and gender cycle through the same languages (each locale's own random order): every
    locale's pool then holds the same make-up of voices, which a free draw would leave to
    chance. Not one voice set: under eSpeak's Esperanto alone the frozen demo encoder left
    gender near chance. The pools still differ in their speakers (docs/findings.md)."""
    if not spec.null:
        return locale
    genders, splits = speaker_roles(spec)
    group = [i for i, (g, s) in enumerate(zip(genders, splits, strict=True))
             if g == genders[index] and s == splits[index]]  # fmt: skip
    rng = np.random.default_rng(
        [spec.seed, stable_int(locale), stable_int(f"{splits[index]}/{genders[index]}"), 13]
    )
    order = rng.permutation(len(spec.languages))
    return spec.languages[int(order[group.index(index) % len(order)])]


def axes_filter(gain_db: np.ndarray, n_taps: int = 257) -> np.ndarray:
    """A linear-phase FIR at 22050 Hz with ``gain_db`` along SPEAKER_AXES."""
    n_fft = 2 * (n_taps - 1)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / SYNTH_RATE)
    octaves = np.log2(np.maximum(freqs, 50.0))
    db = np.zeros_like(freqs)
    for centre, g in zip(SPEAKER_AXES, gain_db, strict=True):
        db += g * np.exp(-0.5 * ((octaves - np.log2(centre)) / SPEAKER_AXIS_OCTAVES) ** 2)
    impulse = np.roll(np.fft.irfft(10 ** (db / 20), n_fft), n_taps // 2)[:n_taps]
    return impulse * np.hanning(n_taps + 2)[1:-1]


def warp(speech: np.ndarray, semitones: float) -> np.ndarray:
    """Every frequency of ``speech`` (22050 Hz) moved by ``semitones``, pitch and formants
    alike (the duration shrinks or grows by the same ratio)."""
    if semitones == 0:
        return speech
    import soxr

    ratio = 2.0 ** (semitones / 12.0)
    return soxr.resample(speech.astype(np.float64), SYNTH_RATE * ratio, SYNTH_RATE)


def _synthesize_to_length(
    script: _Script, speaker: Speaker, rng: np.random.Generator, target_s: float
) -> tuple[str, np.ndarray]:
    """Text and speech of about ``target_s`` seconds: draw a long token list, then speak the
    prefix whose length, extrapolated from the previous try, hits the target."""
    from cltm.data import espeak

    tokens = _tokens(script, rng, 60)
    k = max(1, min(len(tokens), round(target_s / 0.55)))
    best: tuple[float, str, np.ndarray] | None = None
    tried: set[int] = set()
    for attempt in range(4):
        tried.add(k)
        text = _sentence(script, tokens[:k])
        # Only the clip's first utterance resets eSpeak (reloading a large dictionary such as
        # Russian's costs tens of ms); the later ones follow a fixed sequence, so they are
        # reproducible all the same.
        audio = espeak.synthesize(
            text, speaker.voice, rate=speaker.rate, pitch=speaker.pitch,
            pitch_range=speaker.pitch_range, reset=attempt == 0,
        )  # fmt: skip
        seconds = len(audio) / SYNTH_RATE
        error = abs(seconds - target_s) / target_s
        if best is None or error < best[0]:
            best = (error, text, audio)
        if error < 0.12 or seconds == 0:
            break
        k = max(1, min(len(tokens), round(k * target_s / seconds)))
        if k in tried:
            break
    assert best is not None
    return best[1], best[2]


def render_clip(
    locale: str,
    speaker: Speaker,
    clip: int,
    seed: int,
    clip_seconds: float,
    trait: FamilyTrait | None,
    trait_strength: float,
    script_locale: str,
    shift_semitones: float = 0.0,
    axes_db: np.ndarray | None = None,
) -> tuple[str, np.ndarray]:
    """One clip: (sentence, float32 audio at 48 kHz peak-normalised to 0.9)."""
    rng = _clip_rng(seed, locale, speaker.index, clip)
    total = clip_seconds * float(rng.uniform(2.0 / 3.0, 1.5))  # 2-4.5 s for 3 s clips
    lead, tail = float(rng.uniform(0.1, 0.4)), float(rng.uniform(0.15, 0.5))
    text, speech = _synthesize_to_length(
        _SCRIPTS[script_locale], speaker, rng, max(0.5, total - lead - tail)
    )
    if not np.any(speech):
        raise CltmError(f"eSpeak NG produced silence for {locale} ({speaker.voice}): {text!r}")
    speech = warp(speech.astype(np.float64), shift_semitones)
    before, after = (np.zeros(int(seconds * SYNTH_RATE)) for seconds in (lead, tail))
    x = np.concatenate([before, speech, after])
    if axes_db is not None and np.any(axes_db):
        taps = axes_filter(axes_db)
        x = _fft_convolve(x, taps)[len(taps) // 2 : len(taps) // 2 + len(x)]
    # Speaker channel: room, then microphone.
    x = _fft_convolve(x, _room_response(speaker, rng))[: len(x)]
    x = np.convolve(x, speaker.mic_taps)[: len(x)]
    x /= np.sqrt(np.mean(x**2)) + 1e-12
    if trait is not None:
        x = apply_family_trait(x, trait, trait_strength, rng)
    x = x + 10 ** (-speaker.snr_db / 20) * _coloured_noise(rng, len(x), speaker.noise_slope)
    import soxr  # imported here so that importing this module stays light

    y = soxr.resample(x.astype(np.float32), SYNTH_RATE, CV_RATE)
    y = (0.9 / (np.max(np.abs(y)) + 1e-12)) * y
    return text, y.astype(np.float32)


# --------------------------------------------------------------------------------------------
# The corpus


def check_languages(languages: Iterable[str]) -> None:
    """Raise CltmError naming every locale the demo cannot speak, with the supported ones."""
    unsupported = [lang for lang in languages if lang not in SUPPORTED]
    if unsupported:
        raise CltmError(
            f"the eSpeak NG demo corpus cannot speak: {', '.join(unsupported)}. "
            f"Supported Common Voice locales: {', '.join(sorted(SUPPORTED))}"
        )


def check_spec(spec: DemoSpec) -> None:
    """Raise CltmError naming the first setting of `spec` the demo corpus cannot be made with."""
    if not spec.languages:
        raise CltmError("the demo corpus needs at least one language")
    duplicates = sorted({lang for lang in spec.languages if spec.languages.count(lang) > 1})
    if duplicates:
        raise CltmError(f"languages listed twice in the demo spec: {', '.join(duplicates)}")
    check_languages(spec.languages)
    # The corpus's own limits; whether it can fill a task's request is the subsets stage's
    # question (it names what is short).
    if spec.speakers_per_language < 2:
        raise CltmError("speakers_per_language must be at least 2 (one of each gender)")
    if spec.clips_per_speaker < 1:
        raise CltmError("clips_per_speaker must be at least 1")
    if spec.dev_speakers < 0 or spec.test_speakers < 0:
        raise CltmError("dev_speakers and test_speakers cannot be negative")
    if spec.dev_speakers + spec.test_speakers >= spec.speakers_per_language:
        raise CltmError(
            f"dev_speakers + test_speakers ({spec.dev_speakers} + {spec.test_speakers}) must be "
            f"less than speakers_per_language ({spec.speakers_per_language}) so that some "
            "speakers are left for train"
        )
    if not 0.0 <= spec.family_trait_strength <= MAX_STRENGTH:
        raise CltmError(f"family_trait_strength must lie in [0, {MAX_STRENGTH:g}] (0 turns the "
                        "planted structure off; the calibration's strong corpus uses 2)")
    if not (spec.speaker_axes_db >= 0 and spec.speaker_axes_focus >= 0):
        raise CltmError("speaker_axes_db and speaker_axes_focus must be >= 0")
    if not abs(spec.gender_shift_semitones) <= 12:
        raise CltmError("gender_shift_semitones must lie within ±12 (an octave)")
    if not 0 <= spec.gender_pitch_offset <= PITCH_ROOM:
        raise CltmError(
            f"gender_pitch_offset must lie in [0, {PITCH_ROOM}]: eSpeak's pitch setting is 0-100 "
            f"and the demo's speakers use {MALE_PITCH[0]}-{FEMALE_PITCH[1]}")
    if not 0 <= spec.speaker_warp_semitones <= 6:
        raise CltmError("speaker_warp_semitones must lie in [0, 6] (a spread of half an octave)")
    if not 1.0 <= spec.clip_seconds <= 15.0:
        raise CltmError("clip_seconds must lie in [1, 15] (Common Voice clips run 2-6 s)")


def speaker_roles(spec: DemoSpec) -> tuple[list[str], list[str]]:
    """Every locale's speakers' genders (even indices male, as make_speaker has it) and splits."""
    genders = [MALE if i % 2 == 0 else FEMALE for i in range(spec.speakers_per_language)]
    return genders, assign_splits(genders, spec.dev_speakers, spec.test_speakers)


def assign_splits(genders: Sequence[str], dev: int, test: int) -> list[str]:
    """Split speakers (given by gender, in speaker order) into dev/test/train.

    Each split takes its speakers from whichever gender has more left (ties alternate), so
    every split is as gender-balanced as the counts allow; within a gender, lower indices go
    first, which keeps the assignment stable when speakers are added.
    """
    pools = {g: [i for i, x in enumerate(genders) if x == g] for g in (MALE, FEMALE)}
    split = ["train"] * len(genders)
    turn = 0
    for name, count in (("dev", dev), ("test", test)):
        for _ in range(count):
            m, f = len(pools[MALE]), len(pools[FEMALE])
            gender = MALE if (m > f or (m == f and turn % 2 == 0)) else FEMALE
            turn += 1
            split[pools[gender].pop(0)] = name
    return split


@dataclass(frozen=True)
class _SpeakerTask:
    root: str
    locale: str
    speaker: int
    first_number: int
    spec: DemoSpec


def _clip_number_base(locale: str) -> int:
    # Common Voice's clip numbers are unique across a release; a fixed block per locale
    # (by its place in SUPPORTED) keeps them unique whichever languages are generated.
    return 10_000_000 * (1 + sorted(SUPPORTED).index(locale))


def _speaker_task(task: _SpeakerTask) -> list[tuple[str, int, int, str, str, int, str]]:
    """Render and write one speaker's clips; return (locale, speaker, clip, file name,
    sentence, duration ms, audio digest) per clip."""
    import soundfile as sf

    spec = task.spec
    script_locale = voice_locale(spec, task.locale, task.speaker)
    voice_language = SUPPORTED[script_locale]
    trait = None if spec.null else family_trait(FAMILIES[task.locale])
    speaker = make_speaker(spec.seed, task.locale, task.speaker, voice_language)
    shift = 0.0
    if not spec.null:
        (warp_cue, pitch_cue), _ = family_cues(spec.languages)[FAMILIES[task.locale]]
        shift = spec.family_trait_strength * spec.gender_shift_semitones * warp_cue
        speaker = dataclasses.replace(
            speaker, pitch=speaker.pitch + family_pitch_offset(spec, pitch_cue))
    shift += speaker_warp(spec, task.locale, task.speaker)
    axes = speaker_axes_gain(spec, task.locale, task.speaker)
    rows = []
    for clip in range(spec.clips_per_speaker):
        text, audio = render_clip(
            task.locale, speaker, clip, spec.seed, spec.clip_seconds, trait,
            spec.family_trait_strength, script_locale, shift, axes,
        )  # fmt: skip
        name = f"common_voice_{task.locale}_{task.first_number + clip}.mp3"
        sf.write(Path(task.root) / task.locale / "clips" / name, audio, CV_RATE, format="MP3")
        # libsndfile's MP3 round trip is sample-exact (the LAME header carries the encoder
        # delay and padding), so the duration is that of the array written.
        digest = hashlib.sha256(audio.tobytes()).hexdigest()
        rows.append((task.locale, task.speaker, clip, name, text,
                     round(1000 * len(audio) / CV_RATE), digest))
    return rows


def _write_tsv(path: Path, rows: Iterable[Sequence[object]], columns: Sequence[str]) -> None:
    # Common Voice's TSVs are plain tab-separated text without quoting; the generated texts
    # contain no tabs or newlines, so no escaping is needed.
    lines = ["\t".join(columns)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _readme(spec: DemoSpec) -> str:
    families = ", ".join(f"{lang} ({FAMILIES[lang]})" for lang in spec.languages)
    return f"""{_README_MARK}
{"=" * len(_README_MARK)}

A synthetic speech corpus in the on-disk layout of Mozilla Common Voice, made by the cltm
package as an offline demo of its cross-lingual transfer pipeline. It is NOT Common Voice data.

Speech: synthesised by eSpeak NG (https://github.com/espeak-ng/espeak-ng, GPL-3.0-or-later)
through the espeakng-loader package. Texts: random numbers (read in each language's words) and
pseudo-words made of each language's letters; nothing is copied from any text corpus.

Speakers: eSpeak NG voice variants of the speaker's gender, each with its own pitch, pitch
range and speaking rate, and its own recording channel (microphone colouring, synthetic room
reverberation, background noise at 20-40 dB SNR). Speakers are disjoint across train/dev/test.

Planted structure, at strength family_trait_strength (0: none): every language family shares
a recording trait (a spectral colouring and a faint hum plus coloured noise, derived from the
family's name); its voices are warped in frequency and their pitch setting moved by the family's
own amounts, so the boundary between the genders sits elsewhere in each family; and its speakers
differ from one another mostly along the family's own two spectral bands. With null = true
nothing is planted and every locale's speakers of one split and gender speak the corpus's
languages in turn: only the labels differ.

Languages and planted families: {families}. See families.csv.

Spec:
{json.dumps(dataclasses.asdict(spec), indent=2)}
"""


def _prepare_destination(out: Path) -> None:
    """Refuse to overwrite anything but an earlier demo corpus (or an empty folder)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CltmError(f"{out} exists and is not a folder; choose another output path")
    if not any(out.iterdir()):
        return
    readme = out / "README.txt"
    if not (readme.is_file() and readme.read_text(encoding="utf-8").startswith(_README_MARK)):
        raise CltmError(
            f"{out} is not empty and is not a demo corpus written earlier; refusing to "
            "overwrite it. Choose an empty or new folder."
        )


def write_demo_corpus(out: Path, spec: DemoSpec, workers: int, progress: bool = True) -> None:
    """Write the demo corpus for ``spec`` under ``out`` in Common Voice's layout.

    The corpus is built in a sibling temporary folder and moved into place at the end, so an
    interrupted run never leaves a half-written corpus that looks complete. An existing earlier
    demo corpus at ``out`` is replaced; any other non-empty folder is refused.

    Same spec -> byte-identical files (with the same eSpeak NG, libsndfile and soxr builds),
    whatever ``workers`` is. ``workers`` > 1 uses processes started with "spawn", so a script
    calling this needs the usual ``if __name__ == "__main__":`` guard.
    """
    from tqdm import tqdm

    out = Path(out)
    check_spec(spec)
    _prepare_destination(out)
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tasks = []
        for locale in spec.languages:
            (tmp / locale / "clips").mkdir(parents=True)
            base = _clip_number_base(locale)
            for i in range(spec.speakers_per_language):
                tasks.append(
                    _SpeakerTask(str(tmp), locale, i, base + i * spec.clips_per_speaker, spec)
                )
        results: list[tuple[str, int, int, str, str, int, str]] = []
        n_clips = len(tasks) * spec.clips_per_speaker
        with tqdm(total=n_clips, unit="clip", desc="demo corpus", disable=not progress) as bar:
            if workers <= 1:
                for task in tasks:
                    results.extend(_speaker_task(task))
                    bar.update(spec.clips_per_speaker)
            else:
                # spawn: workers start clean (no threads or library state inherited from the
                # caller) and each initialises its own eSpeak NG engine.
                context = multiprocessing.get_context("spawn")
                with context.Pool(min(workers, len(tasks))) as pool:
                    for rows in pool.imap_unordered(_speaker_task, tasks):
                        results.extend(rows)
                        bar.update(len(rows))
        _write_tables(tmp, spec, results)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote the demo corpus (%d languages, %d clips) to %s in %.1f s",
        len(spec.languages), n_clips, out, time.monotonic() - started,
    )  # fmt: skip


def _write_tables(root: Path, spec: DemoSpec, results: list[tuple]) -> None:
    """Every TSV of each locale, families.csv and README.txt."""
    by_locale: dict[str, list[tuple]] = {lang: [] for lang in spec.languages}
    for row in sorted(results, key=lambda r: (spec.languages.index(r[0]), r[1], r[2])):
        by_locale[row[0]].append(row)
    _, splits = speaker_roles(spec)  # the same in every locale
    for locale, rows in by_locale.items():
        speakers = [
            make_speaker(spec.seed, locale, i, SUPPORTED[voice_locale(spec, locale, i)])
            for i in range(spec.speakers_per_language)
        ]
        table: dict[str, list[list[object]]] = {"train": [], "dev": [], "test": []}
        validated = []
        for _, i, _, name, sentence, _, audio_digest in rows:
            speaker = speakers[i]
            # A digest of the sentence and of the clip's audio: a corpus whose audio changed
            # (a planting, a filter) has other TSVs, so the metadata stage, which reads the TSVs
            # and not the clips, passes the change on to every stage after it.
            sentence_id = hashlib.sha256(f"{locale}\t{sentence}\t{audio_digest}".encode()
                                         ).hexdigest()
            record = [
                client_id(spec.seed, locale, i), name, sentence_id, sentence, "", 2, 0,
                speaker.age, speaker.gender, "", "", locale, "",
            ]  # fmt: skip
            validated.append(record)
            table[splits[i]].append(record)
        folder = root / locale
        _write_tsv(folder / "validated.tsv", validated, TSV_COLUMNS)
        for split, records in table.items():
            _write_tsv(folder / f"{split}.tsv", records, TSV_COLUMNS)
        _write_tsv(folder / "invalidated.tsv", [], TSV_COLUMNS)
        _write_tsv(folder / "other.tsv", [], TSV_COLUMNS)
        _write_tsv(
            folder / "clip_durations.tsv", [(r[3], r[5]) for r in rows], ["clip", "duration[ms]"]
        )
    lines = ["locale,family"] + [f"{lang},{FAMILIES[lang]}" for lang in spec.languages]
    (root / "families.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "README.txt").write_text(_readme(spec), encoding="utf-8")
