"""The subsets stage on a real (tiny) eSpeak NG corpus: a clip that fails to decode is replaced."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cltm.config import config_from_dict
from cltm.data.build import build_subsets
from cltm.data.commonvoice import write_metadata
from cltm.data.demo import write_demo_corpus
from cltm.data.pack import PackedAudio
from tests.conftest import demo_spec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cv") / "demo"
    spec = demo_spec(languages=("es", "de"), speakers_per_language=16, clips_per_speaker=3,
                    dev_speakers=2, test_speakers=4, clip_seconds=1.5, seed=3)
    write_demo_corpus(out, spec, workers=1, progress=False)
    return out


def _config(root: Path, **data):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"languages": ["es", "de"], "workers": 1, **data})
    raw["data"]["commonvoice"]["root"] = str(root)
    raw["tasks"]["gender"].update({"N": 2, "clips_per_speaker": 1, "seeds": None})
    raw["tasks"]["speaker"].update({"N": 4, "clips_per_speaker": 2})
    return config_from_dict(raw)


def test_a_clip_that_fails_to_decode_is_reported_and_replaced(corpus, tmp_path, caplog,
                                                              monkeypatch):
    config = _config(corpus)
    monkeypatch.chdir(tmp_path)  # the metadata stage's tables, as `dvc repro` leaves them
    for locale in config.data.languages:
        write_metadata(corpus, locale, tmp_path / "metadata")
    clean = build_subsets(config, "gender", tmp_path / "clean", tmp_path / "metadata",
                          progress=False)
    victim = clean[clean["role"] == "D"].iloc[0]
    (corpus / victim["language"] / "clips" / victim["clip"]).write_bytes(b"garbage, not mp3")
    with caplog.at_level(logging.ERROR):
        fixed = build_subsets(config, "gender", tmp_path / "fixed", tmp_path / "metadata",
                              progress=False)
    assert victim["clip"] in caplog.text
    assert victim["clip"] not in set(fixed["clip"])
    # the slot was filled: same sizes per language, role and gender
    count = ["language", "role", "gender"]
    pd.testing.assert_series_equal(fixed.groupby(count).size(), clean.groupby(count).size())
    # and only that slot changed
    assert len(set(clean["clip"]) ^ set(fixed["clip"])) == 2
    pack = PackedAudio(tmp_path / "fixed")
    assert set(pack.index) == set(fixed["clip"])
    assert all(pack.seconds(c) > 0.5 for c in fixed["clip"])


def test_a_shared_pool_decodes_each_clip_from_where_it_lies(corpus, tmp_path, monkeypatch):
    config = _config(corpus, selection="per_seed", selection_pool="shared")
    monkeypatch.chdir(tmp_path)
    for locale in config.data.languages:
        write_metadata(corpus, locale, tmp_path / "metadata")
    manifest = build_subsets(config, "speaker", tmp_path / "shared", tmp_path / "metadata",
                             progress=False)
    train = manifest[manifest["role"] != "eval"]
    assert (train["locale"] != train["language"]).any()  # es's D holds de's speakers, and back
    for locale, clip in zip(train["locale"], train["clip"], strict=True):
        assert (corpus / locale / "clips" / clip).is_file()
    pack = PackedAudio(tmp_path / "shared")
    assert set(pack.index) == set(manifest["clip"])
    assert (tmp_path / "shared" / "trials.csv").is_file()
