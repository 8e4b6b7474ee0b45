"""A minimal ctypes binding of eSpeak NG, as shipped by the PyPI package ``espeakng-loader``.

Why ctypes and not a subprocess: the demo corpus synthesises thousands of short clips, and
eSpeak NG itself is far faster than starting a process per clip. The library keeps global
state, so there is exactly one engine per process (a lazy singleton, see :func:`get_engine`);
worker processes each initialise their own. The engine reloads its private copy of the library
before each utterance so that the output does not depend on earlier ones (see :class:`ESpeak`).

Only the few calls the demo generator needs are bound; their signatures follow eSpeak NG's
public header ``speak_lib.h`` (API revision 12):

- ``int espeak_Initialize(espeak_AUDIO_OUTPUT output, int buflength, const char *path,
  int options)`` returns the sample rate, or -1;
- ``void espeak_SetSynthCallback(int (*cb)(short *wav, int numsamples, espeak_EVENT *events))``;
- ``espeak_ERROR espeak_SetVoiceByName(const char *name)``;
- ``espeak_ERROR espeak_SetParameter(espeak_PARAMETER parameter, int value, int relative)``;
- ``espeak_ERROR espeak_Synth(const void *text, size_t size, unsigned int position,
  espeak_POSITION_TYPE position_type, unsigned int end_position, unsigned int flags,
  unsigned int *unique_identifier, void *user_data)``;
- ``espeak_ERROR espeak_Synchronize(void)``;
- ``espeak_ERROR espeak_Terminate(void)``;
- ``void espeak_ng_SetRandSeed(long seed)`` (espeak_ng.h);
- ``const espeak_VOICE **espeak_ListVoices(espeak_VOICE *voice_spec)``;
- ``const char *espeak_TextToPhonemes(const void **textptr, int textmode, int phonememode)``
  (for phoneme targets, see :mod:`cltm.data.phonemes`).

eSpeak NG is GPL-3.0; it is loaded at run time from the user's own installation of
``espeakng-loader``; nothing of it is part of this package.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from cltm.errors import CltmError

log = logging.getLogger(__name__)

# Constants from speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_EE_OK = 0
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
# phonememode of espeak_TextToPhonemes: bit 1 asks for IPA (UTF-8) rather than eSpeak's ASCII
# names; bits 8-23 hold a character written between phonemes (bit 7 clear: a separator, not a
# tie inside multi-letter names).
_PHONEMES_IPA = 0x02
#: What :meth:`ESpeak.text_to_phonemes` puts between phonemes. A control character can never be
#: part of an IPA phoneme name, so splitting on it cannot cut a phone such as tʃ in two.
PHONEME_SEPARATOR = "\x01"

#: Sample rate eSpeak NG synthesises at (it reports it from espeak_Initialize; checked there).
SAMPLE_RATE = 22050

#: Limits eSpeak NG documents for its parameters (speak_lib.h).
RATE_MIN, RATE_MAX = 80, 450

# The callback receives espeak_EVENT*; the events are not needed, so the pointer is typed as
# void* (same ABI) instead of mirroring the whole struct.
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Voice(ctypes.Structure):
    """espeak_VOICE. ``languages`` is kept as a raw pointer: it is a packed list of
    (priority byte, NUL-terminated name) pairs, which c_char_p would cut at the first NUL."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _loader():  # -> the espeakng_loader module
    try:
        import espeakng_loader
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise CltmError(
            "the demo corpus needs eSpeak NG from the Python package 'espeakng-loader'; "
            "install it with: pip install espeakng-loader"
        ) from exc
    return espeakng_loader


def data_path() -> Path:
    """The espeak-ng-data folder shipped with espeakng-loader."""
    return Path(_loader().get_data_path())


@lru_cache(maxsize=1)
def variants() -> dict[str, str]:
    """Voice variants installed (the files of espeak-ng-data/voices/!v) -> declared gender.

    The gender is "male", "female" or "" where the variant file does not declare one. eSpeak
    silently ignores an unknown variant after "+", so :meth:`ESpeak.check_voice` checks names
    here.
    """
    folder = data_path() / "voices" / "!v"
    found: dict[str, str] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        gender = ""
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].lower() == "gender":
                gender = parts[1].lower()
                break
        found[path.name] = gender
    return found


class ESpeak:
    """One eSpeak NG engine. Use :func:`get_engine`, not this class directly: the library's
    state is process-global, so two instances would fight over it.

    Determinism: eSpeak NG carries hidden state from one utterance to the next (waveform
    phase, flutter and echo buffers, its random generator), so the same text could come out
    slightly different depending on what was spoken before, and espeak_Initialize does not
    reset it; its random generator is even seeded from the clock. A freshly loaded library
    with a fixed seed does start from the same state, so the engine loads a private copy of
    the library and, by default, reloads it (dlclose + dlopen: about 1 ms, plus reading the
    language's dictionary again) before an utterance. Each ``synthesize(..., reset=True)``
    is then a pure function of its arguments, whatever the process spoke before; that is what
    makes the demo corpus byte-identical across runs and worker schedules. ``reset=False``
    continues from the current state: deterministic too, as long as the calls since the last
    reset are.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path = _private_copy(Path(_loader().get_library_path()))
        self._chunks: list[np.ndarray] = []
        # The ctypes callback object must outlive every synthesis call: if it were garbage
        # collected, eSpeak would call into freed memory. Holding it on self keeps it alive.
        self._callback = _SYNTH_CALLBACK(self._collect)
        self._languages: frozenset[str] | None = None
        self._voice: str | None = None  # the voice selected in the loaded library
        self._lib = self._load()
        self._dirty = False  # whether the loaded library has been used since it was loaded

    def _load(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(self._path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Terminate.argtypes = []
        lib.espeak_Terminate.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_TextToPhonemes.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int
        ]
        # c_void_p, not c_char_p: the result points into eSpeak's static buffer, which the next
        # call overwrites; it is copied out at once with string_at.
        lib.espeak_TextToPhonemes.restype = ctypes.c_void_p
        # buflength 0 = eSpeak's default chunk size (60 ms); in synchronous mode it only
        # changes how often the callback runs.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path()).encode(), 0)
        if rate != SAMPLE_RATE:
            raise CltmError(
                f"eSpeak NG failed to initialise (espeak_Initialize returned {rate}, expected "
                f"sample rate {SAMPLE_RATE}); reinstall espeakng-loader"
            )
        lib.espeak_SetSynthCallback(self._callback)
        # eSpeak NG seeds its own random generator (used e.g. for breathiness noise) from
        # the clock at initialisation; a fixed seed makes the output reproducible. (The call
        # exists since eSpeak NG 1.52, the version espeakng-loader ships.)
        try:
            set_seed = lib.espeak_ng_SetRandSeed
        except AttributeError:  # pragma: no cover - older library
            log.warning("this eSpeak NG cannot fix its random seed; output may vary per run")
        else:
            set_seed.argtypes = [ctypes.c_long]
            set_seed.restype = None
            set_seed(0)
        return lib

    def _fresh(self, reset: bool = True) -> ctypes.CDLL:
        """The library, reloaded to its just-loaded state if ``reset`` (see the class
        docstring)."""
        if reset and self._dirty and _dlclose is not None:
            # Terminate first: it frees the phoneme data and dictionaries (megabytes for
            # some languages), which unloading the code alone would leak.
            self._lib.espeak_Terminate()
            handle = self._lib._handle
            del self._lib
            self._voice = None
            _dlclose(handle)
            self._lib = self._load()
        self._dirty = True
        return self._lib

    def _collect(self, wav, numsamples, _events):  # called from C, see _SYNTH_CALLBACK
        # wav is NULL at the end of synthesis; numsamples may be 0 mid-stream.
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue synthesis

    def languages(self) -> frozenset[str]:
        """Every language name an installed voice declares (e.g. "es", "cmn", "en-gb")."""
        with self._lock:
            if self._languages is None:
                self._languages = _list_languages(self._fresh())
            return self._languages

    def _set_voice(self, lib: ctypes.CDLL, voice: str) -> None:
        if voice == self._voice:
            return
        self._voice = None
        language, _, variant = voice.partition("+")
        if variant and variant not in variants():
            raise CltmError(
                f"eSpeak NG has no voice variant {variant!r} (in {voice!r}); installed "
                f"variants: {', '.join(sorted(variants()))}"
            )
        if not language or lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            names = _list_languages(lib)
            raise CltmError(
                f"eSpeak NG has no voice {language!r} (in {voice!r}); installed languages: "
                f"{', '.join(sorted(names))}"
            )
        self._voice = voice

    def check_voice(self, voice: str) -> None:
        """Raise CltmError unless ``voice`` ("lang" or "lang+variant", e.g. "es+f2") exists.

        eSpeak reports an unknown language but silently ignores an unknown variant, so the
        variant is checked against the data folder.
        """
        with self._lock:
            self._set_voice(self._fresh(), voice)

    def synthesize(
        self,
        text: str,
        voice: str,
        rate: int = 175,
        pitch: int = 50,
        pitch_range: int = 50,
        volume: int = 100,
        reset: bool = True,
    ) -> np.ndarray:
        """Speak ``text`` (UTF-8, plain text, no SSML) and return float32 samples in [-1, 1] at
        :data:`SAMPLE_RATE` Hz.

        rate: words per minute (80-450, 175 is eSpeak's normal); pitch and pitch_range: 0-100
        (50 = the variant's normal); volume: 0-200 (100 = normal, more may distort); reset:
        start from the library's just-loaded state (see the class docstring).
        """
        with self._lock:
            lib = self._fresh(reset)
            self._set_voice(lib, voice)
            for param, value in (
                (_ESPEAK_RATE, int(np.clip(rate, RATE_MIN, RATE_MAX))),
                (_ESPEAK_VOLUME, int(np.clip(volume, 0, 200))),
                (_ESPEAK_PITCH, int(np.clip(pitch, 0, 100))),
                (_ESPEAK_RANGE, int(np.clip(pitch_range, 0, 100))),
            ):
                if lib.espeak_SetParameter(param, value, 0) != _EE_OK:
                    raise CltmError(f"eSpeak NG rejected parameter {param}={value}")
            data = text.encode("utf-8") + b"\0"
            self._chunks = []
            status = lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            lib.espeak_Synchronize()
            if status != _EE_OK:
                raise CltmError(f"eSpeak NG could not synthesise {text[:40]!r} (error {status})")
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)

    def text_to_phonemes(self, texts: Sequence[str], voice: str) -> list[list[str]]:
        """Each text's IPA phonemes as eSpeak NG's voice ``voice`` pronounces it: per text, the
        clause strings eSpeak returned, phonemes separated by :data:`PHONEME_SEPARATOR` and
        words by spaces (see :mod:`cltm.data.phonemes` for the tokens).

        The library is reloaded once per call, so what was synthesised before cannot leak in;
        within a call no reload is needed (every demo sentence of eight languages gives the
        same phonemes alone, after others and in reverse order), and a reload per sentence
        would cost about 10 ms against 0.06 ms.
        """
        mode = _PHONEMES_IPA | (ord(PHONEME_SEPARATOR) << 8)
        with self._lock:
            lib = self._fresh(True)
            self._set_voice(lib, voice)
            return [_clauses(lib, text, mode) for text in texts]


def _clauses(lib: ctypes.CDLL, text: str, mode: int) -> list[str]:
    # espeak_TextToPhonemes translates one clause a call (up to a full stop, comma, colon...)
    # and advances the pointer past it, setting it to NULL at the end of the text: a single call
    # would silently drop everything after the first comma.
    data = ctypes.create_string_buffer(text.encode("utf-8"))  # NUL-terminated, kept alive here
    pointer = ctypes.c_void_p(ctypes.addressof(data))
    end = ctypes.addressof(data) + len(data.raw)
    clauses: list[str] = []
    while pointer.value:
        before = pointer.value
        result = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _ESPEAK_CHARS_UTF8, mode)
        if not result:
            raise CltmError(f"eSpeak NG could not phonemize {text[:40]!r}")
        clauses.append(ctypes.string_at(result).decode("utf-8", errors="replace"))
        # A pointer that does not move (or leaves the buffer) would loop for ever.
        if pointer.value is not None and not before < pointer.value <= end:
            raise CltmError(f"eSpeak NG did not advance through {text[:40]!r}")
    return clauses


def _list_languages(lib: ctypes.CDLL) -> frozenset[str]:
    names: set[str] = set()
    voices = lib.espeak_ListVoices(None)
    i = 0
    while voices[i]:
        voice = voices[i].contents
        pointer = voice.languages
        while pointer:
            if ctypes.c_ubyte.from_address(pointer).value == 0:  # priority 0 ends the list
                break
            name = ctypes.string_at(pointer + 1)
            names.add(name.decode("utf-8", errors="replace"))
            pointer += 2 + len(name)  # priority byte + name + NUL
        if voice.identifier:
            # SetVoiceByName also accepts the voice file's name ("es", "pt-BR", "cmn").
            names.add(voice.identifier.decode().rsplit("/", 1)[-1])
        i += 1
    return frozenset(names)


def _private_copy(library: Path) -> str:
    """A path to a copy of the library that only this engine loads.

    dlclose unloads a library (and so resets its state) only when nothing else holds it open;
    another package loading the same file from espeakng-loader would otherwise silently keep
    the old state alive. On Linux the copy lives in an anonymous memory file (memfd), so
    nothing is left on disk whichever way the process ends; elsewhere it is a temporary file.
    """
    data = library.read_bytes()
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("cltm-espeak-ng")  # close-on-exec by default
        with open(fd, "wb", closefd=False) as file:
            file.write(data)
        return f"/proc/self/fd/{fd}"
    folder = Path(tempfile.mkdtemp(prefix="cltm-espeak-"))
    atexit.register(shutil.rmtree, folder, True)
    copy = folder / library.name
    copy.write_bytes(data)
    return str(copy)


# dlclose on POSIX, FreeLibrary on Windows; without either the library is loaded once and
# utterances may depend slightly on what was spoken before in the same process.
_dlclose = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)


_ENGINE: ESpeak | None = None
_ENGINE_PID: int | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine() -> ESpeak:
    """The process's eSpeak NG engine, initialised on first use.

    The pid check makes a forked child initialise its own engine rather than reuse the
    parent's library state through a copied Python object.
    """
    global _ENGINE, _ENGINE_PID
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE_PID != os.getpid():
            _ENGINE = ESpeak()
            _ENGINE_PID = os.getpid()
        return _ENGINE


def synthesize(
    text: str,
    voice: str,
    rate: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
    reset: bool = True,
) -> np.ndarray:
    """Speak ``text`` with eSpeak NG voice ``voice`` ("es", "es+f2", ...): float32 in [-1, 1] at
    22050 Hz. Raises CltmError if the voice does not exist. With ``reset`` (the default) the
    result depends on the arguments only, not on earlier calls (see :class:`ESpeak`)."""
    return get_engine().synthesize(
        text, voice, rate=rate, pitch=pitch, pitch_range=pitch_range, reset=reset
    )


def voice_exists(voice: str) -> bool:
    """Whether ``voice`` ("lang" or "lang+variant") can be selected."""
    try:
        get_engine().check_voice(voice)
    except CltmError:
        return False
    return True
