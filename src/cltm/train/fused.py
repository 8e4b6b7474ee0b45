"""K fine-tuning runs as one fused model (HFTA-style horizontal fusion).

Every parameter of the encoder and the head is stacked along a leading K axis, one slice per
run, loaded unchanged from the plain transformers model that `model.load_encoder` returns. Each
fused operator sits beside the plain module it must equal (and tests/test_fused.py checks it):

    fused_linear        nn.Linear                        one batched matmul (baddbmm over K)
    fused_conv1d        nn.Conv1d                        one grouped convolution (K groups)
    fused_group_norm    MaskedGroupNorm / nn.GroupNorm   statistics over each clip's frames
    fused_channel_norm  the feature encoder's LayerNorm  per frame, over channels
    fused_layer_norm    nn.LayerNorm                     per-run affine
    fused_attention     HubertAttention/Wav2Vec2Attention per-run, per-clip key mask
    fused_pos_conv      *PositionalConvEmbedding         weight norm + grouped conv, SamePad
    FusedEncoder        HubertModel / Wav2Vec2Model      both front ends, stable LN both ways
    FusedAdamW          torch.optim.AdamW (per run)      per-run step counts and skips
    clip_per_run        clip_grad_norm_ (per run)
    LossScales          GradScaler (per run)             an overflow skips that run's step only

Random streams are per run (`RunStreams`, seeded from the run's seed only): dropout masks are
drawn over the run's own shape (its clips, its longest clip) and then padded into the fused
tensor, LayerDrop and SpecAugment draw from the run's host generator. So a run draws the same
numbers alone (K = 1, the same code) or beside any partners, and its result does not depend on
them. The distributions are transformers': dropout rates, LayerDrop probability, SpecAugment's
mask_time_prob / mask_time_length / mask_time_min_masks (`_compute_mask_indices`), here over each
clip's valid frames.

Supported: HuBERT / mHuBERT-147 and wav2vec 2.0 (feat_extract_norm group or layer,
do_stable_layer_norm either way). `unsupported` names why another model (WavLM,
data2vec-audio, adapters, feature masking, batch-norm positional conv) cannot be fused; the
worker then runs it at K = 1 on the plain path.

This module is on the GPU hot path: it never imports dvc, mlflow or ray.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN

from cltm.train.model import NORM_EPS

SUPPORTED_TYPES = ("hubert", "wav2vec2")
#: GradScaler's defaults.
SCALE_INIT, SCALE_GROWTH, SCALE_BACKOFF, SCALE_INTERVAL = 2.0**16, 2.0, 0.5, 2000


def unsupported(config: PretrainedConfig) -> str | None:
    """Why this encoder cannot be fused (None: it can)."""
    if config.model_type not in SUPPORTED_TYPES:
        return (f"{config.model_type} is not fused (fused: {', '.join(SUPPORTED_TYPES)}); "
                "its runs train one at a time on the plain path")
    if getattr(config, "conv_pos_batch_norm", False):
        return "conv_pos_batch_norm is not fused"
    if getattr(config, "add_adapter", False) or getattr(config, "adapter_attn_dim", None):
        return "adapters are not fused"
    if getattr(config, "mask_feature_prob", 0.0) > 0:
        return "SpecAugment feature masking (mask_feature_prob > 0) is not fused"
    return None


# --- per-run random streams ---------------------------------------------------------------------

def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one named stream of a run."""
    state = np.random.SeedSequence([int(seed) % 2**63, zlib.crc32(stream.encode())])
    return int(state.generate_state(1, np.uint64)[0] & np.uint64(2**63 - 1))


class RunStreams:
    """A run's random sources, from its seed alone: `host` (CPU: LayerDrop, SpecAugment),
    `device` (dropout masks), `head` (the head's initialisation)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.host = torch.Generator().manual_seed(derive_seed(seed, "host"))
        self.device = torch.Generator(device=device).manual_seed(derive_seed(seed, "dropout"))
        self.head = torch.Generator().manual_seed(derive_seed(seed, "head"))


def span_mask(frames: Sequence[int], own_len: int, prob: float, length: int, min_masks: int,
              gen: torch.Generator) -> np.ndarray:
    """SpecAugment time spans of one run's clips, as transformers' `_compute_mask_indices`
    draws them (numbers of spans with its probabilistic rounding and caps, starts without
    replacement), each clip over its own valid frames, from the run's generator.
    Returns (clips, own_len) bool."""
    out = np.zeros((len(frames), own_len), dtype=bool)
    epsilon = float(torch.rand(1, generator=gen))

    def spans(n: int) -> int:
        num = max(int(prob * n / length + epsilon), min_masks)
        if num * length > own_len:
            num = own_len // length
        if n - (length - 1) < num:
            num = max(n - (length - 1), 0)
        return num

    if spans(own_len) == 0:
        return out
    for i, n in enumerate(frames):
        num = spans(n)
        if num == 0:
            continue
        starts = torch.randperm(n - (length - 1), generator=gen)[:num].numpy()
        idx = (starts[:, None] + np.arange(length)[None, :]).reshape(-1)
        out[i, np.minimum(idx, own_len - 1)] = True
    return out


@dataclass
class Noise:
    """The stochastic parts of one training forward pass of K runs.

    `clips[k]`: how many of lane k's B clips are the run's own this step (0: the lane idles);
    `frames` (K, B): valid frames per clip. Masks are drawn over each run's own shape."""

    streams: Sequence[RunStreams | None]
    clips: list[int]
    frames: torch.Tensor
    config: PretrainedConfig
    layer_keep: torch.Tensor = field(init=False)  # (K, L) bool
    own_len: list[int] = field(init=False)
    layer: int | None = None  # the transformer layer being computed (its skippers draw nothing)

    def __post_init__(self) -> None:
        c = self.config
        K, L = len(self.streams), c.num_hidden_layers
        frames = self.frames.cpu().tolist()
        self.own_len = [max(frames[k][: self.clips[k]], default=0) for k in range(K)]
        keep = torch.ones(K, L, dtype=torch.bool)
        for k, s in enumerate(self.streams):
            if s is not None and self.clips[k] and c.layerdrop > 0:
                keep[k] = torch.rand(L, generator=s.host) >= c.layerdrop
        self.layer_keep = keep

    def spec_mask(self, T: int) -> torch.Tensor | None:
        """(K, B, T) bool: frames replaced by masked_spec_embed, or None when off."""
        c = self.config
        if not getattr(c, "apply_spec_augment", True) or c.mask_time_prob <= 0:
            return None
        K, B = self.frames.shape
        out = np.zeros((K, B, T), dtype=bool)
        frames = self.frames.cpu().tolist()
        for k, s in enumerate(self.streams):
            n = self.clips[k]
            if s is None or n == 0:
                continue
            own = span_mask(frames[k][:n], self.own_len[k], c.mask_time_prob,
                            c.mask_time_length, c.mask_time_min_masks, s.host)
            out[k, :n, : self.own_len[k]] = own
        return torch.from_numpy(out)

    def dropout(self, x: torch.Tensor, p: float, attention: bool = False) -> torch.Tensor:
        """x (K, B, T, C), or attention weights (K, B, H, T, T) with `attention`."""
        if p <= 0:
            return x
        B = x.shape[1]
        T = x.shape[-2]
        masks = []
        for k, s in enumerate(self.streams):
            n, t = self.clips[k], self.own_len[k]
            skipped = self.layer is not None and not bool(self.layer_keep[k, self.layer])
            if s is None or n == 0 or skipped:
                masks.append(torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device))
                continue
            own = (n, x.shape[2], t, t) if attention else (n, t, x.shape[-1])
            keep = (torch.rand(own, generator=s.device, device=x.device) >= p).to(x.dtype)
            pad = (0, T - t, 0, T - t) if attention else (0, 0, 0, T - t)
            masks.append(F.pad(F.pad(keep, pad), (0, 0) * (len(own) - 1) + (0, B - n)))
        return x * torch.stack(masks) * (1.0 / (1.0 - p))


# --- fused operators, each beside the plain one it equals --------------------------------------

def fused_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """nn.Linear per run: x (K, ..., in), w (K, out, in), b (K, out) -> (K, ..., out)."""
    K, shape = x.shape[0], x.shape[1:-1]
    flat = x.reshape(K, -1, x.shape[-1])
    wt = w.transpose(1, 2)
    y = torch.bmm(flat, wt) if b is None else torch.baddbmm(b[:, None, :], flat, wt)
    return y.reshape(K, *shape, w.shape[1])


def fused_conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int = 1,
                 padding: int = 0, groups: int = 1) -> torch.Tensor:
    """nn.Conv1d per run as one grouped convolution: x (B, K*Cin, T), w (K, Cout, Cin/g, k),
    b (K, Cout) -> (B, K*Cout, T')."""
    K = w.shape[0]
    return F.conv1d(x, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                    stride=stride, padding=padding, groups=K * groups)


def _frame_mask(frames: torch.Tensor, T: int) -> torch.Tensor:
    """(K, B) valid frames -> (K, B, T) bool."""
    return torch.arange(T, device=frames.device) < frames[..., None]


def fused_group_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float,
                     frames: torch.Tensor) -> torch.Tensor:
    """MaskedGroupNorm (one group per channel, statistics over each clip's valid frames) per
    run: x (B, K*C, T), w, b (K, C), frames (K, B)."""
    B, KC, T = x.shape
    K, C = w.shape
    xv = x.reshape(B, K, C, T)
    m = _frame_mask(frames, T).transpose(0, 1)[:, :, None, :].to(x.dtype)  # (B, K, 1, T)
    n = frames.transpose(0, 1).to(x.dtype)[:, :, None, None]
    mean = (xv * m).sum(-1, keepdim=True) / n
    var = (((xv - mean) * m) ** 2).sum(-1, keepdim=True) / n
    y = (xv - mean) * torch.rsqrt(var + eps)
    return (y * w[None, :, :, None] + b[None, :, :, None]).reshape(B, KC, T)


def fused_channel_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """The feature encoder's LayerNorm over channels of each frame per run: x (B, K*C, T)."""
    B, KC, T = x.shape
    K, C = w.shape
    y = F.layer_norm(x.reshape(B, K, C, T).transpose(2, 3), (C,), eps=eps)
    y = y * w[None, :, None, :] + b[None, :, None, :]
    return y.transpose(2, 3).reshape(B, KC, T)


def fused_layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                     eps: float) -> torch.Tensor:
    """nn.LayerNorm per run: x (K, ..., C), w, b (K, C)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w.reshape(shape) + b.reshape(shape)


def weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """nn.utils.parametrizations.weight_norm(dim=2) per run: g (K, 1, 1, k), v (K, O, I, k)."""
    return v * (g / v.norm(dim=(1, 2), keepdim=True))


def fused_pos_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, kernel: int,
                   groups: int, activation: nn.Module) -> torch.Tensor:
    """HubertPositionalConvEmbedding / Wav2Vec2PositionalConvEmbedding per run (weight-normed
    grouped conv, SamePad, activation): x (K, B, T, C) -> (K, B, T, C)."""
    K, B, T, C = x.shape
    y = fused_conv1d(x.permute(1, 0, 3, 2).reshape(B, K * C, T), weight, bias,
                     padding=kernel // 2, groups=groups)
    if kernel % 2 == 0:
        y = y[:, :, :-1]
    return activation(y).reshape(B, K, C, T).permute(1, 0, 3, 2)


def fused_attention(x: torch.Tensor, p: dict[str, torch.Tensor], prefix: str, heads: int,
                    valid: torch.Tensor, noise: Noise | None, dropout: float) -> torch.Tensor:
    """HubertAttention per run, each clip attending to its own valid frames:
    x (K, B, T, C), valid (K, B, T) bool."""
    K, B, T, C = x.shape
    D = C // heads

    def proj(name: str) -> torch.Tensor:
        y = fused_linear(x, p[f"{prefix}.{name}.weight"], p[f"{prefix}.{name}.bias"])
        return y.reshape(K * B, T, heads, D).transpose(1, 2)

    q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
    keys = valid.reshape(K * B, 1, 1, T)
    if noise is not None and dropout > 0:
        scores = torch.matmul(q, k.transpose(2, 3)) * D**-0.5
        scores = scores.masked_fill(~keys, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        weights = noise.dropout(weights.reshape(K, B, heads, T, T), dropout, attention=True)
        out = torch.matmul(weights.reshape(K * B, heads, T, T), v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=D**-0.5)
    out = out.transpose(1, 2).reshape(K, B, T, C)
    return fused_linear(out, p[f"{prefix}.out_proj.weight"], p[f"{prefix}.out_proj.bias"])


# --- the fused encoder --------------------------------------------------------------------------

def _plain_name(name: str) -> str:
    """HF parameter names, with the positional conv's weight norm as weight_g / weight_v."""
    return (name.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"))


def plain_parameters(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The model's parameters by (normalised) name."""
    return {_plain_name(n): p for n, p in model.named_parameters()}


class FusedEncoder(nn.Module):
    """K copies of a HuBERT / wav2vec 2.0 encoder (+ a linear head per run), parameters stacked
    along a leading K axis under the plain model's names (`params`)."""

    def __init__(self, model: PreTrainedModel, k: int, state: dict[str, torch.Tensor] | None = None
                 ) -> None:
        super().__init__()
        reason = unsupported(model.config)
        if reason:
            raise ValueError(reason)
        self.config = model.config
        self.k = k
        source = plain_parameters(model)
        if state is not None:  # a plain state dict (the worker's initial weights)
            source = {n: state[_state_key(n, state)] for n in source}
        self._names: dict[str, str] = {}
        for name, value in source.items():
            stacked = value.detach().unsqueeze(0).repeat(k, *([1] * value.dim())).clone()
            self._add(name, stacked)
        c = self.config
        first = model.feature_extractor.conv_layers[0]
        self.group_norm = isinstance(getattr(first, "layer_norm", None), nn.GroupNorm)
        self.conv_eps = [getattr(getattr(layer, "layer_norm", None), "eps", 1e-5)
                         for layer in model.feature_extractor.conv_layers]
        self.feat_act = ACT2FN[c.feat_extract_activation]
        self.hidden_act = ACT2FN[c.hidden_act] if isinstance(c.hidden_act, str) else c.hidden_act
        proj = model.feature_projection
        self.proj_norm = getattr(proj, "layer_norm", None) is not None and getattr(
            proj, "feat_proj_layer_norm", True)
        self.stable = bool(c.do_stable_layer_norm)
        self.classes: list[int] = []

    def _add(self, name: str, value: torch.Tensor) -> None:
        safe = name.replace(".", "__")
        self._names[name] = safe
        self.register_parameter(safe, nn.Parameter(value))

    @property
    def params(self) -> dict[str, nn.Parameter]:
        return {n: getattr(self, s) for n, s in self._names.items()}

    # -- heads ----------------------------------------------------------------------------------

    def set_heads(self, classes: Sequence[int], init: str,
                  streams: Sequence[RunStreams]) -> None:
        """A new linear head per run (nn.Linear's initialisation, drawn from the run's head
        stream; `zero`: zeros), padded to the largest class count."""
        H, cmax = self.config.hidden_size, max(classes)
        device = next(self.parameters()).device
        w = torch.zeros(self.k, cmax, H)
        b = torch.zeros(self.k, cmax)
        if init not in ("random", "zero"):
            raise ValueError(f"unknown head init {init!r} (random | zero)")
        for i, (n, s) in enumerate(zip(classes, streams)):
            if init == "random":
                wi = torch.empty(n, H)
                nn.init.kaiming_uniform_(wi, a=math.sqrt(5), generator=s.head)
                bound = 1 / math.sqrt(H)
                w[i, :n] = wi
                b[i, :n] = torch.empty(n).uniform_(-bound, bound, generator=s.head)
        for name, value in (("head.weight", w), ("head.bias", b)):
            if name in self._names:
                delattr(self, self._names.pop(name))
            self._add(name, value.to(device))
        self.classes = list(classes)

    def head(self, k: int) -> nn.Linear:
        """Run k's head as a plain nn.Linear (a copy)."""
        p = self.params
        n = self.classes[k]
        head = nn.Linear(self.config.hidden_size, n).to(p["head.weight"].device)
        with torch.no_grad():
            head.weight.copy_(p["head.weight"][k, :n])
            head.bias.copy_(p["head.bias"][k, :n])
        return head

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """(K, B, H) -> (K, B, max classes) float; a run's padded classes at -inf."""
        p = self.params
        out = fused_linear(pooled, p["head.weight"], p["head.bias"]).float()
        cls = torch.tensor(self.classes, device=out.device)
        pad = torch.arange(out.shape[-1], device=out.device)[None, :] >= cls[:, None]
        return out.masked_fill(pad[:, None, :], float("-inf"))

    def plain_state(self, k: int) -> dict[str, torch.Tensor]:
        """Run k's encoder weights under the plain model's state-dict names."""
        out = {}
        for name, p in self.params.items():
            if name.startswith("head."):
                continue
            key = (name.replace("weight_g", "parametrizations.weight.original0")
                   .replace("weight_v", "parametrizations.weight.original1"))
            out[key] = p[k].detach()
        return out

    # -- forward --------------------------------------------------------------------------------

    def frames_of(self, lengths: torch.Tensor) -> torch.Tensor:
        for kernel, stride in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, noise: Noise | None = None,
                hidden_states: bool = False
                ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """waves (K, B, S) zero-padded, lengths (K, B) -> (last hidden state (K, B, T, C),
        hidden states as transformers returns them (if asked), frames (K, B), parameters used
        per run {name: (K,) bool} for the optimiser: a layer LayerDrop skipped, or the mask
        embedding without SpecAugment, has no gradient in the plain model)."""
        c, p, K = self.config, self.params, self.k
        B = waves.shape[1]
        x = waves.transpose(0, 1)  # (B, K, S): K runs of one input channel
        frames = None
        for i in range(c.num_feat_extract_layers):
            pre = f"feature_extractor.conv_layers.{i}"
            x = fused_conv1d(x, p[f"{pre}.conv.weight"], p.get(f"{pre}.conv.bias"),
                             stride=c.conv_stride[i])
            if i == 0 and self.group_norm:
                conv0 = torch.div(lengths - c.conv_kernel[0], c.conv_stride[0],
                                  rounding_mode="floor") + 1
                x = fused_group_norm(x, p[f"{pre}.layer_norm.weight"],
                                     p[f"{pre}.layer_norm.bias"], self.conv_eps[0], conv0)
            elif not self.group_norm:
                x = fused_channel_norm(x, p[f"{pre}.layer_norm.weight"],
                                       p[f"{pre}.layer_norm.bias"], self.conv_eps[i])
            x = self.feat_act(x)
        T = x.shape[-1]
        frames = self.frames_of(lengths)
        valid = _frame_mask(frames, T)  # (K, B, T)
        h = x.reshape(B, K, -1, T).permute(1, 0, 3, 2)  # (K, B, T, C)
        if self.proj_norm:
            h = fused_layer_norm(h, p["feature_projection.layer_norm.weight"],
                                 p["feature_projection.layer_norm.bias"], c.layer_norm_eps)
        h = fused_linear(h, p["feature_projection.projection.weight"],
                         p["feature_projection.projection.bias"])
        used: dict[str, torch.Tensor] = {}
        if noise is not None:
            h = noise.dropout(h, c.feat_proj_dropout)
            spec = noise.spec_mask(T)
            if spec is not None:
                spec = spec.to(h.device)
                embed = p["masked_spec_embed"].to(h.dtype)[:, None, None, :]
                h = torch.where(spec[..., None], embed, h)
                used["masked_spec_embed"] = torch.tensor([n > 0 for n in noise.clips])
        if "masked_spec_embed" in p and "masked_spec_embed" not in used:
            used["masked_spec_embed"] = torch.zeros(K, dtype=torch.bool)
        h = h * valid[..., None].to(h.dtype)  # transformers zeroes padded frames here
        pos = "encoder.pos_conv_embed.conv"
        h = h + fused_pos_conv(h, weight_norm(p[f"{pos}.weight_g"], p[f"{pos}.weight_v"]),
                               p[f"{pos}.bias"], c.num_conv_pos_embeddings,
                               c.num_conv_pos_embedding_groups, self.feat_act)
        if not self.stable:
            h = fused_layer_norm(h, p["encoder.layer_norm.weight"], p["encoder.layer_norm.bias"],
                                 c.layer_norm_eps)
        if noise is not None:
            h = noise.dropout(h, c.hidden_dropout)
        states = [h] if hidden_states else []
        for i in range(c.num_hidden_layers):
            keep = noise.layer_keep[:, i] if noise is not None else None
            if keep is not None and not keep.any():
                states.extend([h] if hidden_states else [])
                used.update(self._layer_used(i, keep))
                continue
            if noise is not None:
                noise.layer = i
            out = self._layer(h, i, valid, noise)
            if noise is not None:
                noise.layer = None
            if keep is not None and not keep.all():
                out = torch.where(keep.to(h.device)[:, None, None, None], out, h)
            if keep is not None:
                used.update(self._layer_used(i, keep))
            h = out
            if hidden_states:
                states.append(h)
        if self.stable:
            h = fused_layer_norm(h, p["encoder.layer_norm.weight"], p["encoder.layer_norm.bias"],
                                 c.layer_norm_eps)
        return h, states, frames, used

    def _layer_used(self, i: int, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        pre = f"encoder.layers.{i}."
        return {n: keep for n in self._names if n.startswith(pre)}

    def _layer(self, h: torch.Tensor, i: int, valid: torch.Tensor,
               noise: Noise | None) -> torch.Tensor:
        c, p = self.config, self.params
        pre = f"encoder.layers.{i}"

        def ln(x: torch.Tensor, name: str) -> torch.Tensor:
            return fused_layer_norm(x, p[f"{pre}.{name}.weight"], p[f"{pre}.{name}.bias"],
                                    c.layer_norm_eps)

        def drop(x: torch.Tensor, rate: float) -> torch.Tensor:
            return x if noise is None else noise.dropout(x, rate)

        def ff(x: torch.Tensor) -> torch.Tensor:
            f = f"{pre}.feed_forward"
            x = fused_linear(x, p[f"{f}.intermediate_dense.weight"],
                             p[f"{f}.intermediate_dense.bias"])
            x = drop(self.hidden_act(x), c.activation_dropout)
            x = fused_linear(x, p[f"{f}.output_dense.weight"], p[f"{f}.output_dense.bias"])
            return drop(x, c.hidden_dropout)

        def attn(x: torch.Tensor) -> torch.Tensor:
            a = fused_attention(x, p, f"{pre}.attention", c.num_attention_heads, valid, noise,
                                c.attention_dropout if noise is not None else 0.0)
            return drop(a, c.hidden_dropout)

        if self.stable:
            h = h + attn(ln(h, "layer_norm"))
            return h + ff(ln(h, "final_layer_norm"))
        h = ln(h + attn(h), "layer_norm")
        return ln(h + ff(h), "final_layer_norm")


def _state_key(name: str, state: dict[str, torch.Tensor]) -> str:
    if name in state:
        return name
    key = (name.replace("weight_g", "parametrizations.weight.original0")
           .replace("weight_v", "parametrizations.weight.original1"))
    return key if key in state else name


# --- padding and pooling ------------------------------------------------------------------------

#: The shortest input the feature encoder turns into one frame (HuBERT's and wav2vec 2.0's CNN);
#: an idle lane's placeholder clips have this length.
def min_samples(config: PretrainedConfig) -> int:
    n = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        n = (n - 1) * stride + kernel
    return n


def pad_lanes(lanes: Sequence[Sequence[torch.Tensor]], placeholder: int, device: torch.device,
              do_normalize: bool) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """K lanes of clips -> (waves (K, B, S), lengths (K, B), own clips per lane); a lane with
    fewer than B clips is filled with silent placeholders (never counted)."""
    K, B = len(lanes), max(1, max(len(lane) for lane in lanes))
    lengths = torch.full((K, B), placeholder, dtype=torch.long)
    for k, lane in enumerate(lanes):
        for b, w in enumerate(lane):
            lengths[k, b] = w.numel()
    waves = torch.zeros(K, B, int(lengths.max()))
    for k, lane in enumerate(lanes):
        for b, w in enumerate(lane):
            waves[k, b, : w.numel()] = w
    waves, lengths = waves.to(device, non_blocking=True), lengths.to(device)
    if do_normalize:
        mask = torch.arange(waves.shape[-1], device=device) < lengths[..., None]
        m = mask.to(waves.dtype)
        n = lengths.to(waves.dtype)[..., None]
        mean = (waves * m).sum(-1, keepdim=True) / n
        var = (((waves - mean) * m) ** 2).sum(-1, keepdim=True) / n
        waves = (waves - mean) / torch.sqrt(var + NORM_EPS) * m
    return waves, lengths, [len(lane) for lane in lanes]


def pool(states: torch.Tensor, frames: torch.Tensor, stats: bool = False) -> torch.Tensor:
    """Mean (and SD) over each clip's valid frames: (K, B, T, C) -> (K, B, C or 2C)."""
    m = _frame_mask(frames, states.shape[2]).to(states.dtype)[..., None]
    n = m.sum(2).clamp_min(1.0)
    mean = (states * m).sum(2) / n
    if not stats:
        return mean
    var = (((states - mean[:, :, None]) * m) ** 2).sum(2) / n
    return torch.cat([mean, var.sqrt()], -1)


# --- per-run optimisation -----------------------------------------------------------------------

def per_run_sq_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K,) sum over tensors of each run's squared gradient norm."""
    return sum(g.float().pow(2).flatten(1).sum(1) for g in grads)  # type: ignore[return-value]


def clip_per_run(grads: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ for each run on its own slices; returns the (K,) total norms."""
    norms = [g.float().flatten(1).norm(dim=1) for g in grads]
    total = torch.stack(norms).norm(dim=0)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1))))
    return total


class FusedAdamW:
    """torch.optim.AdamW (no amsgrad) run by run over stacked parameters: each run has its own
    moments and its own step count per tensor; a run whose tensor has no gradient this step
    (LayerDrop, an overflow, an idle lane) leaves that tensor, its moments and count alone,
    as torch skips a parameter whose .grad is None."""

    def __init__(self, params: dict[str, nn.Parameter], lr: dict[str, float],
                 weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.steps = {n: torch.zeros(p.shape[0], device=p.device) for n, p in params.items()}

    @torch.no_grad()
    def step(self, active: torch.Tensor, used: dict[str, torch.Tensor]) -> None:
        b1, b2 = self.betas
        for n, p in self.params.items():
            if p.grad is None:
                continue
            on = active.cpu()  # decided on the host: no device sync per tensor
            if n in used:
                on = on & used[n].cpu()
            if not bool(on.any()):
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            onb = on.to(p.device).reshape(shape)
            g, lr = p.grad, self.lr[n]
            step = self.steps[n] + on.to(self.steps[n].device, self.steps[n].dtype)
            self.steps[n] = step
            s = step.clamp_min(1.0).reshape(shape)
            m, v = self.exp_avg[n], self.exp_avg_sq[n]
            if bool(on.all()):  # the common case: in place, as torch's single-tensor AdamW
                p.mul_(1 - lr * self.wd)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / (1 - b2**s).sqrt()).add_(self.eps)
                p.sub_((lr / (1 - b1**s)) * (m / denom))
                continue
            m_new = m.lerp(g, 1 - b1)
            v_new = v * b2 + (1 - b2) * g * g
            denom = v_new.sqrt() / (1 - b2**s).sqrt() + self.eps
            new = p * (1 - lr * self.wd) - (lr / (1 - b1**s)) * (m_new / denom)
            p.copy_(torch.where(onb, new, p))
            m.copy_(torch.where(onb, m_new, m))
            v.copy_(torch.where(onb, v_new, v))


class LossScales:
    """torch.amp.GradScaler per run: its own scale and growth tracker; `unscale` returns which
    runs overflowed (their step is skipped, their scale backs off; the others go on)."""

    def __init__(self, k: int, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.scale = torch.full((k,), SCALE_INIT if enabled else 1.0, device=device)
        self.tracker = torch.zeros(k, dtype=torch.long, device=device)

    def unscale(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        K = self.scale.shape[0]
        if not self.enabled:
            return torch.zeros(K, dtype=torch.bool, device=self.scale.device)
        inv = self.scale.double().reciprocal().float()
        bad = torch.zeros(K, dtype=torch.bool, device=self.scale.device)
        for g in grads:
            g.mul_(inv.to(g.dtype).reshape(-1, *([1] * (g.dim() - 1))))
            bad |= ~torch.isfinite(g).flatten(1).all(1)
        return bad

    def update(self, stepped: torch.Tensor, overflow: torch.Tensor) -> None:
        """`stepped`: the runs that took (or tried) a step."""
        if not self.enabled:
            return
        grow = stepped & ~overflow
        tracker = torch.where(grow, self.tracker + 1, self.tracker)
        tracker = torch.where(stepped & overflow, torch.zeros_like(tracker), tracker)
        scale = torch.where(stepped & overflow, self.scale * SCALE_BACKOFF, self.scale)
        doubled = tracker >= SCALE_INTERVAL
        self.scale = torch.where(doubled, scale * SCALE_GROWTH, scale)
        self.tracker = torch.where(doubled, torch.zeros_like(tracker), tracker)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


# --- training and embedding K runs -------------------------------------------------------------

@dataclass
class RunData:
    """One run's training data: clips, class labels, seed, class count."""

    waves: list[torch.Tensor]
    labels: torch.Tensor
    seed: int
    classes: int


@dataclass
class FusedStats:
    """What a fused training spent: samples computed (with padding) and the runs' own."""

    steps: int = 0
    samples_padded: int = 0
    samples_own: int = 0

    @property
    def padding_share(self) -> float:
        return 1.0 - self.samples_own / self.samples_padded if self.samples_padded else 0.0


def run_orders(runs: Sequence[RunData], epochs: int, batch_size: int) -> list[list[list[int]]]:
    """Each run's batches (clip indices), epoch after epoch, from its seed (as loop.train)."""
    out = []
    for r in runs:
        gen = torch.Generator().manual_seed(r.seed)
        batches = []
        for _ in range(epochs):
            order = torch.randperm(len(r.waves), generator=gen).tolist()
            batches.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))
        out.append(batches)
    return out


class FusedTrainer:
    """Fine-tune K runs at once: forward, per-run loss, backward, per-run unscale, clip and
    AdamW step. The pieces are separate methods so that tests can reach between them."""

    def __init__(self, enc: FusedEncoder, runs: Sequence[RunData], params, device: torch.device,
                 do_normalize: bool) -> None:
        self.enc, self.runs, self.params = enc, list(runs), params
        self.device, self.do_normalize = device, do_normalize
        self.streams = [RunStreams(r.seed, device) for r in runs]
        enc.set_heads([r.classes for r in runs], params.head_init, self.streams)
        p = enc.params
        head_lr = params.lr * params.head_lr_scale
        self.opt = FusedAdamW(p, {n: head_lr if n.startswith("head.") else params.lr for n in p},
                              params.weight_decay)
        self.scales = LossScales(enc.k, params.precision == "fp16", device)
        self.batches = run_orders(runs, params.epochs, params.batch_size)
        self.placeholder = min_samples(enc.config)
        self.stats = FusedStats()
        self.losses: list[list[float]] = [[] for _ in runs]

    @property
    def n_steps(self) -> int:
        return max(len(b) for b in self.batches)

    def forward_loss(self, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(per-run losses (K,), active runs (K,) bool, used parameters) of one step."""
        lanes, labels = [], []
        for r, batches in zip(self.runs, self.batches):
            idx = batches[step] if step < len(batches) else []
            lanes.append([r.waves[i] for i in idx])
            labels.append(r.labels[idx])
        waves, lengths, clips = pad_lanes(lanes, self.placeholder, self.device, self.do_normalize)
        self.stats.steps += 1
        self.stats.samples_padded += waves.numel()
        self.stats.samples_own += sum(w.numel() for lane in lanes for w in lane)
        K, B = lengths.shape
        frames = self.enc.frames_of(lengths)
        noise = Noise(self.streams, clips, frames.cpu(), self.enc.config)
        with autocast(self.device, self.params.precision):
            last, _, frames, used = self.enc(waves, lengths, noise)
            logits = self.enc.logits(pool(last, frames))
        target = torch.zeros(K, B, dtype=torch.long)
        weight = torch.zeros(K, B)
        for k, (y, n) in enumerate(zip(labels, clips)):
            target[k, :n] = y
            weight[k, :n] = 1.0 / max(n, 1)
        target, weight = target.to(self.device), weight.to(self.device)
        ce = F.cross_entropy(logits.reshape(K * B, -1), target.reshape(-1), reduction="none")
        ce = torch.where(weight.reshape(-1) > 0, ce, torch.zeros_like(ce))
        losses = (ce.reshape(K, B) * weight).sum(1)
        active = torch.tensor([n > 0 for n in clips])  # on the host
        return losses, active, used

    def backward(self, losses: torch.Tensor) -> None:
        for p in self.enc.parameters():
            p.grad = None
        (losses * self.scales.scale).sum().backward()

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.enc.parameters() if p.grad is not None]

    def update(self, active: torch.Tensor, used: dict) -> torch.Tensor:
        """Unscale, clip and step every run on its own; returns the runs that overflowed."""
        grads = self.grads()
        overflow = self.scales.unscale(grads)
        clip_per_run(grads, self.params.grad_clip)
        skipped = overflow.cpu() if self.scales.enabled else torch.zeros_like(active)
        self.opt.step(active & ~skipped, used)
        self.scales.update(active.to(overflow.device), overflow)
        return skipped

    def step(self, step: int) -> None:
        losses, active, used = self.forward_loss(step)
        self.backward(losses)
        self.update(active, used)
        values = losses.detach().float().cpu().tolist()
        for k, on in enumerate(active.tolist()):
            if on:
                self.losses[k].append(values[k])

    def train(self) -> list[list[float]]:
        self.enc.train()
        for s in range(self.n_steps):
            self.step(s)
        for p in self.enc.parameters():
            p.grad = None
        return self.losses


@torch.no_grad()
def embed(enc: FusedEncoder, lanes: Sequence[Sequence[torch.Tensor]], device: torch.device,
          do_normalize: bool, precision: str, last_layers: int = 1, batch: int = 16,
          stats: bool = False) -> list[torch.Tensor]:
    """Each run's pooled representations of its own clips (lane k: run k's clips), batched by
    length within each lane (padding is exact). Lanes that hold the same clips (the runs of one
    target) share every batch's shape."""
    enc.eval()
    K = enc.k
    dim = enc.config.hidden_size * (2 if stats else 1)
    out = [torch.empty(len(lane), dim) for lane in lanes]
    orders = [np.argsort([w.numel() for w in lane], kind="stable").tolist() for lane in lanes]
    rounds = max((len(o) + batch - 1) // batch for o in orders) if orders else 0
    placeholder = min_samples(enc.config)
    for r in range(rounds):
        idx = [o[r * batch : (r + 1) * batch] for o in orders]
        chunk = [[lanes[k][i] for i in idx[k]] for k in range(K)]
        waves, lengths, clips = pad_lanes(chunk, placeholder, device, do_normalize)
        with autocast(device, precision):
            last, states, frames, _ = enc(waves, lengths, None, hidden_states=last_layers > 1)
            h = last if last_layers == 1 else torch.stack(states[-last_layers:]).mean(0)
            pooled = pool(h.float(), frames, stats).cpu()
        for k in range(K):
            if idx[k]:
                out[k][idx[k]] = pooled[k, : clips[k]]
    return out


# --- how many runs fit -------------------------------------------------------------------------

def bytes_per_run(config: PretrainedConfig, n_params: int, seconds: float = 6.0, *,
                  precision: str) -> int:
    """A documented upper estimate of one fused run's device memory at batch 1:

    - 16 bytes a parameter: fp32 weights, gradients, AdamW's two moments;
    - activations kept for the backward pass of a clip of `seconds`: the CNN's first layer
      dominates (conv out, norm, GELU: 3 tensors of conv_dim[0] x samples/5, 4 bytes), then
      each CNN layer (3 tensors of C x frames) and each transformer layer (about 14 tensors of
      T x hidden plus 3 of heads x T x T, T = samples/320); halved under fp16 / bf16;
    - x1.5 for the allocator's fragmentation and temporaries.
    """
    samples = seconds * 16_000
    act = 3 * config.conv_dim[0] * samples / config.conv_stride[0]
    n = samples
    for dim, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        n = (n - kernel) // stride + 1
        act += 3 * dim * n
    T = n
    act += config.num_hidden_layers * (
        14 * T * config.hidden_size + 2 * T * config.intermediate_size
        + 3 * config.num_attention_heads * T * T)
    act_bytes = act * (2 if precision in ("fp16", "bf16") else 4)
    return int(1.5 * (16 * n_params + act_bytes))


def auto_k(config: PretrainedConfig, n_params: int, device: torch.device, precision: str,
           seconds: float = 6.0, cap: int = 64) -> int:
    """K from the device's free memory (CUDA), keeping 10% back; 1 on CPU."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per = bytes_per_run(config, n_params, seconds, precision=precision)
    k = int(0.9 * free // per)
    if k < 1:
        raise MemoryError(
            f"train.fuse: auto: one run needs about {per / 2**30:.1f} GiB (weights, gradients, "
            f"AdamW state, activations of a {seconds:.0f} s clip) but {free / 2**30:.1f} GiB "
            "of the device is free")
    return min(k, cap)
