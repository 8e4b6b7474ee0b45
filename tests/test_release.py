"""A release costs what the stages read: DVC depends on the selected locales' TSVs (through the
metadata stage's tables), never on the clips or on the locales nobody selected."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cltm.data import commonvoice
from cltm.data.demo import write_demo_corpus
from cltm.errors import CltmError
from tests.conftest import copy_pipeline, demo_spec, run_cmd, stages_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A three-locale release in Common Voice layout (the demo's generator, used as a release)."""
    root = tmp_path_factory.mktemp("release") / "cv-corpus"
    spec = demo_spec(languages=("es", "de", "it"), speakers_per_language=16, clips_per_speaker=2,
                    dev_speakers=2, test_speakers=4, clip_seconds=1.0, seed=5)
    write_demo_corpus(root, spec, workers=1, progress=False)
    return root


def test_metadata_tables_hold_what_the_release_holds(release, tmp_path):
    for locale in ("es", "de"):
        commonvoice.write_metadata(release, locale, tmp_path)
    pd.testing.assert_frame_equal(commonvoice.read_metadata(["es", "de"], tmp_path),
                                  commonvoice.read_release(release, ["es", "de"]))
    with pytest.raises(CltmError, match=r"no metadata table for it .*cltm metadata --locale it"):
        commonvoice.read_metadata(["es", "it"], tmp_path)


@pytest.mark.slow
def test_subsets_rerun_for_a_selected_locales_tsv_only(release, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    copy_pipeline(root)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"source": "commonvoice", "languages": ["es", "de"], "workers": 1})
    params["data"]["commonvoice"]["root"] = str(release)
    params["tasks"]["gender"].update({"N": 2, "clips_per_speaker": 1})
    params["train"]["seeds"] = [0]
    params["tasks"]["gender"]["seeds"] = None
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd(["git", "init", "-q"], root)
    first = stages_run(run_cmd(["dvc", "repro", "subsets@gender"], root))
    assert {"metadata@es", "metadata@de", "subsets@gender"} <= first
    assert "metadata@it" not in first

    # Another locale's TSV and the clips (used or not) are not dependencies.
    with open(release / "it" / "validated.tsv", "a") as fh:
        fh.write("\t".join(["x"] * 13) + "\n")
    for clip in sorted((release / "es" / "clips").iterdir())[:3]:
        clip.write_bytes(clip.read_bytes() + b"\0")
    assert stages_run(run_cmd(["dvc", "repro", "subsets@gender"], root)) == set()

    # A selected locale's TSV: its metadata stage reruns; the subsets only when what it read
    # changed (a vote count is not read; a sentence is).
    es = release / "es" / "validated.tsv"
    table = pd.read_csv(es, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    table.loc[0, "up_votes"] = "7"
    table.to_csv(es, sep="\t", index=False, quoting=3)
    assert stages_run(run_cmd(["dvc", "repro", "subsets@gender"], root)) == {"metadata@es"}
    table.loc[0, "sentence"] = "another sentence"
    table.to_csv(es, sep="\t", index=False, quoting=3)
    # (the other readers of the tables rerun with it: pretraining and the learning curve)
    assert stages_run(run_cmd(["dvc", "repro", "subsets@gender"], root)) == {
        "metadata@es", "pretrain", "curve@gender", "subsets@gender"}
