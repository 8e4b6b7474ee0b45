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
    FusedAdamW          torch.optim.AdamW (per run)      torch's fused kernel over run slices
    unscale_clip_step   GradScaler + clip_grad_norm_     per run, folded into the kernel
    LossScales          GradScaler (per run)             an overflow skips that run's step only

Random streams are per run (`RunStreams`, from the run's seed only): LayerDrop and SpecAugment
draw from the run's host generator; dropout masks are counter-based, a hash of (the run's key,
the step, the site, the element's coordinates in the run's own tensor), drawn for all K runs in
one expression (`Noise.dropout`). So a run draws the same numbers alone (K = 1, the same code)
or beside any partners, and its result does not depend on them. The distributions are
transformers': dropout rates, LayerDrop probability, SpecAugment's mask_time_prob /
mask_time_length / mask_time_min_masks (`_compute_mask_indices`), here over each clip's valid
frames; the dropout numbers themselves are this module's, not torch's generator's.

A training step is made on the host (`FusedTrainer.prepare`) and then run on the device
(`FusedTrainer.run`) without a single read back: skip decisions, loss scales and step counts
stay on the device, losses come back every `log_every` steps. `profile_step` counts what a
step launches and reads (tests hold the launches flat in K and the reads at zero).

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


_M32 = 0xFFFFFFFF
# Multipliers below 2**31 (from Wellons' hash-prospector search): an int64 product of a 32-bit
# word then never overflows, so Python ints, CPU and CUDA tensors all give the same numbers.
_H1, _H2 = 0x21F0AAAD, 0x735A2D97


def mix32(x: int | torch.Tensor) -> int | torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) of x in [0, 2**32): a Python int or
    an int64 tensor, elementwise."""
    x = x ^ (x >> 16)
    x = (x * _H1) & _M32
    x = x ^ (x >> 15)
    x = (x * _H2) & _M32
    return x ^ (x >> 15)


def step_key(dropout_seed: int, step: int) -> int:
    """A run's dropout key at one training step, from its 63-bit dropout seed."""
    return mix32(mix32((dropout_seed & _M32) ^ mix32(step & _M32)) ^ (dropout_seed >> 32))


class RunStreams:
    """A run's random sources, from its seed alone: `host` (CPU: LayerDrop, SpecAugment),
    `dropout` (the key of its counter-based dropout masks), `head` (the head's initialisation)."""

    def __init__(self, seed: int) -> None:
        self.host = torch.Generator().manual_seed(derive_seed(seed, "host"))
        self.dropout = derive_seed(seed, "dropout")
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
    """The stochastic parts of one training forward pass of K runs at training step `step`.

    `clips[k]`: how many of lane k's B clips are the run's own this step (0: the lane idles);
    `frames` (K, B): valid frames per clip, on the host. LayerDrop and SpecAugment are drawn on
    the host when the noise is made (`ready`), before the step's device work, so that the step
    never waits on the device for a random decision.

    Dropout is counter-based: an element's keep decision is a hash of (the run's step key,
    the dropout site's name, the element's coordinates), drawn for all K runs in one
    vectorised expression. A coordinate names the same element of a run's own tensor whatever
    the padding around it, so a run's masks do not depend on K, on its partners or on their
    clips, and no per-run loop or generator state is needed (JAX's per-run keys work so).
    The hash is `mix32` in int64 tensor arithmetic rather than torch's Philox: torch exposes no
    Philox keyed by a tensor of per-run keys, and a Python loop over K generators is the
    launch count this avoids."""

    streams: Sequence[RunStreams | None]
    clips: list[int]
    frames: torch.Tensor
    config: PretrainedConfig
    step: int = 0
    layer_keep: torch.Tensor = field(init=False)  # (K, L) bool, on the host
    keep: list[list[bool]] = field(init=False)  # [layer][run], for decisions on the host
    own_len: list[int] = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        K, L = len(self.streams), c.num_hidden_layers
        self.frame_list = self.frames.tolist()
        self.own_len = [max(self.frame_list[k][: self.clips[k]], default=0) for k in range(K)]
        keep = torch.ones(K, L, dtype=torch.bool)
        for k, s in enumerate(self.streams):
            if s is not None and self.clips[k] and c.layerdrop > 0:
                keep[k] = torch.rand(L, generator=s.host) >= c.layerdrop
        self.layer_keep = keep
        self.keep = keep.t().tolist()
        self.keys = [0 if s is None else step_key(s.dropout, self.step) for s in self.streams]
        self._frames_T: int | None = None
        self._spec: np.ndarray | None = None
        self._on: dict[torch.device, tuple] = {}
        self._sites: tuple[dict[str, int], torch.Tensor] | None = None
        self._counter_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def spec_mask(self, T: int) -> torch.Tensor | None:
        """(K, B, T) bool: frames replaced by masked_spec_embed, or None when off. Drawn once."""
        c = self.config
        if not getattr(c, "apply_spec_augment", True) or c.mask_time_prob <= 0:
            return None
        if self._spec is None:
            K, B = self.frames.shape
            out = np.zeros((K, B, T), dtype=bool)
            for k, s in enumerate(self.streams):
                n = self.clips[k]
                if s is None or n == 0:
                    continue
                own = span_mask(self.frame_list[k][:n], self.own_len[k], c.mask_time_prob,
                                c.mask_time_length, c.mask_time_min_masks, s.host)
                out[k, :n, : self.own_len[k]] = own
            self._spec, self._frames_T = out, T
        if self._frames_T != T:
            raise ValueError(f"SpecAugment was drawn for {self._frames_T} frames, not {T}")
        return torch.from_numpy(self._spec)

    def ready(self, T: int, device: torch.device) -> tuple:
        """(SpecAugment mask (K, B, T) bool or None, layers kept (K, L) bool, dropout keys (K,)
        int64) on `device`: drawn on the host, then copied without waiting on the device."""
        if device not in self._on:
            spec = self.spec_mask(T)
            self._on[device] = (
                None if spec is None else spec.to(device, non_blocking=True),
                self.layer_keep.to(device, non_blocking=True),
                torch.tensor(self.keys, dtype=torch.long).to(device, non_blocking=True))
        return self._on[device]

    def _site_keys(self, site: str, device: torch.device) -> torch.Tensor:
        """(K,) the runs' keys at one dropout site: every known site's in one expression
        a step, so that a site costs no launch of its own for them."""
        if self._sites is None:
            c = self.config
            names = ["feat_proj", "hidden"] + [
                f"{i}.{s}" for i in range(c.num_hidden_layers)
                for s in ("attention", "attention_out", "activation", "feed_forward")]
            codes = torch.tensor([zlib.crc32(n.encode()) for n in names], dtype=torch.long)
            keys = self._on[device][2] if device in self._on else torch.tensor(
                self.keys, dtype=torch.long).to(device, non_blocking=True)
            table = mix32(keys[None, :] ^ codes.to(device, non_blocking=True)[:, None])
            self._sites = ({n: i for i, n in enumerate(names)}, table)
        index, table = self._sites
        if site in index:
            return table[index[site]]
        return mix32(table.new_tensor(self.keys) ^ zlib.crc32(site.encode()))

    def _counters(self, B: int, heads: int, T: int, last: int, attention: bool,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The two words of each element's counter: its index on the last axis, and the rest
        (clip, head, row) packed with fixed strides, so that neither depends on the padding.
        Made once a shape."""
        key = (B, heads, T, last, attention, device)
        if key not in self._counter_cache:
            if B * heads >= 2**12 or T >= 2**20 or last >= 2**32:
                raise ValueError(f"dropout counters of ({B}, {heads}, {T}, {last}) overflow "
                                 "32 bits")
            b = torch.arange(B, device=device).reshape(B, 1, 1) * heads
            h = torch.arange(heads, device=device).reshape(1, heads, 1)
            rows = ((b + h) << 20) | torch.arange(T, device=device).reshape(1, 1, T)
            rows = rows if attention else rows[:, 0]
            self._counter_cache[key] = (torch.arange(last, device=device), rows[None, ..., None])
        return self._counter_cache[key]

    def dropout(self, x: torch.Tensor, p: float, site: str,
                attention: bool = False) -> torch.Tensor:
        """x (K, B, T, C), or attention weights (K, B, H, T, T) with `attention`; `site` names
        the dropout call (its masks are independent of every other site's)."""
        if p <= 0:
            return x
        K, B, T, last = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
        self.ready(T, x.device)  # made in the forward pass, before any dropout
        cols, rows = self._counters(B, x.shape[2] if attention else 1, T, last, attention,
                                    x.device)
        keys = self._site_keys(site, x.device).reshape(K, *([1] * (x.dim() - 1)))
        bits = mix32(mix32(keys ^ cols) ^ rows)
        keep = bits >= int(p * 2**32)
        return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


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
                    valid: torch.Tensor, noise: Noise | None, dropout: float,
                    site: str = "attention") -> torch.Tensor:
    """HubertAttention per run, each clip attending to its own valid frames:
    x (K, B, T, C), valid (K, B, T) bool.

    scaled_dot_product_attention whenever attention dropout is off (evaluation, or a config
    without it). With it on, the weights are materialised: SDPA draws its dropout from one
    Philox stream over the whole (K*B) batch, so a run's masks would depend on K and on its
    partners, and a post-softmax multiplicative mask cannot be passed to it as an additive
    one. The cost is the (K, B, H, T, T) scores, weights and mask in memory and three extra
    passes over them a layer: at T = 250 (5 s), H = 12, about 0.75M elements a run and layer,
    against 12 * 250 * 768 * 3072 multiply-adds of the same layer's feed-forward block."""
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
        weights = noise.dropout(weights.reshape(K, B, heads, T, T), dropout, site,
                                attention=True)
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
        self._classes = torch.tensor(self.classes, device=device)  # made once, not every step

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
        pad = torch.arange(out.shape[-1], device=out.device)[None, :] >= self._classes[:, None]
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
                ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, dict[str, list[bool]]]:
        """waves (K, B, S) zero-padded, lengths (K, B) -> (last hidden state (K, B, T, C),
        hidden states as transformers returns them (if asked), frames (K, B), parameters used
        per run {name: K bools, on the host} for the optimiser: a layer LayerDrop skipped, or
        the mask embedding without SpecAugment, has no gradient in the plain model). Reads
        nothing back from the device."""
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
        used: dict[str, list[bool]] = {}
        layer_keep = None
        if noise is not None:
            spec, layer_keep, _ = noise.ready(T, h.device)
            h = noise.dropout(h, c.feat_proj_dropout, "feat_proj")
            if spec is not None:
                embed = p["masked_spec_embed"].to(h.dtype)[:, None, None, :]
                h = torch.where(spec[..., None], embed, h)
                used["masked_spec_embed"] = [n > 0 for n in noise.clips]
        if "masked_spec_embed" in p and "masked_spec_embed" not in used:
            used["masked_spec_embed"] = [False] * K
        h = h * valid[..., None].to(h.dtype)  # transformers zeroes padded frames here
        pos = "encoder.pos_conv_embed.conv"
        h = h + fused_pos_conv(h, weight_norm(p[f"{pos}.weight_g"], p[f"{pos}.weight_v"]),
                               p[f"{pos}.bias"], c.num_conv_pos_embeddings,
                               c.num_conv_pos_embedding_groups, self.feat_act)
        if not self.stable:
            h = fused_layer_norm(h, p["encoder.layer_norm.weight"], p["encoder.layer_norm.bias"],
                                 c.layer_norm_eps)
        if noise is not None:
            h = noise.dropout(h, c.hidden_dropout, "hidden")
        states = [h] if hidden_states else []
        for i in range(c.num_hidden_layers):
            keep = noise.keep[i] if noise is not None else None
            if keep is not None:
                used.update(self._layer_used(i, keep))
                if not any(keep):
                    states.extend([h] if hidden_states else [])
                    continue
            out = self._layer(h, i, valid, noise)
            if keep is not None and not all(keep):
                out = torch.where(layer_keep[:, i, None, None, None], out, h)
            h = out
            if hidden_states:
                states.append(h)
        if self.stable:
            h = fused_layer_norm(h, p["encoder.layer_norm.weight"], p["encoder.layer_norm.bias"],
                                 c.layer_norm_eps)
        return h, states, frames, used

    def _layer_used(self, i: int, keep: list[bool]) -> dict[str, list[bool]]:
        pre = f"encoder.layers.{i}."
        return {n: keep for n in self._names if n.startswith(pre)}

    def _layer(self, h: torch.Tensor, i: int, valid: torch.Tensor,
               noise: Noise | None) -> torch.Tensor:
        c, p = self.config, self.params
        pre = f"encoder.layers.{i}"

        def ln(x: torch.Tensor, name: str) -> torch.Tensor:
            return fused_layer_norm(x, p[f"{pre}.{name}.weight"], p[f"{pre}.{name}.bias"],
                                    c.layer_norm_eps)

        def drop(x: torch.Tensor, rate: float, site: str) -> torch.Tensor:
            return x if noise is None else noise.dropout(x, rate, f"{i}.{site}")

        def ff(x: torch.Tensor) -> torch.Tensor:
            f = f"{pre}.feed_forward"
            x = fused_linear(x, p[f"{f}.intermediate_dense.weight"],
                             p[f"{f}.intermediate_dense.bias"])
            x = drop(self.hidden_act(x), c.activation_dropout, "activation")
            x = fused_linear(x, p[f"{f}.output_dense.weight"], p[f"{f}.output_dense.bias"])
            return drop(x, c.hidden_dropout, "feed_forward")

        def attn(x: torch.Tensor) -> torch.Tensor:
            a = fused_attention(x, p, f"{pre}.attention", c.num_attention_heads, valid, noise,
                                c.attention_dropout if noise is not None else 0.0,
                                f"{i}.attention")
            return drop(a, c.hidden_dropout, "attention_out")

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


def pad_host(lanes: Sequence[Sequence[torch.Tensor]], placeholder: int
             ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """K lanes of clips -> (waves (K, B, S), lengths (K, B), own clips per lane), on the host;
    a lane with fewer than B clips is filled with silent placeholders (never counted)."""
    K, B = len(lanes), max(1, max(len(lane) for lane in lanes))
    sizes = [[w.numel() for w in lane] + [placeholder] * (B - len(lane)) for lane in lanes]
    lengths = torch.tensor(sizes, dtype=torch.long)
    waves = torch.zeros(K, B, max(max(row) for row in sizes))
    for k, lane in enumerate(lanes):
        for b, w in enumerate(lane):
            waves[k, b, : w.numel()] = w
    return waves, lengths, [len(lane) for lane in lanes]


def to_device(waves: torch.Tensor, lengths: torch.Tensor, device: torch.device,
              do_normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad_host`'s tensors on `device` (copies that do not wait on it), normalised per clip
    over its own samples when the feature extractor does so."""
    waves, lengths = waves.to(device, non_blocking=True), lengths.to(device, non_blocking=True)
    if do_normalize:
        mask = torch.arange(waves.shape[-1], device=device) < lengths[..., None]
        m = mask.to(waves.dtype)
        n = lengths.to(waves.dtype)[..., None]
        mean = (waves * m).sum(-1, keepdim=True) / n
        var = (((waves - mean) * m) ** 2).sum(-1, keepdim=True) / n
        waves = (waves - mean) / torch.sqrt(var + NORM_EPS) * m
    return waves, lengths


def pad_lanes(lanes: Sequence[Sequence[torch.Tensor]], placeholder: int, device: torch.device,
              do_normalize: bool) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """`pad_host`, then `to_device`."""
    waves, lengths, clips = pad_host(lanes, placeholder)
    return (*to_device(waves, lengths, device, do_normalize), clips)


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


def per_run_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """(K,) each run's total gradient norm over its own slices, as clip_grad_norm_ computes it
    (the norm of the per-tensor norms): one launch a tensor, whatever K."""
    norms = [torch.linalg.vector_norm(g.flatten(1), dim=1, dtype=torch.float32) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms), dim=0)


#: FusedAdamW's memory traffic a parameter a step, with the per-run norm for clipping.
ADAMW_BYTES_PER_PARAM = 4 + 16 + 16


class FusedAdamW:
    """torch.optim.AdamW (no amsgrad) run by run over stacked parameters, as torch's fused
    multi-tensor kernel (`torch._fused_adamw_`) over each run's slices of every tensor.

    Each run has its own moments and its own step count per tensor; a run whose tensor has no
    gradient this step (LayerDrop, an idle lane: known on the host) leaves that tensor out of
    its launch, as torch skips a parameter whose .grad is None. Unscaling (fp16) and clipping
    enter the kernel as the run's `grad_scale` (loss scale / clip coefficient), and an fp16
    overflow as its `found_inf`, both on the device: the kernel then leaves the run's tensors
    and moments alone and its step counts are taken back, with no read on the host.

    Memory traffic a parameter a step (fp32, `ADAMW_BYTES_PER_PARAM`): the norm pass reads the
    gradient (4 bytes); the kernel reads weight, gradient and both moments (16) and writes
    weight, both moments and the unscaled gradient (16): 36 bytes, against about 125 for
    separate unscale, finiteness, clip and AdamW passes. Launches: one norm a tensor, plus one
    kernel launch (a few multi-tensor chunks) per run and lr group.
    """

    def __init__(self, params: dict[str, nn.Parameter], lr: dict[str, float],
                 weight_decay: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params, self.lr, self.wd, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.names = list(params)
        first = next(iter(params.values()))
        self.k, self.device = first.shape[0], first.device
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self._steps = torch.zeros(len(self.names), self.k, device=self.device)
        self.steps = {n: self._steps[i] for i, n in enumerate(self.names)}
        # Per-run views, made once: the kernel updates them in place, in the stacked storage.
        self._views = {n: (params[n].detach().unbind(0), self.exp_avg[n].unbind(0),
                           self.exp_avg_sq[n].unbind(0), self._steps[i].unbind(0))
                       for i, n in enumerate(self.names)}
        self._groups: dict[float, list[int]] = {}
        for i, n in enumerate(self.names):
            self._groups.setdefault(lr[n], []).append(i)
        # Each run's lists of every tensor of a group, for the step in which it uses them all.
        self._run_lists = {
            g: [tuple([self._views[self.names[i]][j][k] for i in members] for j in range(4))
                for k in range(self.k)]
            for g, members in self._groups.items()}

    @torch.no_grad()
    def step(self, on: dict[str, Sequence[bool]], grad_scale: torch.Tensor | None = None,
             found_inf: torch.Tensor | None = None) -> None:
        """`on[name][k]`: run k steps tensor `name` (host); `grad_scale` (K,): each run's
        gradients are divided by it; `found_inf` (K,) float, 1 where the run skips its step.

        The host's work a step is about one view per run and tensor (the gradients are new
        tensors every step); a step never waits on the device, so it overlaps the device's."""
        b1, b2 = self.betas
        has_grad = [self.params[n].grad is not None for n in self.names]
        mask = [list(on[n]) if n in on and g else [False] * self.k
                for n, g in zip(self.names, has_grad)]
        inc = torch.tensor(mask, dtype=self._steps.dtype).to(self.device, non_blocking=True)
        self._steps.add_(inc)
        grads = [self.params[n].grad.unbind(0) if g else None
                 for n, g in zip(self.names, has_grad)]
        scales = [None] * self.k if grad_scale is None else grad_scale.float().unbind(0)
        infs = [None] * self.k if found_inf is None else found_inf.float().unbind(0)
        for lr, members in self._groups.items():
            for k in range(self.k):
                chosen = [i for i in members if mask[i][k]]
                if not chosen:
                    continue
                cached = self._run_lists[lr][k]
                if len(chosen) == len(members):
                    params, avg, avg_sq, steps = cached
                else:
                    views = [self._views[self.names[i]] for i in chosen]
                    params, avg, avg_sq, steps = ([v[j][k] for v in views] for j in range(4))
                torch._fused_adamw_(
                    params, [grads[i][k] for i in chosen], avg, avg_sq, [], steps, lr=lr,
                    beta1=b1, beta2=b2, weight_decay=self.wd, eps=self.eps, amsgrad=False,
                    maximize=False, grad_scale=scales[k], found_inf=infs[k])
        if found_inf is not None:
            self._steps.sub_(inc * found_inf.float()[None, :])


class LossScales:
    """torch.amp.GradScaler per run: its own scale and growth tracker, on the device; a run
    whose gradients overflowed skips its step and backs its scale off, the others go on."""

    def __init__(self, k: int, enabled: bool, device: torch.device) -> None:
        self.enabled = enabled
        self.scale = torch.full((k,), SCALE_INIT if enabled else 1.0, device=device)
        self.tracker = torch.zeros(k, dtype=torch.long, device=device)

    def inverse(self) -> torch.Tensor:
        """(K,) 1 / scale as GradScaler computes it (in double, then float)."""
        return self.scale.double().reciprocal().float()

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


def unscale_clip_step(opt: FusedAdamW, scales: LossScales, active: Sequence[bool],
                      used: dict[str, Sequence[bool]], max_norm: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """GradScaler.unscale_, clip_grad_norm_(max_norm) and AdamW.step for each run on its own
    slices, with GradScaler's skip of a run whose gradients are not finite. `active`: runs with
    a step this time; `used[name]`: runs whose forward pass used the tensor (both on the host).
    Returns ((K,) overflow bool, (K,) gradient norms before clipping), on the device."""
    grads = [p.grad for p in opt.params.values() if p.grad is not None]
    inverse = scales.inverse()
    norms = per_run_norms(grads) * inverse  # clip_grad_norm_'s norm, of unscaled gradients
    overflow = (~torch.isfinite(norms) if scales.enabled
                else torch.zeros_like(norms, dtype=torch.bool))
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    on = {n: [a and (n not in used or bool(used[n][k])) for k, a in enumerate(active)]
          for n in opt.names}
    opt.step(on, grad_scale=1.0 / (inverse * coef),
             found_inf=overflow.float() if scales.enabled else None)
    scales.update(torch.tensor(list(active)).to(norms.device, non_blocking=True), overflow)
    return overflow, norms


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


@dataclass
class StepInputs:
    """One fused step's inputs, made on the host before any of the step's device work."""

    waves: torch.Tensor  # (K, B, S), zero-padded
    lengths: torch.Tensor  # (K, B)
    noise: Noise
    target: torch.Tensor  # (K, B) class per clip
    weight: torch.Tensor  # (K, B): 1 / own clips, 0 for a placeholder
    active: list[bool]  # runs with clips of their own this step


class FusedTrainer:
    """Fine-tune K runs at once: forward, per-run loss, backward, per-run unscale, clip and
    AdamW step. The pieces are separate methods so that tests can reach between them.

    A step is made in two parts: `prepare` on the host (batches, padding, LayerDrop and
    SpecAugment draws, targets), and `run` on the device, which reads nothing back: skips,
    loss scales and step counts stay on the device, and the losses come back every
    `log_every` steps and at the end (`flush`), one copy for all of them."""

    def __init__(self, enc: FusedEncoder, runs: Sequence[RunData], params, device: torch.device,
                 do_normalize: bool, log_every: int = 64) -> None:
        self.enc, self.runs, self.params = enc, list(runs), params
        self.device, self.do_normalize, self.log_every = device, do_normalize, log_every
        self.streams = [RunStreams(r.seed) for r in runs]
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
        self.norms: torch.Tensor | None = None  # each run's gradient norm at the last step
        self._pending: list[tuple[torch.Tensor, list[bool]]] = []

    @property
    def n_steps(self) -> int:
        return max(len(b) for b in self.batches)

    def prepare(self, step: int) -> StepInputs:
        """The host's part of step `step`."""
        lanes, labels = [], []
        for r, batches in zip(self.runs, self.batches):
            idx = batches[step] if step < len(batches) else []
            lanes.append([r.waves[i] for i in idx])
            labels.append(r.labels[idx].tolist())
        waves, lengths, clips = pad_host(lanes, self.placeholder)
        self.stats.steps += 1
        self.stats.samples_padded += waves.numel()
        self.stats.samples_own += sum(w.numel() for lane in lanes for w in lane)
        K, B = lengths.shape
        frames = self.enc.frames_of(lengths)
        noise = Noise(self.streams, clips, frames, self.enc.config, step)
        noise.spec_mask(int(self.enc.frames_of(torch.tensor(waves.shape[-1]))))
        target = torch.tensor([y + [0] * (B - len(y)) for y in labels], dtype=torch.long)
        weight = torch.tensor([[1.0 / max(n, 1)] * n + [0.0] * (B - n) for n in clips])
        weight = weight.reshape(K, B)
        return StepInputs(waves, lengths, noise, target, weight, [n > 0 for n in clips])

    def losses_of(self, inputs: StepInputs) -> tuple[torch.Tensor, dict[str, list[bool]]]:
        """(per-run losses (K,) on the device, parameters used per run) of one step."""
        waves, lengths = to_device(inputs.waves, inputs.lengths, self.device, self.do_normalize)
        with autocast(self.device, self.params.precision):
            last, _, frames, used = self.enc(waves, lengths, inputs.noise)
            logits = self.enc.logits(pool(last, frames))
        K, B = inputs.target.shape
        target = inputs.target.to(self.device, non_blocking=True)
        weight = inputs.weight.to(self.device, non_blocking=True)
        ce = F.cross_entropy(logits.reshape(K * B, -1), target.reshape(-1), reduction="none")
        ce = torch.where(weight.reshape(-1) > 0, ce, torch.zeros_like(ce))
        return (ce.reshape(K, B) * weight).sum(1), used

    def forward_loss(self, step: int) -> tuple[torch.Tensor, list[bool], dict]:
        """(per-run losses (K,), active runs (K bools), used parameters) of one step."""
        inputs = self.prepare(step)
        losses, used = self.losses_of(inputs)
        return losses, inputs.active, used

    def backward(self, losses: torch.Tensor) -> None:
        for p in self.enc.parameters():
            p.grad = None
        (losses * self.scales.scale).sum().backward()

    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.enc.parameters() if p.grad is not None]

    def update(self, active: Sequence[bool], used: dict[str, Sequence[bool]]) -> torch.Tensor:
        """Unscale, clip and step every run on its own; returns the runs that overflowed
        ((K,) bool, on the device)."""
        overflow, self.norms = unscale_clip_step(self.opt, self.scales, active, used,
                                                 self.params.grad_clip)
        return overflow

    def run(self, inputs: StepInputs) -> None:
        """The device's part of a step: nothing in it waits on the device."""
        losses, used = self.losses_of(inputs)
        self.backward(losses)
        self.update(inputs.active, used)
        self._pending.append((losses.detach(), inputs.active))

    def flush(self) -> None:
        """The losses since the last flush, to the host (the one read-back)."""
        if not self._pending:
            return
        values = torch.stack([loss for loss, _ in self._pending]).float().cpu().tolist()
        for row, (_, active) in zip(values, self._pending):
            for k, on in enumerate(active):
                if on:
                    self.losses[k].append(row[k])
        self._pending = []

    def step(self, step: int) -> None:
        self.run(self.prepare(step))
        if len(self._pending) >= self.log_every:
            self.flush()

    def train(self) -> list[list[float]]:
        self.enc.train()
        for s in range(self.n_steps):
            self.step(s)
        self.flush()
        for p in self.enc.parameters():
            p.grad = None
        return self.losses


#: Operations that make a view or read metadata: no kernel launch.
_VIEW_OPS = frozenset("aten::" + n for n in (
    "as_strided", "select", "view", "reshape", "unbind", "transpose", "permute", "expand",
    "slice", "unsqueeze", "squeeze", "t", "detach", "alias", "resolve_conj", "resolve_neg",
    "_reshape_alias", "unflatten", "flatten", "_unsafe_view", "split", "chunk", "narrow",
    "lift_fresh"))
#: Reads of a tensor's value by the host: each one waits for the device's queue to drain.
_READ_OPS = frozenset({"aten::item", "aten::_local_scalar_dense"})


@dataclass
class StepProfile:
    """What one fused step's device part asks of the device (torch.profiler)."""

    ops: int  # aten operations called from Python or autograd, views left out: the launches
    reads: int  # host reads of a tensor's value (item, _local_scalar_dense) in the step
    copies_to_host: int  # device-to-host copies (CUDA only: on CPU there is no such copy)


def profile_step(trainer: FusedTrainer, inputs: StepInputs) -> StepProfile:
    """Profile the device part (`run`) of a step `trainer` prepared. Reads inside
    `aten::_fused_adamw_` are left out: the CPU kernel reads each step count as a scalar
    where it lives, on the host; the CUDA kernel reads them on the device."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if trainer.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        trainer.run(inputs)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
    ops = reads = copies = 0
    for e in prof.events():
        if "DtoH" in e.name or "Device -> Pageable" in e.name:
            copies += 1
        if not e.name.startswith("aten::"):
            continue
        parents, p = [], e.cpu_parent
        while p is not None:
            parents.append(p.name)
            p = p.cpu_parent
        if e.name in _READ_OPS and "aten::_fused_adamw_" not in parents:
            reads += 1
        if e.name not in _VIEW_OPS and not any(n.startswith("aten::") for n in parents):
            ops += 1
    return StepProfile(ops, reads, copies)


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

def memory_terms(config: PretrainedConfig, n_params: int, seconds: float, precision: str,
                 batch: int = 1, eval_clips: int = 16) -> dict[str, int]:
    """The terms of one fused run's device memory, in bytes, for steps that pad to a clip of
    `seconds` (the longest clip of the K: a fused step pads every run to it), `batch` clips a
    step and evaluation `eval_clips` clips at a time:

    - `state`: 16 bytes a parameter: fp32 weights, gradients, AdamW's two moments;
    - `autocast_copies`: under fp16 / bf16 autocast keeps a 2-byte copy of every weight it
      casts for the step (its cache), for the backward pass;
    - `train_activations`: what the backward pass keeps of `batch` clips: the CNN's first layer
      dominates (conv out, norm, GELU: 3 tensors of conv_dim[0] x frames0), plus the masked
      GroupNorm's temporaries at its peak (4 more, always fp32: autocast runs norms in fp32),
      then each CNN layer (3 tensors of C x frames) and each transformer layer (about 14
      tensors of T x hidden, 2 of T x intermediate, 3 of heads x T x T); 2 bytes an element
      under fp16 / bf16, 4 otherwise;
    - `eval_activations`: evaluation keeps nothing for a backward pass, but it runs
      `eval_clips` clips at once: its peak is the first CNN layer's output with the GroupNorm
      temporaries (5 fp32 tensors of conv_dim[0] x frames0 a clip), or a layer's attention
      scores, whichever is larger. Training and evaluation alternate, so the larger counts.
    """
    half = precision in ("fp16", "bf16")
    width = 2 if half else 4
    samples = seconds * 16_000
    n = samples
    frames = []
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        n = (n - kernel) // stride + 1
        frames.append(n)
    T = frames[-1]
    first = config.conv_dim[0] * frames[0]
    per_clip = 3 * first * width + 4 * first * 4
    per_clip += sum(3 * d * f for d, f in zip(config.conv_dim, frames)) * width
    per_clip += config.num_hidden_layers * width * (
        14 * T * config.hidden_size + 2 * T * config.intermediate_size
        + 3 * config.num_attention_heads * T * T)
    eval_clip = max(5 * first * 4, 3 * config.num_attention_heads * T * T * 4)
    return {"state": 16 * n_params,
            "autocast_copies": 2 * n_params if half else 0,
            "train_activations": int(batch * per_clip),
            "eval_activations": int(eval_clips * eval_clip)}


def eval_batch(config: PretrainedConfig, n_params: int, seconds: float, precision: str,
               batch: int, cap: int = 16) -> int:
    """Evaluation's clips at a time a run (at most `cap`), chunked so that its activations
    stay within training's: evaluation then adds nothing to the memory a run needs. Pooled
    representations do not depend on it (padding is exact); it depends on no partner."""
    t = memory_terms(config, n_params, seconds, precision, batch, eval_clips=1)
    return max(1, min(cap, t["train_activations"] // max(t["eval_activations"], 1)))


def bytes_per_run(config: PretrainedConfig, n_params: int, seconds: float, precision: str,
                  batch: int = 1, eval_clips: int = 16) -> int:
    """A documented upper estimate of one fused run's device memory (`memory_terms`): state
    and autocast copies, plus the larger of training's and evaluation's activations, x1.5 for
    the allocator's fragmentation and temporaries."""
    t = memory_terms(config, n_params, seconds, precision, batch, eval_clips)
    return int(1.5 * (t["state"] + t["autocast_copies"]
                      + max(t["train_activations"], t["eval_activations"])))


def auto_k(config: PretrainedConfig, n_params: int, device: torch.device, precision: str,
           seconds: float = 6.0, cap: int = 64, batch: int = 1, eval_clips: int = 16) -> int:
    """K from the device's free memory (CUDA), keeping 10% back; 1 on CPU. `seconds`: the
    longest clip the runs train on (a fused step pads to the longest clip of its K);
    evaluation chunked to fit (`eval_batch`, at most `eval_clips`)."""
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    eval_clips = eval_batch(config, n_params, seconds, precision, batch, eval_clips)
    return k_that_fits(free, config, n_params, precision, seconds, cap, batch, eval_clips)


def k_that_fits(free: int, config: PretrainedConfig, n_params: int, precision: str,
                seconds: float = 6.0, cap: int = 64, batch: int = 1, eval_clips: int = 16) -> int:
    """How many runs `free` bytes hold, keeping 10% back."""
    per = bytes_per_run(config, n_params, seconds, precision, batch, eval_clips)
    k = int(0.9 * free // per)
    if k < 1:
        raise MemoryError(
            f"train.fuse: auto: one run needs about {per / 2**30:.1f} GiB (weights, gradients, "
            f"AdamW state, activations of a {seconds:.1f} s clip, evaluation of {eval_clips} "
            f"clips) but {free / 2**30:.1f} GiB of the device is free")
    return min(k, cap)
