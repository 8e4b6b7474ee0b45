"""Decoding, resampling and the packed audio file."""

import numpy as np
import pytest
import soundfile as sf

from cltm.data.audio import decode, decode_many, resample
from cltm.data.pack import SAMPLE_RATE, PackedAudio, PackWriter


def _tone(freq: float, sr: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize("sr_in", [48_000, 32_000])
def test_resample_keeps_frequency_and_duration(sr_in):
    y = resample(_tone(440.0, sr_in), sr_in)
    assert y.dtype == np.float32
    assert len(y) == pytest.approx(SAMPLE_RATE, abs=2)
    assert _peak_hz(y, SAMPLE_RATE) == pytest.approx(440.0, abs=1.5)


@pytest.mark.parametrize(("sr_in", "fmt"), [(48_000, "MP3"), (32_000, "MP3"), (44_100, "WAV")])
def test_decode_file_to_16k_mono(tmp_path, sr_in, fmt):
    stereo = np.stack([_tone(1000.0, sr_in), _tone(1000.0, sr_in)], axis=1)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, stereo, sr_in, format=fmt)
    y = decode(path)
    assert y.ndim == 1
    # MP3 adds encoder padding of a few ms: the length stays close to one second
    assert abs(len(y) - SAMPLE_RATE) < 0.1 * SAMPLE_RATE
    assert _peak_hz(y, SAMPLE_RATE) == pytest.approx(1000.0, abs=2)


def test_decode_many_reports_failures_without_raising(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, _tone(300.0, 16_000), 16_000)
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(b"not audio at all")
    results = list(decode_many([good, bad, tmp_path / "missing.mp3"], workers=1, progress=False))
    assert [i for i, *_ in results] == [0, 1, 2]
    assert results[0][1] is not None and results[0][2] == ""
    assert results[1][1] is None and results[1][2]
    assert results[2][1] is None and results[2][2]


def test_pack_roundtrip_and_compaction(tmp_path):
    rng = np.random.default_rng(0)
    clips = {f"c{i}": (rng.uniform(-0.9, 0.9, 100 + 37 * i) * 32767).astype("<i2")
             for i in range(5)}
    writer = PackWriter(tmp_path)
    for name, x in clips.items():
        writer.append(name, x)
    # drop c1 and reorder: the pack must then hold exactly the kept clips, in this order
    keep = ["c3", "c0", "c4", "c2"]
    index = writer.finish(keep)
    assert list(index) == keep
    pcm = np.fromfile(tmp_path / "audio.pcm", dtype="<i2")
    assert pcm.size == sum(clips[c].size for c in keep)
    packed = PackedAudio(tmp_path)
    assert len(packed) == 4 and "c1" not in packed
    for name in keep:
        np.testing.assert_allclose(packed[name], clips[name] / 32767.0, atol=1e-7)
        assert packed.seconds(name) == clips[name].size / SAMPLE_RATE
