"""CTC head, loss, greedy decoding and the ASR score (jiwer as the oracle)."""

from __future__ import annotations

import jiwer
import pytest
import torch
import torch.nn.functional as F

from cltm.data.transcripts import WORD_SEPARATOR, build_vocabulary, char_tokens
from cltm.train.ctc import (
    CTCHead,
    ctc_loss,
    ctc_losses,
    edit_distance,
    greedy_decode,
    is_degenerate,
    score,
)

REFS = ["the cat sat on the mat", "el gato", "a quick brown fox", "dziękuję bardzo"]
HYPS = ["the cat sit on mat", "el gatto", "", "dziekuje bardzo bardzo"]


def test_edit_distance() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == edit_distance("abc", "") == 3
    assert edit_distance(["tʃ", "a"], ["tʃ", "a"]) == 0
    assert edit_distance(["tʃ", "a"], ["t", "a"]) == 1


def test_cer_and_wer_match_jiwer() -> None:
    result = score([char_tokens(r) for r in REFS], [char_tokens(h) for h in HYPS])
    assert result.token_error_rate == pytest.approx(jiwer.cer(REFS, HYPS))
    assert result.word_error_rate == pytest.approx(jiwer.wer(REFS, HYPS))
    assert result.perf == pytest.approx(1 - jiwer.cer(REFS, HYPS))
    assert result.reference_tokens == sum(len(r) for r in REFS)  # spaces count, as in jiwer
    assert result.empty_hypotheses == 1 and result.clips == 4


def test_per_counts_phones_whole() -> None:
    ref = [["tʃ", "ˈ", "a", "o", WORD_SEPARATOR, "dʒ", "ɛ", "lː", "o"]]
    hyp = [["t", "ˈ", "a", "o", WORD_SEPARATOR, "dʒ", "e", "lː", "o"]]
    result = score(ref, hyp)
    # jiwer's WER over space-joined phones is exactly a phone error rate.
    per = jiwer.wer([" ".join(r) for r in ref], [" ".join(h) for h in hyp])
    assert result.token_error_rate == pytest.approx(per) == pytest.approx(2 / 9)
    # Scored as characters, the multi-character phones would be split and miscounted.
    assert jiwer.cer(["".join(r) for r in ref], ["".join(h) for h in hyp]) != pytest.approx(per)
    assert result.word_error_rate == pytest.approx(1.0)  # both words wrong


def test_separators_at_the_ends_do_not_count() -> None:
    plain = score([["a", "|", "b"]], [["a", "|", "b"]])
    padded = score([["a", "|", "b"]], [["|", "a", "|", "|", "b", "|"]])
    assert plain.token_error_rate == padded.token_error_rate == 0.0


def test_degenerate() -> None:
    refs = [char_tokens(r) for r in REFS]
    assert is_degenerate(score(refs, [[] for _ in refs]))  # only blanks
    assert is_degenerate(score(refs, [[WORD_SEPARATOR] for _ in refs]))  # nothing but spaces
    assert score(refs, [[] for _ in refs]).token_error_rate == 1.0
    noisy = [list("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx") for _ in refs]
    assert is_degenerate(score(refs, noisy))  # error rate >= 1
    assert not is_degenerate(score(refs, [char_tokens(h) for h in HYPS]))
    with pytest.raises(ValueError, match="no tokens"):
        score([[]], [["a"]])


def test_loss_is_torch_mean_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 12, 5, generator=g)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for i, n in enumerate((12, 9, 6)):
        mask[i, :n] = True
    targets = [[1, 2, 3], [4, 4], [2]]
    ours = ctc_loss(logits, mask, targets)
    ref = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), torch.tensor([1, 2, 3, 4, 4, 2]),
                     mask.sum(1), torch.tensor([3, 2, 1]), reduction="mean", zero_infinity=True)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    garbage = logits.clone()
    garbage[~mask] = 100.0  # whatever sits in padded frames
    assert ctc_loss(garbage, mask, targets).item() == pytest.approx(ours.item(), rel=1e-6)
    # A target longer than its frames cannot be aligned: zero, not infinite.
    losses = ctc_losses(logits, mask, [[1], [1], [1, 2, 3, 4, 1, 2, 3]])
    assert torch.isfinite(losses).all() and losses[2].item() == 0.0
    with pytest.raises(ValueError, match="blank"):
        ctc_loss(logits, mask, [[0], [1], [1]])


def test_greedy_decode() -> None:
    # Paths: 1 1 0 1 2 2 | 0 0 3 (then a padded frame that must be ignored)
    paths = [[1, 1, 0, 1, 2, 2, 0], [0, 0, 3, 3, 0, 0, 4]]
    logits = F.one_hot(torch.tensor(paths), 5).float()
    mask = torch.tensor([[True] * 6 + [False], [True] * 4 + [False] * 3])
    assert greedy_decode(logits, mask) == [[1, 1, 2], [3]]


def _fixture(n: int, generator: torch.Generator, embed: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Clips of random symbols (1..V-1), each spoken as 3 frames of its planted direction
    plus noise, a noise frame between symbols."""
    vocab, hidden = embed.shape
    clips, targets = [], []
    for _ in range(n):
        symbols = torch.randint(1, vocab, (int(torch.randint(2, 6, (1,), generator=generator)),),
                                generator=generator).tolist()
        frames = []
        for s in symbols:
            frames += [embed[s]] * 3 + [torch.zeros(hidden)]
        x = torch.stack(frames)
        clips.append(x + 0.7 * torch.randn(x.shape, generator=generator))
        targets.append(symbols)
    longest = max(len(c) for c in clips)
    batch = torch.zeros(n, longest, hidden)
    mask = torch.zeros(n, longest, dtype=torch.bool)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = c
        mask[i, : len(c)] = True
    return batch, mask, targets


def test_a_run_learns_in_a_handful_of_steps() -> None:
    g = torch.Generator().manual_seed(0)
    symbols = [WORD_SEPARATOR, "a", "tʃ", "e", "ʃ", "o"]
    vocab = build_vocabulary("phone", [symbols])
    embed = torch.randn(len(vocab), 16, generator=g)
    train, train_mask, train_targets = _fixture(32, g, embed)
    test, test_mask, test_targets = _fixture(32, g, embed)
    torch.manual_seed(0)
    head = CTCHead(16, len(vocab), init="zero")

    def evaluate():
        with torch.no_grad():
            hyps = greedy_decode(head(test), test_mask)
        return score([vocab.decode(t) for t in test_targets], [vocab.decode(h) for h in hyps])

    assert is_degenerate(evaluate())  # a zero head emits only blanks
    optimiser = torch.optim.Adam(head.parameters(), lr=0.1)
    for step in range(1, 41):
        optimiser.zero_grad()
        loss = ctc_loss(head(train), train_mask, train_targets)
        loss.backward()
        optimiser.step()
        if step == 5:  # a handful of steps: below an error rate of 1 (0.66 measured)
            result = evaluate()
            assert not is_degenerate(result) and result.token_error_rate < 0.9, result
    assert evaluate().token_error_rate < 0.25  # 0.09 measured at step 40


def test_head_init_same_generator_position() -> None:
    torch.manual_seed(3)
    CTCHead(8, 4, init="zero")
    a = torch.rand(1)
    torch.manual_seed(3)
    CTCHead(8, 4, init="random")
    assert torch.equal(a, torch.rand(1))
    with pytest.raises(ValueError, match="init"):
        CTCHead(8, 4, init="xavier")
