"""HuBERT-style pretraining of the demo encoder: aligned targets, falling loss, loadable model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cltm.config import PretrainConfig
from cltm.train.model import load_encoder
from cltm.train.pretrain import HOP, WIN, cluster_targets, mfcc, pretrain
from tests.conftest import TINY_HUBERT


def _waves(n: int = 24, seconds: float = 1.5) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(int(16_000 * seconds)) / 16_000
    out = []
    for i in range(n):
        f0 = 100 + 15 * (i % 8)
        # alternating voiced and noisy stretches give the clusters something to find
        x = np.sin(2 * np.pi * f0 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
        out.append((0.4 * x + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def test_mfcc_frames_match_the_encoder_frames():
    encoder, _ = load_encoder("unused", TINY_HUBERT, init_seed=0)
    for n in (16_000, 23_456, 400, 719, 720):
        frames = int(encoder._get_feat_extract_output_lengths(torch.tensor(n)))
        assert len(mfcc(np.zeros(n, np.float32) + 0.1)) == frames == 1 + (n - WIN) // HOP


def test_cluster_targets_cover_every_frame():
    waves = _waves(6)
    targets = cluster_targets(waves, k=5, seed=0)
    assert [len(t) for t in targets] == [len(mfcc(w)) for w in waves]
    assert len(np.unique(np.concatenate(targets))) == 5


def test_pretraining_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    settings = PretrainConfig(enabled=True, architecture=TINY_HUBERT, clusters=8, epochs=6,
                              crop_seconds=1.0, batch_size=4, lr=2e-3, seed=0, threads=1)
    model, losses = pretrain(_waves(), settings, progress=False)
    assert losses[-1] < losses[0] - 0.1
    _, losses_again = pretrain(_waves(), settings, progress=False)
    assert losses_again == losses  # deterministic for a seed
    model.save_pretrained(tmp_path)
    loaded, do_normalize = load_encoder(str(tmp_path), None, init_seed=0)
    assert do_normalize
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value)
    json.loads((tmp_path / "config.json").read_text())


@pytest.mark.parametrize("model_type", ["wav2vec2", "wavlm", "data2vec-audio"])
def test_another_encoder_family_pretrains_the_same_way(tmp_path, model_type):
    """pretrain.architecture.model_type: the same masked prediction of the same units."""
    settings = PretrainConfig(enabled=True,
                              architecture={**TINY_HUBERT, "model_type": model_type},
                              clusters=8, epochs=6, crop_seconds=1.0, batch_size=4, lr=2e-3,
                              seed=0, threads=1)
    model, losses = pretrain(_waves(), settings, progress=False)
    assert model.config.model_type == model_type
    assert losses[-1] < losses[0] - 0.1
    model.save_pretrained(tmp_path)
    loaded, _ = load_encoder(str(tmp_path), None, init_seed=0)
    assert type(loaded) is type(model)
