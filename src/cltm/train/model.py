"""The encoder: load it (or build a small random one), normalise its input, pool its frames.

Any encoder of the wav2vec 2.0 family (layout.ENCODER_TYPES: HuBERT and mHuBERT-147, wav2vec
2.0 / XLS-R / MMS, WavLM, data2vec-audio), through transformers' Auto classes.

Padding-exact batching, so that a padded batch gives each clip the features it would get alone:
- `feat_extract_norm: group` (HuBERT-base, wav2vec 2.0 base) normalises the first convolution
  with a GroupNorm of one group per channel, i.e. over time; zero-padding a clip would change its
  statistics and so every feature. `MaskedGroupNorm` computes them over the valid frames only.
- `feat_extract_norm: layer` (XLS-R, WavLM-large, data2vec-audio) normalises each frame on its
  own: nothing to do.
- Later convolutions never read past a clip's valid frames, and the transformer masks padded
  frames (the attention mask is always passed, and the encoder zeroes padded frames before its
  positional convolution). data2vec-audio's positional embedding stacks several convolutions,
  the later ones reading what the earlier wrote into padded frames: `MaskedPositionalConv`
  zeroes those frames after each one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.models.data2vec.modeling_data2vec_audio import (
    Data2VecAudioPositionalConvEmbedding,
)

from cltm.data.pack import SAMPLE_RATE
from cltm.errors import CltmError
from cltm.layout import ENCODER_TYPES

log = logging.getLogger(__name__)

NORM_EPS = 1e-7  # as the Wav2Vec2 feature extractor's zero_mean_unit_var_norm


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm with one group per channel whose statistics skip padded frames.

    `lengths` (valid frames per batch item) is set just before a forward pass; None behaves as
    plain GroupNorm. Parameters keep GroupNorm's names, so checkpoints load unchanged.
    """

    lengths: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lengths is None:
            return super().forward(x)
        if x.is_cuda:
            return self._masked(x)
        # On CPU one plain GroupNorm per clip over its valid frames is 3x faster than the
        # masked arithmetic over the whole padded tensor (measured on the demo's eval batches),
        # and gives each clip exactly what it gets alone. Padded frames stay 0.
        y = torch.zeros_like(x)
        for i, n in enumerate(self.lengths.tolist()):
            y[i, :, :n] = F.group_norm(x[i : i + 1, :, :n], self.num_groups, self.weight,
                                       self.bias, self.eps)[0]
        return y

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        # One pass for the whole batch: a Python loop would launch a kernel per clip.
        t = torch.arange(x.shape[-1], device=x.device)
        mask = (t[None, :] < self.lengths[:, None]).to(x.dtype)[:, None, :]
        n = self.lengths.to(x.dtype)[:, None, None]
        mean = (x * mask).sum(-1, keepdim=True) / n
        var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / n
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight[None, :, None] + self.bias[None, :, None]


class MaskedPositionalConv(Data2VecAudioPositionalConvEmbedding):
    """data2vec-audio's stacked positional convolutions, zeroing padded frames between them.

    `frames` (valid frames per batch item) is set just before a forward pass; None behaves as
    the original. Same parameters, so checkpoints load unchanged.
    """

    frames: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.transpose(1, 2)
        keep = None
        if self.frames is not None:
            t = torch.arange(x.shape[-1], device=x.device)
            keep = (t[None, :] < self.frames[:, None]).to(x.dtype)[:, None, :]
        for layer in self.layers:
            x = layer(x)
            if keep is not None:
                x = x * keep
        return x.transpose(1, 2)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _check_type(model_type: str, where: str) -> None:
    if model_type not in ENCODER_TYPES:
        raise CltmError(
            f"{where} is a {model_type!r} model; the pipeline runs the speech encoders of the "
            f"wav2vec 2.0 family (Hugging Face model types {', '.join(ENCODER_TYPES)}): "
            "HuBERT and mHuBERT-147, wav2vec 2.0, XLS-R and MMS, WavLM, data2vec-audio. "
            "Whisper's encoder and text models are not among them.")


def encoder_config(overrides: dict[str, Any], where: str = "model.random_init"
                   ) -> PretrainedConfig:
    """The config of a small encoder: `overrides`, whose `model_type` (required, checked with
    the params) names its family."""
    overrides = dict(overrides)
    model_type = overrides.pop("model_type")
    _check_type(model_type, where)
    try:
        return AutoConfig.for_model(model_type, **overrides)
    except (TypeError, ValueError) as exc:
        raise CltmError(f"{where} is not a valid {model_type} config: {exc}") from exc


def build_random_encoder(overrides: dict[str, Any], seed: int) -> PreTrainedModel:
    """A randomly initialised encoder from config overrides (demo and tests)."""
    config = encoder_config(overrides)
    torch.manual_seed(seed)
    return AutoModel.from_config(config)


def load_pretrained(name_or_path: str) -> tuple[PreTrainedModel, bool]:
    """Load weights from a local directory or the Hugging Face hub; return (model, do_normalize)."""
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not Path(name_or_path).expanduser().is_dir():
        raise CltmError(
            f"model.name_or_path: {name_or_path} is not a directory. It must hold the model's "
            "config.json and weights, e.g. after `huggingface-cli download "
            "utter-project/mHuBERT-147 --local-dir models/mHuBERT-147`."
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
        _check_type(config.model_type, f"model.name_or_path {name_or_path!r}")
        model = AutoModel.from_pretrained(name_or_path)
    except OSError as exc:
        raise CltmError(
            f"could not load the encoder {name_or_path!r}: the weights are not on this machine "
            "and the Hugging Face hub could not be reached. On a machine with network access run "
            f"`huggingface-cli download {name_or_path} --local-dir models/mHuBERT-147`, copy "
            "that directory here, and set model.name_or_path: models/mHuBERT-147. "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return model, _do_normalize(name_or_path)


def _do_normalize(name_or_path: str) -> bool:
    """What the model's feature-extractor config says about amplitude normalisation; its
    sampling rate must be the one the audio is decoded at."""
    from transformers import AutoFeatureExtractor

    try:
        extractor = AutoFeatureExtractor.from_pretrained(name_or_path)
    except OSError:
        log.warning("no feature-extractor config for %s; normalising each utterance to zero "
                    "mean and unit variance (HuBERT's default)", name_or_path)
        return True
    rate = getattr(extractor, "sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise CltmError(f"{name_or_path} expects audio at {rate} Hz (its feature-extractor "
                        f"config); the pipeline decodes every clip to {SAMPLE_RATE} Hz, the rate "
                        "of the wav2vec 2.0 family's speech checkpoints")
    return bool(getattr(extractor, "do_normalize", True))


def load_encoder(name_or_path: str, random_init: dict[str, Any] | None,
                 init_seed: int) -> tuple[PreTrainedModel, bool]:
    """The encoder ready for padding-exact batches, and whether to normalise its input."""
    if random_init is not None:
        model, do_normalize = build_random_encoder(random_init, init_seed), True
    else:
        model, do_normalize = load_pretrained(name_or_path)
    first = model.feature_extractor.conv_layers[0]
    norm = getattr(first, "layer_norm", None)
    if isinstance(norm, nn.GroupNorm):
        norm.__class__ = MaskedGroupNorm  # same parameters, masked statistics
    positional = getattr(model.encoder, "pos_conv_embed", None)
    if isinstance(positional, Data2VecAudioPositionalConvEmbedding):
        positional.__class__ = MaskedPositionalConv
    # Nothing is frozen: the CNN feature encoder is fine-tuned too, as in the paper.
    for p in model.parameters():
        p.requires_grad_(True)
    return model, do_normalize


def pad_batch(waves: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in waves], device=device)
    batch = torch.zeros(len(waves), int(lengths.max()), device=device)
    for i, w in enumerate(waves):
        batch[i, : w.numel()] = w.to(device, non_blocking=True)
    return batch, lengths


def normalise(batch: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples; padding stays 0."""
    mask = (torch.arange(batch.shape[1], device=batch.device)[None, :] < lengths[:, None])
    mask = mask.to(batch.dtype)
    n = lengths.to(batch.dtype)[:, None]
    mean = (batch * mask).sum(1, keepdim=True) / n
    var = (((batch - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (batch - mean) / torch.sqrt(var + NORM_EPS) * mask


def frame_mask(model: PreTrainedModel, lengths: torch.Tensor, n_frames: int) -> torch.Tensor:
    frames = model._get_feat_extract_output_lengths(lengths)
    return torch.arange(n_frames, device=lengths.device)[None, :] < frames[:, None]


def forward(model: PreTrainedModel, batch: torch.Tensor, lengths: torch.Tensor,
            hidden_states: bool = False) -> tuple[Any, torch.Tensor]:
    """Run the encoder on a padded batch; return (model output, valid-frame mask)."""
    first = model.feature_extractor.conv_layers[0]
    norm = getattr(first, "layer_norm", None)
    positional = getattr(model.encoder, "pos_conv_embed", None)
    padded = bool((lengths != batch.shape[1]).any())
    attention = None
    if padded:
        attention = (torch.arange(batch.shape[1], device=batch.device)[None, :]
                     < lengths[:, None]).long()
        if isinstance(norm, MaskedGroupNorm):
            conv = first.conv
            norm.lengths = torch.div(lengths - conv.kernel_size[0], conv.stride[0],
                                     rounding_mode="floor") + 1
        if isinstance(positional, MaskedPositionalConv):
            positional.frames = model._get_feat_extract_output_lengths(lengths)
    try:
        out = model(batch, attention_mask=attention, output_hidden_states=hidden_states)
    finally:
        if isinstance(norm, MaskedGroupNorm):
            norm.lengths = None
        if isinstance(positional, MaskedPositionalConv):
            positional.frames = None
    return out, frame_mask(model, lengths, out.last_hidden_state.shape[1])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid frames: x (B, F, H), mask (B, F) -> (B, H)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_std(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Standard deviation over valid frames (population): x (B, F, H), mask (B, F) -> (B, H)."""
    m = mask.to(x.dtype)[..., None]
    mean = (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    var = (((x - mean) * m) ** 2).sum(1) / m.sum(1).clamp_min(1.0)
    return var.sqrt()
