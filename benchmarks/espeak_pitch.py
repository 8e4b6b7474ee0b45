"""What eSpeak NG's pitch setting does to a voice: F0 moves, the spectral envelope hardly does.

The demo plants each family's gender cue with a resampling warp, which moves pitch and
formants together, so the families' cues lie on one line. A second, pitch-only axis would let
four families sit on the corners of a square (docs/findings.md). This script measures whether
eSpeak's own pitch setting (0-100) gives that axis: per voice and setting, the median F0 (an
autocorrelation tracker over voiced frames), its distance in semitones from setting 50, and
the spectral centroid between 300 Hz and 4 kHz (a proxy for the formants). One JSON line each.

    PYTHONPATH=src python benchmarks/espeak_pitch.py
    PYTHONPATH=src python benchmarks/espeak_pitch.py --voices de+m1 de+f3 --settings 10 50 90
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from cltm.data import espeak

TEXT = "uno dos tres cuatro cinco seis"


def median_f0(x: np.ndarray, sr: int, lo_hz: float = 60.0, hi_hz: float = 500.0) -> float:
    """Median F0 over 40 ms frames whose autocorrelation peak is at least 0.4 of lag 0."""
    frame = int(0.04 * sr)
    found = []
    for start in range(0, len(x) - frame, frame // 2):
        fr = x[start:start + frame] - x[start:start + frame].mean()
        if np.sqrt(np.mean(fr**2)) < 0.05 * np.abs(x).max():
            continue  # silence or a weak consonant
        ac = np.correlate(fr, fr, "full")[frame - 1:]
        lo, hi = int(sr / hi_hz), int(sr / lo_hz)
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.4 * ac[0]:
            found.append(sr / lag)
    return float(np.median(found)) if found else float("nan")


def centroid(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1.0 / sr)
    band = (freqs > 300) & (freqs < 4000)
    return float((spectrum[band] * freqs[band]).sum() / spectrum[band].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", nargs="+", default=["es+m3", "es+f2"])
    ap.add_argument("--settings", nargs="+", type=int, default=[0, 20, 40, 50, 60, 80, 100])
    ap.add_argument("--text", default=TEXT)
    args = ap.parse_args()
    sr = espeak.SAMPLE_RATE
    for voice in args.voices:
        ref = median_f0(espeak.synthesize(args.text, voice, pitch=50), sr)
        for setting in args.settings:
            x = espeak.synthesize(args.text, voice, pitch=setting)
            f0 = median_f0(x, sr)
            print(json.dumps({"voice": voice, "pitch": setting, "f0_hz": round(f0, 1),
                              "semitones_from_50": round(12 * np.log2(f0 / ref), 2),
                              "centroid_hz": round(centroid(x, sr))}))


if __name__ == "__main__":
    main()
