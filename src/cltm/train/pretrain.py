"""Pretrain the demo's small encoder on the demo corpus, the way HuBERT's first iteration does.

The encoder is a small HuBERT by default; `pretrain.architecture.model_type` picks another of the
wav2vec 2.0 family (wav2vec2, wavlm, data2vec-audio), pretrained the same way (masked prediction
of the same k-means units), so that two encoders can be compared on the same data.

The paper fine-tunes a pretrained encoder (mHuBERT-147); a randomly initialised one barely
learns from a few dozen clips, so the demo would measure noise. This stage gives the demo what
the paper had, on a 2-core CPU in a few minutes: MFCC frames of the corpus's training speakers
are clustered with k-means, and the encoder learns to predict the cluster of masked frames.
The result is a local model directory that `model.name_or_path` points to.

Only training-split speakers are used: evaluation speakers stay unseen, as in the fine-tuning.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from transformers import AutoModel, PreTrainedModel, Wav2Vec2FeatureExtractor
from transformers.models.hubert.modeling_hubert import _compute_mask_indices

from cltm import kernels
from cltm.config import PretrainConfig
from cltm.data import commonvoice
from cltm.data.audio import decode_many
from cltm.data.pack import SAMPLE_RATE
from cltm.train.loop import seed_everything
from cltm.train.model import encoder_config, normalise

log = logging.getLogger(__name__)

# MFCC frames aligned with HuBERT's: a 25 ms window every 20 ms, no centring, so a clip gives
# exactly as many MFCC frames as the convolutional encoder gives feature frames.
WIN, HOP, N_MELS, N_MFCC = 400, 320, 40, 13


#: HuBERT's masking: spans of MASK_LENGTH frames starting at MASK_PROB of the frames.
MASK_PROB = 0.08
MASK_LENGTH = 10


def _mel_filterbank(n_fft: int, n_mels: int, sr: int) -> np.ndarray:
    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m: np.ndarray) -> np.ndarray:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(np.array(0.0)), mel(np.array(sr / 2)), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    bank = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return bank


def log_mel(wave: np.ndarray) -> np.ndarray:
    """(frames, 40) log-mel energies in HuBERT's frames (25 ms windows every 20 ms)."""
    n = 1 + (len(wave) - WIN) // HOP
    if n < 1:
        return np.zeros((0, N_MELS))
    frames = np.lib.stride_tricks.sliding_window_view(wave, WIN)[::HOP][:n] * np.hanning(WIN)
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2
    return np.log(power @ _mel_filterbank(512, N_MELS, SAMPLE_RATE).T + 1e-10)


def mfcc(wave: np.ndarray) -> np.ndarray:
    """(frames, 39): 13 MFCCs with their first and second differences, per-clip normalised."""
    logmel = log_mel(wave)
    n = len(logmel)
    if n < 1:
        return np.zeros((0, 3 * N_MFCC), np.float32)
    k = np.arange(N_MELS)
    dct = np.cos(np.pi / N_MELS * (k[None, :] + 0.5) * np.arange(N_MFCC)[:, None])
    c = logmel @ dct.T
    d1 = np.gradient(c, axis=0) if n > 1 else np.zeros_like(c)
    d2 = np.gradient(d1, axis=0) if n > 1 else np.zeros_like(c)
    feats = np.concatenate([c, d1, d2], axis=1)
    return ((feats - feats.mean(0)) / (feats.std(0) + 1e-5)).astype(np.float32)


def cluster_targets(waves: list[np.ndarray], k: int, seed: int, threads: int | None
                    ) -> list[np.ndarray]:
    """Frame-level k-means units of every clip (HuBERT's first-iteration targets). `threads`
    fixes k-means's OpenMP threads (by default one per core): its threads add their centres in
    whatever order they finish, which is exact with one or two only."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    feats = [mfcc(w) for w in waves]
    stacked = np.concatenate(feats)
    rng = np.random.default_rng(seed)
    sample = stacked[rng.choice(len(stacked), min(len(stacked), 50_000), replace=False)]
    with threadpool_limits(threads):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(sample)
        return [km.predict(f).astype(np.int64) if len(f) else np.zeros(0, np.int64)
                for f in feats]


def pretraining_clips(root: Path, metadata_dir: Path, languages: list[str], workers: int,
                      progress: bool) -> list[np.ndarray]:
    """Decoded training-split clips of every language (float32, 16 kHz)."""
    table = commonvoice.read_metadata(languages, metadata_dir)
    train = table[table["split"] == "train"]
    paths = [commonvoice.clip_path(root, lang, clip)
             for lang, clip in zip(train["language"], train["clip"])]
    waves = []
    for _, samples, err in decode_many(paths, workers, progress, desc="decoding for pretraining"):
        if samples is None:
            log.warning("pretraining skips a clip that failed to decode: %s", err)
            continue
        waves.append(samples.astype(np.float32) / 32767.0)
    return waves


def pretrain(waves: list[np.ndarray], s: PretrainConfig, progress: bool = True
             ) -> tuple[PreTrainedModel, list[float]]:
    """Masked prediction of k-means units; returns the encoder and the mean loss per epoch."""
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.backends.mkldnn.enabled = False  # see worker.py: variable shapes defeat its cache
    seed_everything(s.seed)
    reason = kernels.unpinned_reason()
    if reason is not None:
        log.warning("pretraining: %s", reason)
    targets = cluster_targets(waves, s.clusters, s.seed, s.threads)
    config = encoder_config(s.architecture, "pretrain.architecture")
    model = AutoModel.from_config(config)
    head = nn.Linear(config.hidden_size, s.clusters)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=s.lr)
    rng = np.random.default_rng(s.seed)
    # a crop of exactly crop_frames frames: the MFCC targets and the model frames coincide
    crop_frames = 1 + (int(s.crop_seconds * SAMPLE_RATE) - WIN) // HOP
    crop = (crop_frames - 1) * HOP + WIN
    usable = [i for i, w in enumerate(waves) if len(w) >= crop]
    if not usable:
        raise ValueError(f"no clip is as long as pretrain.crop_seconds ({s.crop_seconds} s)")
    losses = []
    model.train()
    for epoch in tqdm(range(s.epochs), desc="pretraining", unit="epoch", disable=not progress):
        order = rng.permutation(usable)
        epoch_loss = []
        for start in range(0, len(order), s.batch_size):
            idx = order[start : start + s.batch_size]
            x, y = [], []
            for i in idx:
                # a crop starting on a frame boundary keeps MFCC units aligned with model frames
                f0 = int(rng.integers(0, len(targets[i]) - crop_frames + 1))
                x.append(waves[i][f0 * HOP : f0 * HOP + crop])
                y.append(targets[i][f0 : f0 + crop_frames])
            batch = torch.from_numpy(np.stack(x))
            lengths = torch.full((len(idx),), crop)
            mask = torch.from_numpy(_compute_mask_indices(
                (len(idx), crop_frames), MASK_PROB, MASK_LENGTH, min_masks=2))
            out = model(normalise(batch, lengths), mask_time_indices=mask).last_hidden_state
            logits = head(out[mask])
            loss = nn.functional.cross_entropy(logits, torch.from_numpy(np.stack(y))[mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*model.parameters(), *head.parameters()], 1.0)
            opt.step()
            epoch_loss.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_loss)))
        log.debug("pretraining epoch %d: loss %.3f", epoch + 1, losses[-1])
    return model, losses


def run_pretrain(root: Path, metadata_dir: Path, languages: list[str], out: Path,
                 s: PretrainConfig, workers: int, progress: bool = True) -> dict[str, Any]:
    """Write a model directory (config, weights, feature-extractor config) and return a summary.
    The clips are the training split of the release at `root`, as the metadata stage's tables in
    `metadata_dir` list them."""
    start = time.perf_counter()
    waves = pretraining_clips(root, metadata_dir, languages, workers, progress)
    model, losses = pretrain(waves, s, progress)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                             do_normalize=True, return_attention_mask=True).save_pretrained(out)
    summary = {
        "clips": len(waves),
        "hours": round(sum(len(w) for w in waves) / SAMPLE_RATE / 3600, 3),
        "epochs": s.epochs,
        "loss_first_epoch": round(losses[0], 4),
        "loss_last_epoch": round(losses[-1], 4),
        "loss_per_epoch": [round(v, 4) for v in losses],
    }
    # No wall time in the files: the same params give the same bytes, so DVC sees no change.
    (out / "pretraining.json").write_text(json.dumps(summary, indent=2))
    log.info("pretrained on %d clips (%.2f h): loss %.3f -> %.3f in %.0f s", summary["clips"],
             summary["hours"], losses[0], losses[-1], time.perf_counter() - start)
    return summary
