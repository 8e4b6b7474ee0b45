"""CTC for the ASR task: a per-frame head, the loss, greedy decoding and the score.

- :class:`CTCHead`: a linear layer applied to every encoder frame (the reference put a new
  linear head on HubertForCTC the same way); output size = the vocabulary's, index 0 the blank.
- :func:`ctc_loss`: CTC with mean reduction and ``zero_infinity`` (a clip shorter in frames
  than its target cannot be aligned; its loss is zeroed rather than poisoning the batch);
  frame lengths come from the valid-frame mask, so padding never enters the alignment.
  :func:`ctc_losses` gives the per-clip terms, for a fused engine that needs one mean per run.
- :func:`greedy_decode`: best path, repeats collapsed, blanks dropped; no language model (an LM
  would bring the target language's priors into a transfer measure).
- :func:`score`: Perf = 1 - token error rate over the evaluation set, corpus-level (total edits
  / total reference tokens: CER for characters, PER for phones, where a phone such as tʃ is one
  token), WER beside it. The reference scored 1 - mean per-utterance WER; per-utterance means
  weight a two-word clip like a twenty-word one, and word errors are coarse on short clips.
- :func:`is_degenerate`: only blanks emitted, or an error rate >= 1.

The edit distance and the score are plain Python over token sequences (no torch, no jiwer);
the tests check them against jiwer.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cltm.data.transcripts import WORD_SEPARATOR, words

BLANK = 0  # the vocabulary's [pad]


class CTCHead(nn.Module):
    """Frames (B, T, H) -> logits (B, T, V): one linear map, shared by every frame."""

    def __init__(self, hidden_size: int, vocab_size: int, init: str = "random") -> None:
        super().__init__()
        # Built the same way under either init, so the seed's generator ends at the same place
        # (as loop.new_head does for the pooled heads).
        self.linear = nn.Linear(hidden_size, vocab_size)
        if init == "zero":
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        elif init != "random":
            raise ValueError(f"unknown head init {init!r} (random | zero)")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.linear(frames)


def _targets(targets: Sequence[Sequence[int]], device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(t) for t in targets], dtype=torch.long, device=device)
    flat = torch.tensor([i for t in targets for i in t], dtype=torch.long, device=device)
    if flat.numel() and bool((flat == BLANK).any()):
        raise ValueError("a CTC target holds the blank (index 0); encode with the vocabulary")
    return flat, lengths


def ctc_losses(logits: torch.Tensor, frame_mask: torch.Tensor,
               targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Per-clip CTC losses (B,), each divided by its target length (as ``reduction="mean"``
    does before averaging), infinite ones zeroed.

    logits (B, T, V) from :class:`CTCHead`; frame_mask (B, T) True on valid frames; targets:
    each clip's token indices (no blanks). Computed in float32 whatever the autocast: CTC's
    log-space sums lose too much in fp16.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    input_lengths = frame_mask.sum(dim=1).long()
    flat, target_lengths = _targets(targets, logits.device)
    losses = F.ctc_loss(log_probs, flat, input_lengths, target_lengths, blank=BLANK,
                        reduction="none", zero_infinity=True)
    return losses / target_lengths.clamp(min=1).to(losses.dtype)


def ctc_loss(logits: torch.Tensor, frame_mask: torch.Tensor,
             targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """The batch's CTC loss: mean reduction (per-clip loss / target length, averaged over
    clips) and zero_infinity, as ``F.ctc_loss(..., reduction="mean", zero_infinity=True)``."""
    return ctc_losses(logits, frame_mask, targets).mean()


def greedy_decode(logits: torch.Tensor, frame_mask: torch.Tensor) -> list[list[int]]:
    """Best path per clip over its valid frames: argmax, repeats collapsed, blanks dropped."""
    best = logits.argmax(dim=-1).cpu()
    lengths = frame_mask.sum(dim=1).cpu().tolist()
    out: list[list[int]] = []
    for path, n in zip(best.tolist(), lengths):
        ids: list[int] = []
        previous = None
        for i in path[:n]:
            if i != previous and i != BLANK:
                ids.append(i)
            previous = i
        out.append(ids)
    return out


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """Levenshtein distance (substitutions, deletions, insertions, each 1) between token
    sequences; a token is compared whole, so a multi-character phone is one symbol."""
    if len(reference) < len(hypothesis):
        # Distance is symmetric; the shorter sequence as the row keeps the row short.
        reference, hypothesis = hypothesis, reference
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, start=1):
        current = [i]
        for j, h in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class AsrScore:
    """An evaluation set's ASR score. ``perf`` = 1 - token_error_rate (the CLTM's Perf)."""

    token_error_rate: float  # CER (characters) or PER (phones), corpus-level
    word_error_rate: float  # corpus-level
    token_edits: int
    reference_tokens: int
    word_edits: int
    reference_words: int
    clips: int
    empty_hypotheses: int  # clips that decoded to nothing (only blanks, or only separators)

    @property
    def perf(self) -> float:
        return 1.0 - self.token_error_rate


def score(references: Sequence[Sequence[str]], hypotheses: Sequence[Sequence[str]],
          separator: str = WORD_SEPARATOR) -> AsrScore:
    """Corpus-level error rates of decoded token lists against reference token lists.

    Tokens include the word separator (a missed word boundary is an error in CER, as a missed
    space is in jiwer's CER); separators at either end of a clip are not counted, nor doubled
    ones (no reference holds them, and they say nothing). Words are the runs of tokens between
    separators.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    edits = ref_tokens = word_edits = ref_words = empty = 0
    for ref, hyp in zip(references, hypotheses):
        ref_w, hyp_w = words(ref, separator), words(hyp, separator)
        ref_t, hyp_t = _joined(ref_w, separator), _joined(hyp_w, separator)
        edits += edit_distance(ref_t, hyp_t)
        ref_tokens += len(ref_t)
        word_edits += edit_distance(ref_w, hyp_w)
        ref_words += len(ref_w)
        empty += not hyp_t  # nothing but blanks (or separators) decoded
    if ref_tokens == 0 or ref_words == 0:
        raise ValueError("the references hold no tokens: nothing to score")
    return AsrScore(edits / ref_tokens, word_edits / ref_words, edits, ref_tokens, word_edits,
                    ref_words, len(references), empty)


def _joined(word_list: list[tuple[str, ...]], separator: str) -> list[str]:
    out: list[str] = []
    for word in word_list:
        if out:
            out.append(separator)
        out.extend(word)
    return out


def is_degenerate(result: AsrScore) -> bool:
    """A run that emitted only blanks on every evaluation clip, or whose token error rate is
    >= 1 (no better than emitting nothing, which scores exactly 1): counted in run_health."""
    return result.empty_hypotheses == result.clips or result.token_error_rate >= 1.0
