"""ECAPA-TDNN (Desplanques, Thienpondt & Demuynck, Interspeech 2020) and the reference's
reduced network, in plain torch, with the additive angular margin softmax.

`EcapaTDNN` follows the paper's Figure 2, with SpeechBrain's `lobes/models/ECAPA_TDNN.py` as the
reference for each detail the paper leaves open:
- a Conv1D (k 5) + ReLU + BN front layer of C channels;
- three SE-Res2Net blocks (1x1 conv, Res2Net conv k 3 with dilation 2, 3, 4 and scale 8, 1x1
  conv, squeeze-excitation with a 128-unit bottleneck, residual), each conv followed by ReLU
  then BN, as SpeechBrain orders them;
- multi-layer feature aggregation: the three blocks' outputs concatenated, a 1x1 conv + ReLU +
  BN to `mfa_channels` (SpeechBrain: 3C; the paper's counts: 1536 at either C, see below);
- attentive statistics pooling with global context (each frame's attention sees the
  utterance's mean and SD), 128 attention channels;
- BN, then a linear layer to the 192-dim embedding.
Convolutions pad "same" by reflection, as SpeechBrain's Conv1d does.

Parameter counts (`count_parameters`): C 512 with mfa 1536 gives 6.19M, the paper's 6.2M. At
C 1024 the paper's 14.7M is reached with the aggregation kept at 1536 channels (14.66M); with
SpeechBrain's VoxCeleb recipe (channels [1024]*4 + [3072]) the network has 20.8M.

`ReferenceEcapa` reproduces Pol-Buitrago/cltm-framework `src/ECAPA/sv_ECAPA.py`: a two-layer 2-D
conv front end averaged over frequency, three TDNN layers (k 5/3/3, dilation 1/2/3, conv + BN +
ReLU), their concatenation through a 1x1 conv, one SE block, mean + SD pooling, a linear layer,
an affine-free BN and L2 normalisation: no Res2Net, no attentive pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _same_conv(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Conv1d:
    # Reflection, not zeros: SpeechBrain's Conv1d(padding="same") pads so, and zeros at the
    # edges of a mean-normalised filterbank would be a fake frame.
    pad = (kernel - 1) // 2 * dilation
    mode = "reflect" if pad else "zeros"
    return nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=pad, padding_mode=mode)


class TDNNBlock(nn.Module):
    """Conv1d -> ReLU -> BN (SpeechBrain's order)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv = _same_conv(c_in, c_out, kernel, dilation)
        self.norm = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.relu(self.conv(x)))


class Res2NetBlock(nn.Module):
    """Channels split into `scale` groups; group i > 0 goes through its own dilated conv after
    adding the previous group's output; group 0 passes through."""

    def __init__(self, channels: int, scale: int, kernel: int, dilation: int) -> None:
        super().__init__()
        if channels % scale:
            raise ValueError(f"channels {channels} is not a multiple of the Res2Net scale {scale}")
        width = channels // scale
        self.scale = scale
        self.blocks = nn.ModuleList(TDNNBlock(width, width, kernel, dilation)
                                    for _ in range(scale - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.chunk(x, self.scale, dim=1)
        out = [chunks[0]]
        y = None
        for i, block in enumerate(self.blocks, start=1):
            y = block(chunks[i] if y is None else chunks[i] + y)
            out.append(y)
        return torch.cat(out, dim=1)


class SEBlock(nn.Module):
    """Squeeze-excitation over the time mean: channel gates from a bottleneck MLP."""

    def __init__(self, channels: int, bottleneck: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, bottleneck, 1)
        self.conv2 = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=2, keepdim=True)
        return x * torch.sigmoid(self.conv2(F.relu(self.conv1(s))))


class SERes2NetBlock(nn.Module):
    def __init__(self, channels: int, scale: int, se_channels: int, kernel: int,
                 dilation: int) -> None:
        super().__init__()
        self.tdnn1 = TDNNBlock(channels, channels, 1)
        self.res2net = Res2NetBlock(channels, scale, kernel, dilation)
        self.tdnn2 = TDNNBlock(channels, channels, 1)
        self.se = SEBlock(channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.se(self.tdnn2(self.res2net(self.tdnn1(x))))


def _mean_std(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor,
                                                                             torch.Tensor]:
    """Weighted mean and SD over time (w sums to 1 over dim 2); the SD's square is floored, as
    SpeechBrain's, so its gradient stays finite on a constant channel."""
    mean = (w * x).sum(2)
    var = (w * (x - mean.unsqueeze(2)).square()).sum(2)
    return mean, var.clamp_min(eps).sqrt()


class AttentiveStatsPool(nn.Module):
    """Channel- and context-dependent attentive statistics pooling (the paper's eq. 7-9)."""

    def __init__(self, channels: int, attention_channels: int, global_context: bool) -> None:
        super().__init__()
        self.global_context = global_context
        self.tdnn = TDNNBlock(channels * (3 if global_context else 1), attention_channels, 1)
        self.conv = nn.Conv1d(attention_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.global_context:
            t = x.shape[2]
            mean, std = _mean_std(x, torch.full_like(x[:, :1], 1.0 / t))
            attn_in = torch.cat([x, mean.unsqueeze(2).expand(-1, -1, t),
                                 std.unsqueeze(2).expand(-1, -1, t)], dim=1)
        else:
            attn_in = x
        w = torch.softmax(self.conv(torch.tanh(self.tdnn(attn_in))), dim=2)
        mean, std = _mean_std(x, w)
        return torch.cat([mean, std], dim=1)


class EcapaTDNN(nn.Module):
    """Filterbank frames (B, T, n_mels) -> speaker embeddings (B, embed_dim)."""

    def __init__(self, n_mels: int = 80, channels: int = 512, embed_dim: int = 192,
                 mfa_channels: int | None = None, res2net_scale: int = 8,
                 se_channels: int = 128, attention_channels: int = 128,
                 global_context: bool = True) -> None:
        super().__init__()
        mfa = mfa_channels or 3 * channels
        self.layer1 = TDNNBlock(n_mels, channels, 5, 1)
        self.blocks = nn.ModuleList(
            SERes2NetBlock(channels, res2net_scale, se_channels, 3, d) for d in (2, 3, 4))
        self.mfa = TDNNBlock(3 * channels, mfa, 1)
        self.pool = AttentiveStatsPool(mfa, attention_channels, global_context)
        self.pool_bn = nn.BatchNorm1d(2 * mfa)
        self.fc = nn.Linear(2 * mfa, embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.layer1(feats.transpose(1, 2))
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.mfa(torch.cat(outs, dim=1))
        return self.fc(self.pool_bn(self.pool(x)))


class _RefTDNN(nn.Module):
    """The reference's TDNN layer: conv -> BN -> ReLU, zero padding."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation,
                              padding=(kernel - 1) // 2 * dilation)
        self.bn = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ReferenceEcapa(nn.Module):
    """The reference code's reduced network; filterbank frames (B, T, n_mels) -> unit-length
    embeddings (B, embed_dim). Its unused `bn_in` (2 parameters) is left out."""

    def __init__(self, n_mels: int = 64, channels: int = 512, embed_dim: int = 192,
                 se_reduction: int = 8) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.conv2d = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(64),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(128),
        )
        self.tdnn1 = _RefTDNN(128, channels, 5, 1)
        self.tdnn2 = _RefTDNN(channels, channels, 3, 2)
        self.tdnn3 = _RefTDNN(channels, channels, 3, 3)
        self.res_conv = nn.Conv1d(3 * channels, channels, 1)
        self.se = SEBlock(channels, channels // se_reduction)
        self.fc = nn.Linear(2 * channels, embed_dim)
        self.bn_out = nn.BatchNorm1d(embed_dim, affine=False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.conv2d(feats.transpose(1, 2).unsqueeze(1)).mean(dim=2)  # (B, 128, T)
        t1 = self.tdnn1(x)
        t2 = self.tdnn2(t1)
        t3 = self.tdnn3(t2)
        x = self.se(self.res_conv(torch.cat([t1, t2, t3], dim=1)))
        # torch.std's default (unbiased) SD, as the reference
        stats = torch.cat([x.mean(dim=2), x.std(dim=2)], dim=1)
        return F.normalize(self.bn_out(self.fc(stats)), dim=1)


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (ArcFace; Deng et al. 2019, and Xiang et al. 2019 for
    speakers): logits s·cos(θ_y + m) for the true class and s·cos θ_j for the others, θ the
    angle between the embedding and a class's weight vector. Returns logits; the loss is the
    cross-entropy of them.

    `fallback` (SpeechBrain's `easy_margin=False`): where θ_y + m would pass π, so that
    cos(θ_y + m) would rise again, the target logit is s·(cos θ_y - m·sin m) instead, which
    keeps it monotone. The reference code has no fallback.
    """

    def __init__(self, embed_dim: int, classes: int, margin: float = 0.2, scale: float = 30.0,
                 fallback: bool = True) -> None:
        super().__init__()
        self.margin, self.scale, self.fallback = margin, scale, fallback
        self.weight = nn.Parameter(torch.empty(classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(emb, dim=1), F.normalize(self.weight, dim=1))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        eps = 1e-7
        cos = self.cosine(emb).clamp(-1 + eps, 1 - eps)
        sin = (1.0 - cos.square()).sqrt()
        m = self.margin
        phi = cos * math.cos(m) - sin * math.sin(m)
        if self.fallback:
            phi = torch.where(cos > math.cos(math.pi - m), phi, cos - math.sin(math.pi - m) * m)
        target = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * (target * phi + (1 - target) * cos)
