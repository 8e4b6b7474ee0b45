"""One plain run of any task's recipe: train a head (and the encoder, when fine-tuned), score it.

A run is: seed every random source, put a new linear head on the pooled encoder, fine-tune
everything with AdamW at a constant learning rate, then score on the target's evaluation set.
With a frozen encoder (`train.encoder: frozen`) the encoder's pooled features are computed once
per clip and a run trains only a `FrozenHead` on them.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score, roc_curve
from torch import nn
from transformers import PreTrainedModel

from cltm.train.model import forward, masked_mean, masked_std, normalise, pad_batch

# Clips per evaluation batch. On CPU large padded batches fall out of the cache: embedding the
# demo's 50 eval clips took 0.54 s at 16 a batch and 0.18 s at 8 (2 threads).
EVAL_BATCH = {"cpu": 8, "cuda": 16}


@dataclass(frozen=True)
class TrainParams:
    lr: float
    weight_decay: float
    grad_clip: float
    epochs: int
    batch_size: int
    precision: str  # fp32 | fp16 | bf16
    head_init: str  # random | zero
    head_lr_scale: float  # the head's lr as a multiple of lr
    encoder: str  # finetune | frozen


def seed_everything(seed: int) -> None:
    """One seed drives every random source a run touches.

    The head's initialisation and dropout draw from torch's generator, LayerDrop too;
    HuggingFace's SpecAugment masks draw from numpy's global generator.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield list(order[start : start + size])


def pooled(encoder: PreTrainedModel, waves: list[torch.Tensor], device: torch.device,
           do_normalize: bool, last_layers: int = 1, stats: bool = False) -> torch.Tensor:
    """Mean over valid frames of the mean of the last `last_layers` hidden layers; with `stats`
    their standard deviation over frames too (statistics pooling), concatenated."""
    batch, lengths = pad_batch(waves, device)
    if do_normalize:
        batch = normalise(batch, lengths)
    out, mask = forward(encoder, batch, lengths, hidden_states=last_layers > 1)
    if last_layers == 1:
        states = out.last_hidden_state
    else:
        states = torch.stack(out.hidden_states[-last_layers:]).mean(0)
    mean = masked_mean(states.float(), mask)
    return torch.cat([mean, masked_std(states.float(), mask)], -1) if stats else mean


def new_head(in_features: int, classes: int, init: str, device: torch.device) -> nn.Linear:
    """The task's linear head. Built the same way under either init, so the seed's generator
    is at the same place afterwards (dropout and LayerDrop draw the same masks)."""
    head = nn.Linear(in_features, classes)
    if init == "zero":
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    elif init != "random":
        raise ValueError(f"unknown head init {init!r} (random | zero)")
    return head.to(device)


def train(
    encoder: PreTrainedModel,
    head: nn.Linear,
    waves: list[torch.Tensor],
    labels: torch.Tensor,
    params: TrainParams,
    seed: int,
    device: torch.device,
    do_normalize: bool,
) -> list[float]:
    """Fine-tune encoder and head in place; return the loss of every step."""
    encoder.train()
    head.train()
    opt = torch.optim.AdamW(
        [{"params": list(encoder.parameters())},
         {"params": list(head.parameters()), "lr": params.lr * params.head_lr_scale}],
        lr=params.lr, weight_decay=params.weight_decay,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=params.precision == "fp16")
    order_rng = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    for _ in range(params.epochs):
        order = torch.randperm(len(waves), generator=order_rng).tolist()
        for idx in _batches(order, params.batch_size):
            with _autocast(device, params.precision):
                features = pooled(encoder, [waves[i] for i in idx], device, do_normalize)
                logits = head(features)
            loss = loss_fn(logits.float(), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_([*encoder.parameters(), *head.parameters()],
                                           params.grad_clip)
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def embed(encoder: PreTrainedModel, waves: list[torch.Tensor], device: torch.device,
          do_normalize: bool, precision: str, last_layers: int,
          stats: bool = False) -> torch.Tensor:
    """Pooled representations of many clips, batched by similar length (padding is exact)."""
    encoder.eval()
    order = np.argsort([w.numel() for w in waves], kind="stable")
    out = torch.empty(len(waves), encoder.config.hidden_size * (2 if stats else 1))
    for idx in _batches(order.tolist(), EVAL_BATCH.get(device.type, 16)):
        with _autocast(device, precision):
            out[idx] = pooled(encoder, [waves[i] for i in idx], device, do_normalize,
                              last_layers, stats).cpu().float()
    return out


class FrozenHead(nn.Module):
    """What a frozen-encoder run trains: standardise the pooled features by the training clips'
    mean and SD, project them (speaker: the projection's output is the verification embedding;
    gender: none), classify. Built on CPU, where a head this small trains fastest."""

    def __init__(self, features: torch.Tensor, classes: int, project: bool, init: str) -> None:
        super().__init__()
        dim = features.shape[1]
        self.register_buffer("mean", features.mean(0))
        # A feature constant over the training clips must not blow up: floor its scale.
        self.register_buffer("scale", features.std(0, unbiased=False).clamp_min(1e-4))
        # The projection always starts at random (a zero one would never move); the seed's
        # generator draws it, then the classifier as new_head draws it.
        self.project: nn.Module = nn.Linear(dim, dim) if project else nn.Identity()
        self.classify = new_head(dim, classes, init, torch.device("cpu"))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.project((features - self.mean) / self.scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(features))


def train_frozen(head: FrozenHead, features: torch.Tensor, labels: torch.Tensor,
                 params: TrainParams) -> list[float]:
    """Train a frozen-encoder run's head: one full-batch AdamW step per epoch at
    lr x head_lr_scale; return the loss of every step. Full batch: no data order to draw."""
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=params.lr * params.head_lr_scale,
                            weight_decay=params.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    for _ in range(params.epochs):
        loss = loss_fn(head(features), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(head.parameters()), params.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def classify(head: nn.Linear, features: torch.Tensor, device: torch.device) -> np.ndarray:
    """The head's class for each pooled feature row."""
    head.eval()
    return head(features.to(device)).argmax(-1).cpu().numpy()


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    return float(f1_score(y_true, y_pred, average="macro", labels=[0, 1], zero_division=0))


def auc_eer(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """ROC AUC and the equal error rate (where the false-positive and miss rates cross)."""
    auc = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1.0 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    # interpolate between the two ROC points that straddle the crossing
    if i + 1 < len(fpr) and (fnr[i] - fpr[i]) * (fnr[i + 1] - fpr[i + 1]) < 0:
        d0, d1 = fnr[i] - fpr[i], fnr[i + 1] - fpr[i + 1]
        w = d0 / (d0 - d1)
        return auc, float(fpr[i] + w * (fpr[i + 1] - fpr[i]))
    return auc, float((fpr[i] + fnr[i]) / 2)


def cosine_scores(embeddings: torch.Tensor, index: dict[str, int], a: Sequence[str],
                  b: Sequence[str]) -> np.ndarray:
    e = torch.nn.functional.normalize(embeddings, dim=-1)
    ia = torch.tensor([index[c] for c in a])
    ib = torch.tensor([index[c] for c in b])
    return (e[ia] * e[ib]).sum(-1).numpy()
