"""Decode and resample audio: soundfile reads the MP3, soxr resamples to 16 kHz mono.

Every selected clip is decoded once, by the subsets stage, into the packed file of `pack.py`;
training workers then slice clips out of that file and never decode.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from cltm.data.pack import SAMPLE_RATE, to_int16

log = logging.getLogger(__name__)


def resample(x: np.ndarray, sr_in: int, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float signal; a no-op when the rates already agree."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    return soxr.resample(np.asarray(x, dtype=np.float32), sr_in, sr_out, quality="HQ")


def decode(path: str | Path, sr_out: int = SAMPLE_RATE) -> np.ndarray:
    """Read any file libsndfile knows (MP3, WAV, FLAC) as float32 mono at `sr_out`."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return resample(mono, sr, sr_out)


def clip_seconds(path: str | Path) -> float:
    """A clip's duration from its header (libsndfile decodes nothing for it), in whole
    milliseconds: clip_durations.tsv lists milliseconds, and a measured duration must pass a
    duration filter exactly as the listed one would."""
    info = sf.info(str(path))
    if info.frames <= 0 or info.samplerate <= 0:
        raise ValueError("no samples")
    return round(1000 * info.frames / info.samplerate) / 1000


def _decode_job(path: str) -> tuple[np.ndarray | None, str]:
    try:
        return to_int16(decode(path)), ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def decode_many(
    paths: Sequence[str | Path], workers: int, progress: bool = True, desc: str = "decoding"
) -> Iterator[tuple[int, np.ndarray | None, str]]:
    """Yield (index, int16 samples or None, error message) in input order, decoding in parallel."""
    jobs = [str(p) for p in paths]
    bar = tqdm(total=len(jobs), desc=desc, unit="clip", disable=not progress)
    try:
        if workers <= 1 or len(jobs) < 8:
            results: Iterable = map(_decode_job, jobs)
            for i, (x, err) in enumerate(results):
                bar.update()
                yield i, x, err
            return
        with mp.get_context("spawn").Pool(workers) as pool:
            for i, (x, err) in enumerate(pool.imap(_decode_job, jobs, chunksize=4)):
                bar.update()
                yield i, x, err
    finally:
        bar.close()
