"""Every shipped config runs through DVC, as a user runs it: `cp configs/X.yaml params.yaml`,
point it at a release and an encoder directory, `dvc repro`, and `dvc status` is clean after.

The release is tiny but in Common Voice layout with the real releases' traps: one locale on the
old gender labels (male/female) and without clip_durations.tsv (releases before 17.0), unquoted
TSV fields with a lone quote, a contributor who speaks two languages, a locale recorded at
32 kHz. The encoder is a random HuBERT saved with `save_pretrained`: nothing downloads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import soxr
import yaml

from cltm.data.commonvoice import read_tsv
from cltm.data.demo import write_demo_corpus
from tests.conftest import TINY_HUBERT, copy_pipeline, demo_spec, run_cmd, stages_run

REPO = Path(__file__).resolve().parents[1]
LANGS = ["es", "de", "it"]


def _write_tsv(path: Path, table: pd.DataFrame) -> None:
    # As the releases write them: tab-separated, fields never quoted
    path.write_text("\t".join(table.columns) + "\n" + "".join(
        "\t".join(map(str, row)) + "\n" for row in table.itertuples(index=False)))


def _release(root: Path) -> Path:
    spec = demo_spec(languages=tuple(LANGS), speakers_per_language=16, clips_per_speaker=3,
                    dev_speakers=2, test_speakers=4, clip_seconds=1.0, seed=7)
    write_demo_corpus(root, spec, workers=1, progress=False)
    # it: an old release's locale (male/female, no durations file), recorded at 32 kHz
    it = root / "it"
    for split in ("validated", "train", "dev", "test"):
        t = read_tsv(it / f"{split}.tsv")
        t["gender"] = t["gender"].replace({"male_masculine": "male",
                                           "female_feminine": "female"})
        _write_tsv(it / f"{split}.tsv", t)
    (it / "clip_durations.tsv").unlink()
    for clip in (it / "clips").iterdir():
        audio, rate = sf.read(clip, dtype="float32")
        sf.write(clip, soxr.resample(audio, rate, 32_000), 32_000, format="MP3")
    # es: a sentence with a lone quote, written unquoted
    es = root / "es"
    for split in ("validated", "train"):
        t = read_tsv(es / f"{split}.tsv")
        t.loc[t.index[0], "sentence"] = 'He said "hola and left'
        _write_tsv(es / f"{split}.tsv", t)
    # de: one training speaker is also a contributor to es (the same client_id)
    de_val, es_val = read_tsv(root / "de" / "validated.tsv"), read_tsv(es / "validated.tsv")
    de_train = read_tsv(root / "de" / "train.tsv")
    shared = es_val["client_id"].iloc[0]
    moved = de_train["client_id"].iloc[0]
    for name, t in (("validated", de_val), ("train", de_train)):
        t["client_id"] = t["client_id"].replace({moved: shared})
        _write_tsv(root / "de" / f"{name}.tsv", t)
    return root


def _encoder(path: Path) -> Path:
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    HubertModel(HubertConfig(**TINY_HUBERT, conv_bias=False)).save_pretrained(path)
    return path


def _set(raw: dict, key: str, value) -> None:
    node = raw
    *path, last = key.split(".")
    for k in path:
        node = node[k]
    assert last in node, f"{key} is not a key of the shipped config"
    node[last] = value


#: What a user changes in a shipped config to run it here: the release, the languages, the
#: encoder directory, seeds and sizes. Nothing else.
CHANGES = {
    "data.commonvoice.root": "release",
    "data.languages": LANGS,
    "data.drop_short_languages": False,
    "data.workers": 1,
    "model.name_or_path": "models/encoder",
    "train.seeds": [0],
    "tasks.gender.N": 2,
    "tasks.gender.clips_per_speaker": 1,
    "tasks.gender.seeds": None,
    "tasks.speaker.N": 4,
    "tasks.speaker.clips_per_speaker": 2,
    "tasks.speaker.seeds": None,
    "tasks.speaker.max_pairs_per_speaker": 4,
    "analysis.bootstrap": 20,
    "analysis.permutations": 20,
    "analysis.probe_clips": 2,
    "curve.enabled": False,
}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return _release(tmp_path_factory.mktemp("cv") / "release")


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted((REPO / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_a_shipped_config_runs_through_dvc_and_leaves_status_clean(config, release,
                                                                  tmp_path):
    import shutil

    root = tmp_path / "project"
    root.mkdir()
    copy_pipeline(root)
    shutil.copytree(release, root / "release")
    _encoder(root / "models" / "encoder")
    raw = yaml.safe_load(config.read_text())
    for key, value in CHANGES.items():
        _set(raw, key, value)
    if raw["train"]["executor"] == "ray":
        _set(raw, "train.ray.cpu_workers", 1)  # a size: the 2-core CI machine
        _set(raw, "train.ray.cpus_per_worker", 1)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    run_cmd(["git", "init", "-q"], root)
    out = run_cmd(["dvc", "repro"], root)
    ran = stages_run(out)
    assert {"grid@gender", "grid@speaker", "cltm@gender", "cltm@speaker", "report"} <= ran
    assert {f"metadata@{loc}" for loc in LANGS} <= ran
    status = run_cmd(["dvc", "status"], root)
    assert "up to date" in status, status
    for task in ("gender", "speaker"):
        runs = [json.loads(x) for x in
                (root / "metrics" / "runs" / task / "runs.jsonl").read_text().splitlines()]
        assert len(runs) == (len(LANGS) ** 2 + len(LANGS)) * 1
        assert all(np.isfinite(r["score"]) for r in runs)
        assert (root / "metrics" / "tasks" / task / "cltm.csv").is_file()
    # the old-release locale read: its metadata has no durations, and its clips were decoded
    it = pd.read_parquet(root / "data" / "metadata" / "it.parquet")
    assert it["duration_s"].isna().all() and set(it["gender"]) >= {"male", "female"}
    # the contributor in two languages is in no language's training or evaluation data twice
    manifest = pd.read_csv(root / "data" / "subsets" / "gender" / "manifest.csv")
    assert manifest.groupby("speaker")["language"].nunique().max() == 1
    # a second repro runs nothing: DVC and the code agree on what is stale
    assert stages_run(run_cmd(["dvc", "repro"], root)) == set()
