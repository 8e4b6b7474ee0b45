"""Train ECAPA-TDNN from scratch as a speaker classifier, embed clips, score the speaker task.

One run: build the network from the seed, train it with AAM-softmax on the run's training
clips (D_i + D'_i or D_i + D_j, the speaker task's own selection), then embed the target's
evaluation clips and score the task's trials by cosine (`loop.cosine_scores`,
`loop.auc_eer`). Deterministic per seed on CPU: the initial weights come from the seed (the
global generator is left as it was), the batch order and every crop from a generator of the
seed's own.

Features are computed once per clip (the whole clip's Kaldi filterbank); a random crop is a
window of whole frames, which equals the filterbank of the audio cropped at a multiple of the
10 ms shift, and is then mean-normalised on its own. Evaluation embeds whole clips, one length
at a time (no padding, so BN and pooling see exactly the clip).

Variants (`EcapaSettings.variant`):
- `ecapa`: the paper's network, 80 mean-normalised filterbanks, random crops, a clip shorter
  than a crop wrapped around (its frames repeated);
- `reference`: Pol-Buitrago/cltm-framework's reduced network and recipe: 64 filterbanks
  standardised over the whole spectrogram, every clip cut or zero-padded to its first
  `crop_s` seconds for training and for evaluation, AdamW, no gradient clipping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cltm.train import loop
from cltm.train.ecapa import AAMSoftmax, EcapaTDNN, ReferenceEcapa
from cltm.train.fbank import FbankSettings, fbank, mean_normalise
from cltm.train.grid import RunSpec, training_clips

VARIANTS = ("ecapa", "reference")
SCHEDULES = ("constant", "triangular", "step")


@dataclass(frozen=True)
class EcapaSettings:
    """The network and its training recipe. Defaults: SpeechBrain's VoxCeleb ECAPA recipe
    (`recipes/VoxCeleb/SpeakerRec/hparams/train_ecapa_tdnn.yaml`) at the paper's C = 512."""

    variant: str = "ecapa"  # ecapa | reference
    # network
    channels: int = 512
    mfa_channels: int | None = None  # None: 3 x channels
    embed_dim: int = 192
    res2net_scale: int = 8
    se_channels: int = 128
    attention_channels: int = 128
    global_context: bool = True
    # features
    n_mels: int = 80
    window: str = "povey"
    crop_s: float = 3.0
    # AAM-softmax
    margin: float = 0.2
    scale: float = 30.0
    # optimiser and schedule
    optimizer: str = "adam"  # adam | adamw
    lr: float = 1e-3
    weight_decay: float = 2e-6
    batch_size: int = 32
    epochs: int = 1
    steps: int | None = None  # None: epochs x ceil(clips / batch_size)
    schedule: str = "constant"  # constant | triangular | step
    lr_min: float = 1e-8  # triangular: the cycle's floor
    lr_cycle_steps: int = 65_000  # triangular: steps from floor to peak (SpeechBrain's step_size)
    lr_step_epochs: int = 10  # step: multiply lr by lr_gamma every this many epochs
    lr_gamma: float = 0.5
    grad_clip: float | None = 5.0  # SpeechBrain's Brain.max_grad_norm

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ECAPA variant {self.variant!r} ({' | '.join(VARIANTS)})")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r} ({' | '.join(SCHEDULES)})")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r} (adam | adamw)")
        if self.window not in ("povey", "hamming"):
            raise ValueError(f"unknown window {self.window!r} (povey | hamming)")
        if self.batch_size < 2 or (self.steps is not None and self.steps < 0):
            raise ValueError(f"batch_size must be >= 2 (BN) and steps >= 0, got "
                             f"{self.batch_size} and {self.steps}")

    @property
    def fbank(self) -> FbankSettings:
        return FbankSettings(n_mels=self.n_mels, window=self.window)

    @property
    def crop_frames(self) -> int:
        return round(self.crop_s * 1000 / self.fbank.frame_shift_ms)


def paper_settings(channels: int = 1024, steps: int | None = None,
                   **overrides: Any) -> EcapaSettings:
    """The paper's network (MFA at 1536 channels, 14.7M parameters at C 1024, 6.2M at 512)
    with SpeechBrain's VoxCeleb recipe: Adam at 1e-3, weight decay 2e-6, batch 32, 3 s random
    crops, gradient norm clipped at 5, and its triangular cyclic schedule (1e-8 up to 1e-3
    and down) fitted to the run: one cycle over `steps`. The recipe's own half-cycle of 65,000
    steps would leave a run of a few hundred steps at lr ~1e-8, untrained. Without `steps`
    (epochs decide the length) the lr is constant."""
    base = EcapaSettings(channels=channels, mfa_channels=1536, steps=steps)
    if steps:
        base = replace(base, schedule="triangular", lr_cycle_steps=max(1, steps // 2))
    return replace(base, **overrides)


def reference_settings(**overrides: Any) -> EcapaSettings:
    """Pol-Buitrago/cltm-framework `src/ECAPA/sv_ECAPA.py` as its runs used it
    (`run_ECAPA_subsets.sh`): C 512, 64 log-mels, 3 s (the first, zero-padded), AAM s 30 m
    0.2 without fallback, AdamW at 1e-3 with weight decay 2e-6, batch 128, one epoch, StepLR
    (x0.5 every 10 epochs: no effect in one), no gradient clipping."""
    return replace(EcapaSettings(variant="reference", channels=512, n_mels=64, crop_s=3.0,
                                 optimizer="adamw", batch_size=128, epochs=1, schedule="step",
                                 grad_clip=None), **overrides)


def demo_settings(**overrides: Any) -> EcapaSettings:
    """A network small enough for the demo on 2 CPU cores (C 32, bottlenecks 32: 87k
    parameters), 2 s crops (the demo's speaker clips: median 2.6 s), a run's 12 or 24 clips in
    one batch, SpeechBrain's lr 1e-3 held constant, 50 steps for every run: in the learning
    check (benchmarks/ecapa_learning.py, docs/ecapa.md) the self gain was largest against its
    spread over targets and seeds at 50 steps, and at lr 1e-3 the network improves on its
    untrained self in every condition (at 3e-3 the base runs got worse)."""
    return replace(EcapaSettings(channels=32, se_channels=32, attention_channels=32,
                                 crop_s=2.0, batch_size=32, steps=50, lr=1e-3),
                   **overrides)


def build_model(s: EcapaSettings) -> nn.Module:
    if s.variant == "reference":
        return ReferenceEcapa(n_mels=s.n_mels, channels=s.channels, embed_dim=s.embed_dim)
    return EcapaTDNN(n_mels=s.n_mels, channels=s.channels, embed_dim=s.embed_dim,
                     mfa_channels=s.mfa_channels, res2net_scale=s.res2net_scale,
                     se_channels=s.se_channels, attention_channels=s.attention_channels,
                     global_context=s.global_context)


def _normalise(feats: torch.Tensor, s: EcapaSettings) -> torch.Tensor:
    if s.variant == "reference":
        # the reference standardises its dB spectrogram by its own mean and SD (torch.std)
        flat = feats.flatten(-2)
        mean = flat.mean(-1)[..., None, None]
        std = flat.std(-1)[..., None, None]
        return (feats - mean) / (std + 1e-6)
    return mean_normalise(feats)


def clip_features(wave: torch.Tensor, s: EcapaSettings) -> torch.Tensor:
    """A clip's filterbank before normalisation, (frames, n_mels). The reference variant cuts
    or zero-pads the audio to its first crop_s seconds first, as the reference loads it."""
    if s.variant == "reference":
        n = round(s.crop_s * s.fbank.sample_rate)
        wave = torch.nn.functional.pad(wave[:n], (0, max(0, n - wave.numel())))
    return fbank(wave, s.fbank)


def _crop(feats: torch.Tensor, frames: int, gen: torch.Generator) -> torch.Tensor:
    n = feats.shape[0]
    if n < frames:
        # wrap a short clip around rather than pad it with silence no clip contains
        feats = feats.repeat(math.ceil(frames / n), 1)
        n = feats.shape[0]
    start = int(torch.randint(0, n - frames + 1, (1,), generator=gen))
    return feats[start : start + frames]


def _lr_factor(s: EcapaSettings, step: int, epoch: int) -> float:
    if s.schedule == "triangular":
        # SpeechBrain's CyclicLRScheduler, triangular mode: lr_min up to lr over
        # lr_cycle_steps, back down over as many, and again
        cycle = math.floor(1 + step / (2 * s.lr_cycle_steps))
        x = abs(step / s.lr_cycle_steps - 2 * cycle + 1)
        return (s.lr_min + (s.lr - s.lr_min) * max(0.0, 1 - x)) / s.lr
    if s.schedule == "step":
        return s.lr_gamma ** (epoch // s.lr_step_epochs)
    return 1.0


def _batch_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """An epoch's batches as (start, stop) in the shuffled order. A last batch of one clip
    joins the one before: BN over the pooled embedding needs two rows (the reference's
    DataLoader would fail on it)."""
    if n < 2:
        raise ValueError(f"training needs at least 2 clips, got {n}")
    bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


@dataclass
class TrainedEcapa:
    """A trained run: the embedding network, its AAM head, the loss of every step."""

    model: nn.Module
    head: AAMSoftmax
    settings: EcapaSettings
    losses: list[float] = field(default_factory=list)


def train_ecapa(waves: Sequence[torch.Tensor], speakers: Sequence[Any], s: EcapaSettings,
                seed: int, features: Sequence[torch.Tensor] | None = None,
                after_step: Callable[[TrainedEcapa], None] | None = None) -> TrainedEcapa:
    """Train a new network on `waves` labelled by `speakers` (any hashable ids) from `seed`.

    `features`: each clip's `clip_features`, when the caller keeps them (a worker computes a
    clip's once for every run that trains on it). `after_step`: called with the run so far
    after every step (a learning check: no step depends on the total, so the state after
    step k is that of a run of k steps, and one long run measures every shorter one).
    """
    if len(waves) != len(speakers):
        raise ValueError(f"{len(waves)} clips but {len(speakers)} speaker labels")
    classes = sorted(set(speakers), key=str)
    label_of = {c: i for i, c in enumerate(classes)}
    labels = torch.tensor([label_of[c] for c in speakers])
    feats = list(features) if features is not None else [clip_features(w, s) for w in waves]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(s)
        head = AAMSoftmax(s.embed_dim, len(classes), s.margin, s.scale,
                          fallback=s.variant != "reference")
    params = [*model.parameters(), *head.parameters()]
    opt_class = torch.optim.AdamW if s.optimizer == "adamw" else torch.optim.Adam
    opt = opt_class(params, lr=s.lr, weight_decay=s.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    bounds = _batch_bounds(len(feats), s.batch_size)
    per_epoch = len(bounds)
    total = s.steps if s.steps is not None else s.epochs * per_epoch
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    head.train()
    losses: list[float] = []
    order: list[int] = []
    step = 0
    while step < total:
        epoch = step // per_epoch
        if step % per_epoch == 0:
            order = torch.randperm(len(feats), generator=gen).tolist()
        lo, hi = bounds[step % per_epoch]
        idx = order[lo:hi]
        if s.variant == "reference":
            batch = torch.stack([feats[i] for i in idx])
        else:
            batch = torch.stack([_crop(feats[i], s.crop_frames, gen) for i in idx])
        batch = _normalise(batch, s)
        for group in opt.param_groups:
            group["lr"] = s.lr * _lr_factor(s, step, epoch)
        loss = loss_fn(head(model(batch), labels[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if after_step is not None:
            after_step(TrainedEcapa(model, head, s, losses))
            model.train()
    return TrainedEcapa(model, head, s, losses)


@torch.no_grad()
def embed(trained: TrainedEcapa, waves: Sequence[torch.Tensor],
          features: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Embeddings (clips, embed_dim) of whole clips (the reference: of their first crop_s
    seconds), in eval mode, clips of one length batched together."""
    s = trained.settings
    feats = list(features) if features is not None else [clip_features(w, s) for w in waves]
    model = trained.model
    model.eval()
    out = torch.empty(len(feats), s.embed_dim)
    by_length: dict[int, list[int]] = {}
    for i, f in enumerate(feats):
        by_length.setdefault(f.shape[0], []).append(i)
    for _, idx in sorted(by_length.items()):
        for start in range(0, len(idx), 64):
            part = idx[start : start + 64]
            out[part] = model(_normalise(torch.stack([feats[i] for i in part]), s))
    return out


def all_features(waves: Mapping[str, torch.Tensor], s: EcapaSettings) -> dict[str,
                                                                            torch.Tensor]:
    """Every clip's `clip_features`, for a worker to compute once and pass to each run."""
    return {c: clip_features(w, s) for c, w in waves.items()}


def run_speaker(spec: RunSpec, manifest: pd.DataFrame, trials: pd.DataFrame,
                waves: Mapping[str, torch.Tensor], s: EcapaSettings,
                features: Mapping[str, torch.Tensor] | None = None,
                probes: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """One run of the speaker task with ECAPA: train on the spec's clips of the speaker
    subsets (`training_clips`: D_i, with D'_i or the donor's D_j), score the target's trials.

    Returns a plain record in the worker's shape (score = AUC, eer, eval_trials, losses,
    steps, train_clips, wall_s). `features`: clip -> `clip_features`, if the caller caches them.
    `probes`: language -> probe clips (`grid.probe_clips`); the record then holds the run's
    float16 embeddings of the target's probes and, for a cross run, of the donor's, as the
    worker's `probes` entry.
    """
    start = time.perf_counter()
    rows = training_clips(manifest, spec)

    def feats_of(clips: Sequence[str]) -> list[torch.Tensor] | None:
        return None if features is None else [features[c] for c in clips]

    train_clips = rows["clip"].tolist()
    trained = train_ecapa([waves[c] for c in train_clips], rows["speaker"].tolist(), s,
                          spec.seed, feats_of(train_clips))
    evaluation = manifest[(manifest["language"] == spec.target) & (manifest["role"] == "eval")]
    eval_clips = evaluation["clip"].tolist()
    emb = embed(trained, [waves[c] for c in eval_clips], feats_of(eval_clips))
    t = trials[trials["language"] == spec.target]
    scores = loop.cosine_scores(emb, {c: i for i, c in enumerate(eval_clips)},
                                 t["a"].tolist(), t["b"].tolist())
    auc, eer = loop.auc_eer(scores, t["label"].to_numpy())
    extra: dict[str, Any] = {}
    if probes:
        position = {c: i for i, c in enumerate(eval_clips)}
        found = {"target": emb[[position[c] for c in probes[spec.target]]]}
        if spec.condition == "cross" and probes.get(spec.donor):
            donor = list(probes[spec.donor])
            found["donor"] = embed(trained, [waves[c] for c in donor], feats_of(donor))
        extra["probes"] = {k: v.numpy().astype(np.float16) for k, v in found.items()}
    return {
        **spec.as_dict(),
        "run_id": spec.run_id,
        "score": auc,
        "eer": eer,
        "eval_trials": len(t),
        "loss_final": trained.losses[-1] if trained.losses else float("nan"),
        "loss_mean": float(np.mean(trained.losses)) if trained.losses else float("nan"),
        "steps": len(trained.losses),
        "train_clips": len(rows),
        "wall_s": time.perf_counter() - start,
        **extra,
    }
