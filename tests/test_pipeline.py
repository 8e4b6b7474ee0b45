"""The demo stages end to end through `dvc repro`, in a temporary copy of the repository."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cltm.cli import main
from cltm.data.pack import PackedAudio
from tests.conftest import copy_pipeline, hermetic_failures, run_cmd, run_hermetic, stages_run

REPO = Path(__file__).resolve().parents[1]

# Small enough for seconds, big enough for every role: 16 speakers leave 10 for training
# (5 per gender), 4 for test trials.
TINY = {
    "data": {"languages": ["es", "de"]},
    "demo": {"speakers_per_language": 16, "clips_per_speaker": 3, "dev_speakers": 2,
             "test_speakers": 4},
    "tasks": {"gender": {"N": "auto", "clips_per_speaker": 1, "seeds": None},
              "speaker": {"N": 4, "clips_per_speaker": 2, "seeds": None}},
    "train": {"seeds": [0]},
    "pretrain": {"epochs": 2},
    "analysis": {"probe_clips": 4},
    # gender's N comes from its learning curve; speaker's curve runs too (its N stays fixed)
    "curve": {"enabled": True, "N_grid": {"gender": [1, 2, 4], "speaker": [4, 8]},
              "seeds": [0, 1]},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) else v
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    copy_pipeline(root)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_cmd(["git", "init", "-q"], root)
    run_cmd(["dvc", "repro"], root)
    return root


@pytest.mark.slow
def test_repro_writes_corpus_manifests_trials_and_pack(repo):
    corpus = repo / "data" / "demo_corpus"
    for lang in ("es", "de"):
        for tsv in ("validated", "train", "dev", "test", "clip_durations"):
            assert (corpus / lang / f"{tsv}.tsv").is_file()
    assert (corpus / "families.csv").is_file()

    for task in ("gender", "speaker"):
        out = repo / "data" / "subsets" / task
        manifest = pd.read_csv(out / "manifest.csv")
        assert {"clip", "language", "speaker", "gender", "role"} <= set(manifest.columns)
        assert set(manifest["language"]) == {"es", "de"}
        assert set(manifest["role"]) == {"D", "D_prime", "eval"}
        packed = PackedAudio(out)
        assert set(packed.index) == set(manifest["clip"])
        for clip in manifest["clip"].iloc[:10]:
            x = packed[clip]
            assert x.size > 16_000 * 0.5 and float((x**2).mean()) > 1e-5

    gender = pd.read_csv(repo / "data" / "subsets" / "gender" / "manifest.csv")
    train = gender[gender["role"] != "eval"]
    chosen = json.loads((repo / "metrics" / "curves" / "gender.json").read_text())["chosen_N"]
    assert chosen in (1, 2)  # 2N must be on the grid [1, 2, 4]
    assert (train.groupby(["language", "role", "gender"]).size() == chosen).all()

    trials = pd.read_csv(repo / "data" / "subsets" / "speaker" / "trials.csv")
    assert {"a", "b", "label", "language"} <= set(trials.columns)
    assert set(trials["label"]) == {0, 1}
    speaker_eval = pd.read_csv(repo / "data" / "subsets" / "speaker" / "manifest.csv")
    assert set(trials["a"]) | set(trials["b"]) <= set(speaker_eval["clip"])


@pytest.mark.slow
def test_second_repro_does_nothing_and_status_is_clean(repo):
    assert stages_run(run_cmd(["dvc", "repro"], repo)) == set()
    assert "up to date" in run_cmd(["dvc", "status"], repo)


@pytest.mark.slow
def test_repro_trains_every_run_and_writes_the_cltm(repo):
    for task in ("gender", "speaker"):
        runs = pd.read_json(repo / "metrics" / "runs" / task / "runs.jsonl", lines=True)
        assert len(runs) == (2 * 2 + 2) * 1  # (n² + n) × seeds
        assert runs["run_id"].is_unique
        for name in ("cltm.csv", "cltm_se.csv", "performance.csv", "diagnostics.json",
                     "heatmap.png", "self_gain.png"):
            assert (repo / "metrics" / "tasks" / task / name).is_file()
    assert (repo / "mlflow.db").is_file()
    assert "Table 1" in (repo / "metrics" / "report.md").read_text()
    shown = run_cmd(["dvc", "metrics", "show"], repo)
    assert "metrics/tasks/gender/diagnostics.json" in shown and "rfd1" in shown


@pytest.mark.slow
def test_curve_stage_chooses_N_from_nested_base_runs(repo):
    for task, grid in (("gender", [1, 2, 4]), ("speaker", [4, 8])):
        runs = pd.read_json(repo / "metrics" / "runs" / f"{task}-curve" / "runs.jsonl",
                            lines=True)
        assert len(runs) == 2 * len(grid) * 2  # languages x N x seeds
        assert set(runs["condition"]) == {"base"} and sorted(runs["n"].unique()) == grid
        # nested: a curve run on N trains on N clips per class (gender) or N clips (speaker)
        per_class = 2 if task == "gender" else 1
        assert (runs["train_clips"] == runs["n"] * per_class).all()
        choice = json.loads((repo / "metrics" / "curves" / f"{task}.json").read_text())
        assert choice["enabled"] and choice["chosen_N"] in grid[:-1]
        assert set(choice["implied_self_gain"]) == {"es", "de"}
        for name in ("curve.png", "interval_scores.png", "curve.csv"):
            assert (repo / "metrics" / "curves" / task / name).is_file()
    shown = run_cmd(["dvc", "metrics", "show"], repo)
    assert "metrics/curves/gender.json" in shown and "chosen_N" in shown


@pytest.mark.slow
def test_geometry_and_gaps_stages_write_their_metrics(repo):
    probes = list((repo / "metrics" / "runs" / "speaker" / "probes").glob("*.npz"))
    assert len(probes) == 2 * 2 + 2  # one per run of the grid
    geometry = json.loads((repo / "metrics" / "tasks" / "speaker" / "geometry.json").read_text())
    assert geometry["enabled"] and geometry["probe_clips"] == 4
    assert {"centroid", "sinkhorn"} == set(geometry["correlations"])
    per_run = pd.read_csv(repo / "metrics" / "tasks" / "speaker" / "geometry" / "per_run.csv")
    assert len(per_run) == 2  # the cross runs: 2 targets x 1 donor x 1 seed
    assert (per_run[["centroid", "sinkhorn"]] > 0).all().all()
    for task in ("gender", "speaker"):
        gaps = json.loads((repo / "metrics" / "tasks" / task / "gaps.json").read_text())
        assert set(gaps["performance_gap"]) == {"base", "self", "cross"}
        assert gaps["cka"]["enabled"]
        cka = pd.read_csv(repo / "metrics" / "tasks" / task / "gaps" / "cka.csv")
        cka = cka.set_index("target")
        values = cka.to_numpy(dtype=float)
        assert ((values >= -1e-9) & (values <= 1 + 1e-9)).all()
    report = (repo / "metrics" / "report.md").read_text()
    assert "Performance and linguistic gaps" in report and "Embedding geometry" in report
    assert "Choosing N" in report


@pytest.mark.slow
def test_every_stage_runs_from_its_declared_deps_alone(repo):
    """Each stage, run in a fresh folder holding only what dvc.yaml declares for it (its deps,
    params.yaml and the corpus root, an immutable release), succeeds and writes every out."""
    corpus = yaml.safe_load((repo / "params.yaml").read_text())["data"]["commonvoice"]["root"]
    failed = hermetic_failures(repo, repo, [corpus])
    assert not failed, "\n\n".join(f"{s}: {why}" for s, why in failed.items())


@pytest.mark.slow
def test_the_hermetic_check_fails_where_a_read_is_undeclared(repo):
    """A read dropped from a stage's deps (one that dvc.yaml once left undeclared, and the
    report's contrasts): without it the stage fails or writes other outs than the pipeline
    did."""
    corpus = yaml.safe_load((repo / "params.yaml").read_text())["data"]["commonvoice"]["root"]
    for stage, dep in (("gaps@gender", "metrics/tasks/gender/cltm.csv"),
                       ("report", "metrics/contrasts")):
        code, _, outs = run_hermetic(repo, repo, [corpus], stage, drop=[dep])
        assert code != 0 or outs, f"{stage} ran alike without {dep}"


@pytest.mark.slow
def test_changing_speaker_N_reruns_only_what_depends_on_it(repo):
    curve_store = repo / "metrics" / "runs" / "speaker-curve" / "runs.jsonl"
    before = curve_store.read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tasks"]["speaker"]["N"] = 8
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran = stages_run(run_cmd(["dvc", "repro"], repo))
    # the curve keeps its runs (their hash leaves N out): only its data and choice are redone
    downstream = {"subsets@speaker", "grid@speaker", "cltm@speaker", "gaps@speaker",
                  "geometry@speaker"}
    assert downstream <= ran <= downstream | {"curve@speaker", "contrast@speaker-gender",
                                              "report"}
    assert curve_store.read_text() == before  # no curve run was retrained
    manifest = pd.read_csv(repo / "data" / "subsets" / "speaker" / "manifest.csv")
    assert (manifest[manifest["role"] == "D"].groupby("language").size() == 8).all()


@pytest.mark.slow
def test_languages_report_reads_the_corpus(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    # tasks.gender.N is auto here: the curve stage's choice gives it
    assert main(["languages", "--gender-curve", "metrics/curves/gender.json"]) == 0
    out = capsys.readouterr().out
    assert "es" in out and "de" in out


def test_cli_reports_config_errors_cleanly(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("data: {source: cv}\n")
    assert main(["--params", str(bad), "subsets", "--task", "gender", "--metadata", "m",
                 "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cltm: error:") and "data.source" in err
