"""Kaldi-compatible log Mel filterbank in torch, and per-utterance mean normalisation.

ECAPA-TDNN's input (Desplanques et al., 2020; SpeechBrain's VoxCeleb recipe): 80 log Mel
filterbank energies from 25 ms windows every 10 ms at 16 kHz, each utterance's mean over time
subtracted per band (SpeechBrain's `InputNormalization(norm_type="sentence", std_norm=False)`).

The frame processing follows Kaldi's `compute-fbank` defaults, so kaldi-native-fbank (an
independent C++ implementation) can check it: snip_edges framing, DC offset removal,
pre-emphasis 0.97, povey (or hamming) window, zero-padding to 512, power spectrum, triangular
Mel filters on Kaldi's Mel scale from 20 Hz to Nyquist over the FFT bins below Nyquist, and
log(max(energy, FLT_EPSILON)). Dither is 0: a run's features are a function of its audio alone.
Batched: `fbank` takes (T,) or (B, T) waveforms of one length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Kaldi reads 16-bit PCM unscaled (values up to 32767); its log floor (FLT_EPSILON on a band's
# power) is set for that range. PackedAudio gives samples in [-1, 1], so they are scaled back.
INT16_SCALE = 32768.0
FLT_EPSILON = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class FbankSettings:
    sample_rate: int = 16_000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemph: float = 0.97
    window: str = "povey"  # povey | hamming
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: relative to Nyquist, as Kaldi
    remove_dc_offset: bool = True
    input_scale: float = INT16_SCALE

    @property
    def frame_length(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def frame_shift(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def n_fft(self) -> int:
        return 1 << (self.frame_length - 1).bit_length()  # Kaldi's round_to_power_of_two


def _mel(f: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(f, torch.Tensor):
        return 1127.0 * torch.log1p(f / 700.0)
    return 1127.0 * math.log1p(f / 700.0)


def mel_banks(s: FbankSettings, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Kaldi's triangular Mel filters, (n_mels, n_fft // 2): triangles in the Mel domain over
    the FFT bins 0 .. n_fft/2 - 1 (Kaldi leaves the Nyquist bin out)."""
    nyquist = s.sample_rate / 2
    high = s.high_freq if s.high_freq > 0 else nyquist + s.high_freq
    lo, hi = _mel(s.low_freq), _mel(high)
    delta = (hi - lo) / (s.n_mels + 1)
    edges = lo + delta * torch.arange(s.n_mels + 2, dtype=torch.float64)
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    n_bins = s.n_fft // 2
    freqs = torch.arange(n_bins, dtype=torch.float64) * (s.sample_rate / s.n_fft)
    m = _mel(freqs)[None, :]
    up = (m - left) / (centre - left)
    down = (right - m) / (right - centre)
    w = torch.where(m <= centre, up, down)
    w = torch.where((m > left) & (m < right), w, torch.zeros_like(w))
    return w.to(dtype)


def _window(s: FbankSettings, dtype: torch.dtype) -> torch.Tensor:
    n = s.frame_length
    a = 2 * math.pi / (n - 1)
    i = torch.arange(n, dtype=torch.float64)
    if s.window == "povey":
        w = (0.5 - 0.5 * torch.cos(a * i)).pow(0.85)
    elif s.window == "hamming":
        w = 0.54 - 0.46 * torch.cos(a * i)
    else:
        raise ValueError(f"unknown window {s.window!r} (povey | hamming)")
    return w.to(dtype)


def fbank(wave: torch.Tensor, s: FbankSettings = FbankSettings()) -> torch.Tensor:
    """Log Mel filterbank energies of (T,) or (B, T) audio: (frames, n_mels) or
    (B, frames, n_mels). Audio shorter than one frame gives zero frames."""
    single = wave.dim() == 1
    x = (wave[None] if single else wave).to(torch.float32) * s.input_scale
    length, shift = s.frame_length, s.frame_shift
    n_frames = 0 if x.shape[-1] < length else 1 + (x.shape[-1] - length) // shift
    if n_frames == 0:  # MKL's FFT refuses an empty batch
        out = x.new_zeros(x.shape[0], 0, s.n_mels)
        return out[0] if single else out
    frames = x[..., : (n_frames - 1) * shift + length].unfold(-1, length, shift)
    if s.remove_dc_offset:
        frames = frames - frames.mean(-1, keepdim=True)
    if s.preemph:
        # Kaldi: x[i] -= c x[i-1] for i > 0, and x[0] -= c x[0]
        prev = torch.cat([frames[..., :1], frames[..., :-1]], -1)
        frames = frames - s.preemph * prev
    frames = frames * _window(s, frames.dtype)
    spec = torch.fft.rfft(frames, n=s.n_fft)
    power = spec.real.square() + spec.imag.square()
    energies = power[..., : s.n_fft // 2] @ mel_banks(s, power.dtype).T
    out = energies.clamp_min(FLT_EPSILON).log()
    return out[0] if single else out


def mean_normalise(feats: torch.Tensor) -> torch.Tensor:
    """Subtract each utterance's mean over frames, per band: (..., frames, n_mels)."""
    return feats - feats.mean(-2, keepdim=True)
