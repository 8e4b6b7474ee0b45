"""HuBERT-style pretraining of the demo encoder: aligned targets, falling loss, loadable model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    targets = cluster_targets(waves, k=5, seed=0, threads=1)
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


#: A tiny pretrain in a fresh process; prints the sha256 of the encoder's weights. argv[1]:
#: "pin" pins the kernels (as the CLI does) before torch loads.
_PRETRAIN = """
import hashlib, sys
from cltm import kernels
if sys.argv[1] == "pin":
    kernels.pin()
from cltm.config import PretrainConfig
from cltm.train.pretrain import pretrain
from tests.conftest import TINY_HUBERT
from tests.test_pretrain import _waves
s = PretrainConfig(enabled=True, architecture=TINY_HUBERT, clusters=8, epochs=1,
                   crop_seconds=1.0, batch_size=4, lr=2e-3, seed=0, threads=2)
model, _ = pretrain(_waves(8), s, progress=False)
print(hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values()))
      .hexdigest())
"""


def _pretrained_digest(capability: str, pin: bool) -> str:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    env.pop("MKL_CBWR", None)
    proc = subprocess.run([sys.executable, "-c", _PRETRAIN, "pin" if pin else "no"], env=env,
                          cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[-1]


def test_the_encoder_is_the_same_bytes_whatever_kernels_the_cpu_offers():
    """Another x86-64 CPU, emulated: torch's AVX-512 kernels where this one has them, its AVX2
    ones otherwise. Pinned (as every `cltm` command pins them), both give the same bytes;
    unpinned, on a CPU with AVX-512, they differ, which shows the emulation changes something
    (docs/findings.md, "Issue 39")."""
    assert _pretrained_digest("avx512", pin=True) == _pretrained_digest("avx2", pin=True)
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        assert _pretrained_digest("avx512", pin=False) != _pretrained_digest("avx2", pin=False)


def test_every_cltm_command_pins_the_kernels(monkeypatch, tmp_path):
    from cltm import kernels
    from cltm.cli import main

    for key in kernels.PINNED:
        monkeypatch.delenv(key, raising=False)
    main(["--params", str(tmp_path / "missing.yaml"), "languages"])  # fails: no params file
    assert {k: os.environ.get(k) for k in kernels.PINNED} == kernels.PINNED
