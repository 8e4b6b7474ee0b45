"""ECAPA-TDNN: the filterbank against kaldi-native-fbank, the network's sizes against the
paper's, AAM-softmax by hand, and a tiny run that learns, deterministically."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cltm.train import loop
from cltm.train.ecapa import (
    AAMSoftmax,
    EcapaTDNN,
    ReferenceEcapa,
    count_parameters,
)
from cltm.train.ecapa_recipe import (
    EcapaSettings,
    demo_settings,
    embed,
    paper_settings,
    reference_settings,
    run_speaker,
    train_ecapa,
)
from cltm.train.fbank import FbankSettings, fbank, mean_normalise
from cltm.train.grid import RunSpec

# Log-energy tolerance (nats) against kaldi-native-fbank, both in float32: 3e-4 is a relative
# energy error of 0.03%. Bands more than e^16 (~1e-7, float32's resolution) below a frame's
# strongest band hold only the FFT's rounding noise of that band in either implementation, so
# a pure tone is compared on the bands above that floor.
ATOL = 3e-4
FLOOR_NATS = 16.0


def _kaldi(x: np.ndarray, window: str, n_mels: int = 80) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window
    opts.mel_opts.num_bins = n_mels
    f = knf.OnlineFbank(opts)
    f.accept_waveform(16_000, (x * 32768.0).tolist())
    f.input_finished()
    return np.stack([f.get_frame(i) for i in range(f.num_frames_ready)])


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(40_000) / 16_000
    return {
        "uniform": rng.uniform(-0.5, 0.5, 32_000),
        "gaussian": 0.1 * rng.standard_normal(12_345),
        "sine": 0.3 * np.sin(2 * np.pi * 440 * t),
        "two_tones": 0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t),
    }


@pytest.mark.parametrize("window", ["povey", "hamming"])
@pytest.mark.parametrize("name", list(_signals()))
def test_fbank_matches_kaldi_native_fbank(name, window):
    x = _signals()[name].astype(np.float32)
    ref = _kaldi(x, window)
    ours = fbank(torch.from_numpy(x), FbankSettings(window=window)).numpy()
    assert ours.shape == ref.shape == (1 + (len(x) - 400) // 160, 80)
    keep = ref >= ref.max(axis=1, keepdims=True) - FLOOR_NATS
    if name in ("uniform", "gaussian"):
        # broadband: nearly every band is compared (pre-emphasis sinks the lowest band or two)
        assert keep.mean() > 0.95
    np.testing.assert_allclose(ours[keep], ref[keep], rtol=0, atol=ATOL)


def test_fbank_batched_equals_single_and_64_bins():
    x = torch.from_numpy(_signals()["uniform"][:16_000].astype(np.float32))
    batch = fbank(torch.stack([x, 0.5 * x]))
    assert torch.equal(batch[0], fbank(x))
    ref = _kaldi(x.numpy(), "povey", n_mels=64)
    np.testing.assert_allclose(fbank(x, FbankSettings(n_mels=64)).numpy(), ref, rtol=0,
                               atol=ATOL)
    assert fbank(torch.zeros(399)).shape == (0, 80)  # shorter than a frame: no frame


def test_mean_normalise_per_band():
    f = torch.randn(3, 50, 80) + torch.linspace(-5, 5, 80)
    out = mean_normalise(f)
    assert torch.allclose(out.mean(1), torch.zeros(3, 80), atol=1e-5)
    assert torch.allclose(out.std(1), f.std(1))


# The paper's published sizes: ECAPA-TDNN (C=512) 6.2M parameters, (C=1024) 14.7M. Both are
# reproduced with the aggregation layer at 1536 channels at either C; SpeechBrain's VoxCeleb
# recipe takes 3C, which at C=1024 gives 20.8M.
@pytest.mark.parametrize(("channels", "mfa", "expected", "published"), [
    (512, None, 6_194_048, 6.2e6),
    (1024, 1536, 14_660_416, 14.7e6),
    (1024, None, 20_767_552, None),  # SpeechBrain's train_ecapa_tdnn.yaml
])
def test_ecapa_parameter_counts(channels, mfa, expected, published):
    model = EcapaTDNN(n_mels=80, channels=channels, mfa_channels=mfa)
    n = count_parameters(model)
    assert n == expected
    if published:
        assert round(n / 1e5) / 10 == published / 1e6  # equal to the paper's 0.1M
    assert count_parameters(EcapaTDNN(channels=channels,
                                      mfa_channels=paper_settings(channels).mfa_channels)) == (
        6_194_048 if channels == 512 else 14_660_416)


def test_shapes():
    torch.manual_seed(0)
    model = EcapaTDNN(n_mels=80, channels=64).eval()
    assert model(torch.randn(3, 137, 80)).shape == (3, 192)
    ref = ReferenceEcapa(n_mels=16, channels=32).eval()
    out = ref(torch.randn(2, 60, 16))
    assert out.shape == (2, 192)
    assert torch.allclose(out.norm(dim=1), torch.ones(2))  # the reference L2-normalises
    assert count_parameters(ReferenceEcapa()) == 3_029_888  # its C 512, 64 mels


def test_aam_softmax_by_hand():
    s, m = 30.0, 0.2
    head = AAMSoftmax(2, 3, margin=m, scale=s)
    a = 0.7  # class 0's weight at angle a from the embedding; class 1 at 90 deg; class 2 at pi
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[math.cos(a), math.sin(a)], [0.0, 2.0], [-3.0, 0.0]]))
    emb = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    logits = head(emb, torch.tensor([0, 1]))
    # row 0, target 0: s cos(a + m); the others s cos(theta)
    expected0 = [s * math.cos(a + m), 0.0, -s]
    # row 1, target 1: theta = pi/2, s cos(pi/2 + m) = -s sin(m)
    expected1 = [s * math.cos(a), -s * math.sin(m), -s]
    assert torch.allclose(logits, torch.tensor([expected0, expected1]), atol=1e-4)
    # target at theta = pi: past pi - m the fallback s (cos theta - m sin m) takes over
    logits = head(emb[:1], torch.tensor([2]))
    assert logits[0, 2].item() == pytest.approx(s * (-1 - m * math.sin(m)), abs=1e-3)
    no_fallback = AAMSoftmax(2, 3, margin=m, scale=s, fallback=False)
    no_fallback.load_state_dict(head.state_dict())
    assert no_fallback(emb[:1], torch.tensor([2]))[0, 2].item() == pytest.approx(
        # cos(theta + m) rises again past pi (theta: pi less the clamp's 1e-7 on the cosine)
        s * math.cos(math.acos(-1 + 1e-7) + m), abs=1e-3)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([2]))
    assert loss.item() == pytest.approx(
        -(logits[0, 2] - torch.logsumexp(logits[0], 0)).item(), rel=1e-6)


def _speakers(n: int, clips: int, seed: int, seconds: float = 1.2):
    """Synthetic speakers: each a pitch (harmonics with its own spectral tilt) and a noise
    colour; clips differ in phase, pitch jitter, loudness and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16_000 * seconds)) / 16_000
    waves, speakers = [], []
    for k in range(n):
        f0, tilt = 110 * 2 ** (k / 2.5), np.random.default_rng(k).uniform(-1, 1)
        for _ in range(clips):
            f = f0 * (1 + 0.02 * rng.standard_normal())
            x = sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 2 * np.pi))
                    * h ** (-1.0 + 0.5 * tilt) for h in range(1, 8))
            noise = rng.standard_normal(t.size)
            noise = np.cumsum(noise) * 0.02 if tilt > 0 else np.diff(noise, prepend=0)
            x = 0.2 * x / np.abs(x).max() + 0.05 * noise / np.abs(noise).max()
            waves.append(torch.tensor(x * rng.uniform(0.5, 1.0), dtype=torch.float32))
            speakers.append(f"spk{k}")
    return waves, speakers


def _verify(trained, waves, speakers) -> tuple[float, float]:
    emb = embed(trained, waves)
    pairs = list(itertools.combinations(range(len(waves)), 2))
    labels = np.array([speakers[i] == speakers[j] for i, j in pairs], dtype=int)
    index = {str(i): i for i in range(len(waves))}
    scores = loop.cosine_scores(emb, index, [str(i) for i, _ in pairs],
                                 [str(j) for _, j in pairs])
    return loop.auc_eer(scores, labels)


@pytest.fixture(scope="module")
def threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_run_learns_and_is_deterministic(threads):
    train_w, train_s = _speakers(4, 6, seed=0)
    eval_w, eval_s = _speakers(4, 5, seed=1)  # new clips of the same voices
    # explicit, so a change of the demo's own settings does not move this fixture's check
    s = demo_settings(crop_s=1.0, steps=60, batch_size=24, lr=3e-3)
    untrained = train_ecapa(train_w, train_s, replace_steps(s, 0), seed=0)
    auc0, eer0 = _verify(untrained, eval_w, eval_s)
    state = torch.random.get_rng_state()
    a = train_ecapa(train_w, train_s, s, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    auc, eer = _verify(a, eval_w, eval_s)
    assert len(a.losses) == 60 and a.losses[-1] < a.losses[0]
    # A floor with room: the CPU's kernels move it (0.842 on an Intel Xeon, above 0.85 on an
    # AMD EPYC); what the run learnt is the gain over the untrained model below.
    assert eer < 0.3 and auc > 0.8, (auc, eer)
    assert auc > auc0 + 0.05 and eer < eer0, (auc0, eer0, auc, eer)
    b = train_ecapa(train_w, train_s, s, seed=0)
    assert a.losses == b.losses
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    c = train_ecapa(train_w, train_s, replace_steps(s, 3), seed=1)
    d = train_ecapa(train_w, train_s, replace_steps(s, 3), seed=0)
    assert not torch.equal(c.model.layer1.conv.weight, d.model.layer1.conv.weight)


def replace_steps(s: EcapaSettings, steps: int) -> EcapaSettings:
    from dataclasses import replace

    return replace(s, steps=steps)


def test_reference_variant_trains_deterministically(threads):
    waves, speakers = _speakers(3, 3, seed=0, seconds=0.7)
    s = reference_settings(channels=16, n_mels=16, crop_s=0.5, batch_size=4, epochs=2)
    assert s.optimizer == "adamw" and s.grad_clip is None and s.variant == "reference"
    a = train_ecapa(waves, speakers, s, seed=3)
    b = train_ecapa(waves, speakers, s, seed=3)
    # 9 clips at 4 a batch: 4, 4 and a last clip joined to the second batch
    assert len(a.losses) == 2 * 2 and a.losses == b.losses
    emb = embed(a, waves)
    assert emb.shape == (9, 192) and torch.allclose(emb.norm(dim=1), torch.ones(9), atol=1e-5)
    assert torch.equal(emb, embed(b, waves))


def test_settings_validate():
    with pytest.raises(ValueError, match="variant"):
        EcapaSettings(variant="xvector")
    with pytest.raises(ValueError, match="schedule"):
        EcapaSettings(schedule="cosine")
    with pytest.raises(ValueError, match="window"):
        EcapaSettings(window="hann")
    with pytest.raises(ValueError, match="batch_size"):
        EcapaSettings(batch_size=1)


def test_triangular_schedule_is_speechbrains():
    from cltm.train.ecapa_recipe import _lr_factor

    s = paper_settings(512, steps=20)
    assert (s.schedule, s.lr_cycle_steps) == ("triangular", 10)  # one cycle over the run
    lrs = [s.lr * _lr_factor(s, step, 0) for step in (0, 5, 10, 15, 20)]
    assert lrs == pytest.approx([1e-8, 0.5e-3 + 0.5e-8, 1e-3, 0.5e-3 + 0.5e-8, 1e-8])
    assert paper_settings(512).schedule == "constant"


def test_run_speaker_reads_the_speaker_subsets(synthetic_subsets, threads):
    from cltm.data.pack import PackedAudio

    root = synthetic_subsets["speaker"]
    manifest = pd.read_csv(root / "manifest.csv")
    trials = pd.read_csv(root / "trials.csv")
    audio = PackedAudio(root)
    waves = {c: torch.from_numpy(audio[c]) for c in manifest["clip"]}
    s = demo_settings(channels=16, se_channels=8, attention_channels=8, crop_s=0.5, steps=4)
    spec = RunSpec("speaker", "aa", "cross", "bb", 0)
    record = run_speaker(spec, manifest, trials, waves, s)
    train = manifest[((manifest["language"] == "aa") | (manifest["language"] == "bb"))
                     & (manifest["role"] == "D")]
    assert record["train_clips"] == len(train) and record["steps"] == 4
    assert record["eval_trials"] == int((trials["language"] == "aa").sum())
    assert 0.0 <= record["score"] <= 1.0 and 0.0 <= record["eer"] <= 1.0
    assert record["run_id"] == "speaker/aa/cross-bb/0"
    from cltm.train.ecapa_recipe import all_features
    from cltm.train.grid import probe_clips

    probes = probe_clips(manifest, 3, seed=0)
    again = run_speaker(spec, manifest, trials, waves, s, features=all_features(waves, s),
                        probes=probes)
    assert (again["score"], again["eer"]) == (record["score"], record["eer"])
    assert again["probes"]["target"].shape == (3, 192)
    assert again["probes"]["donor"].dtype == np.float16


def test_batch_bounds_never_leave_one_clip_alone():
    from cltm.train.ecapa_recipe import _batch_bounds

    assert _batch_bounds(8, 4) == [(0, 4), (4, 8)]
    assert _batch_bounds(9, 4) == [(0, 4), (4, 9)]
    assert _batch_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert _batch_bounds(24, 128) == [(0, 24)]
    with pytest.raises(ValueError, match="at least 2"):
        _batch_bounds(1, 4)


def test_a_long_run_passes_through_every_shorter_one(threads):
    """The learning check's premise: after_step at step k sees the weights of a k-step run."""
    waves, speakers = _speakers(3, 3, seed=2, seconds=0.8)
    s = paper_settings(32, steps=5, se_channels=8, attention_channels=8, mfa_channels=None,
                       crop_s=0.5, batch_size=4)
    seen = {}

    def keep(run):
        seen[len(run.losses)] = {k: v.clone() for k, v in run.model.state_dict().items()}
        embed(run, waves[:2])  # evaluating on the way must not change the run

    long = train_ecapa(waves, speakers, s, seed=0, after_step=keep)
    short = train_ecapa(waves, speakers, replace_steps(s, 3), seed=0)
    assert long.losses[:3] == short.losses
    for name, value in short.model.state_dict().items():
        assert torch.equal(seen[3][name], value), name


def test_learning_check_benchmark_runs(synthetic_subsets, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "check.csv"
    proc = subprocess.run(
        [sys.executable, str(repo / "benchmarks" / "ecapa_learning.py"),
         str(synthetic_subsets["speaker"]), "--steps", "1", "2", "--out", str(out), "--set",
         "channels=8", "se_channels=8", "attention_channels=8", "crop_s=0.5"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    df = pd.read_csv(out)
    assert sorted(df["steps"].unique()) == [0, 1, 2]
    assert set(df["condition"]) == {"base", "self", "cross"}
    assert len(df) == 3 * 3 * 3  # languages x conditions x step counts
