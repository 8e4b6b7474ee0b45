"""Learning-curve subsets, embedding probes, and the geometry and gaps stages on known inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cltm.analysis import gaps
from cltm.config import config_from_dict
from cltm.data.subsets import select_curve
from cltm.errors import CltmError
from cltm.stages import gaps as gaps_stage
from cltm.stages import geometry as geometry_stage
from cltm.tasks.speaker import SPEAKER_LAYERS
from cltm.train import loop
from cltm.train.grid import RunSpec, curve_specs, probe_clips, training_clips
from cltm.train.store import RunStore
from cltm.train.worker import Worker
from tests.test_subsets import CURVE_OPEN as OPEN
from tests.test_subsets import LANGS as SUB_LANGS
from tests.test_subsets import make_table
from tests.test_train import settings

REPO = Path(__file__).resolve().parents[1]


def _config(**over) -> object:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for dotted, value in over.items():
        node = raw
        *head, last = dotted.split(".")
        for k in head:
            node = node[k]
        node[last] = value
    return config_from_dict(raw)


# --- curve subsets ------------------------------------------------------------------------------

@pytest.mark.parametrize("task,grid,cps", [("gender", [1, 2, 4], 1), ("speaker", [4, 8], 2)])
def test_curve_training_sets_are_nested_and_sized(task, grid, cps):
    table = make_table(pool_speakers=12)
    m = select_curve(table, list(SUB_LANGS), task, grid, cps, seed=0, **OPEN)
    previous: set[str] = set()
    for n in grid:
        rows = training_clips(m, RunSpec(task, SUB_LANGS[0], "base", SUB_LANGS[0], 0, n))
        per_class = rows.groupby("gender").size()
        expected = n if task == "gender" else n // 2
        assert (per_class == expected).all() and set(per_class.index) == {"male", "female"}
        assert (rows.groupby("speaker").size() == cps).all()
        assert previous <= set(rows["clip"])  # D^(n) holds D^(n/2)
        previous = set(rows["clip"])
    evaluation = m[m["role"] == "eval"]
    assert not set(evaluation["speaker"]) & set(m.loc[m["role"] == "D", "speaker"])


def test_curve_asks_for_more_speakers_than_there_are():
    with pytest.raises(CltmError, match=r"curve\.N_grid\.gender"):
        select_curve(make_table(pool_speakers=4), [SUB_LANGS[0]], "gender", [2, 4, 64], 1, seed=0,
                     **OPEN)


def test_curve_specs_and_run_ids():
    specs = curve_specs("gender", ["aa"], [4, 2], [0])
    assert [s.run_id for s in specs] == ["gender/aa/base-n2/0", "gender/aa/base-n4/0"]
    assert "n" not in RunSpec("gender", "aa", "base", "aa", 0).as_dict()


def test_config_checks_curve_and_auto():
    with pytest.raises(CltmError, match=r"curve\.enabled is false"):
        _config(**{"tasks.gender.N": "auto"})
    with pytest.raises(CltmError, match="together with 2N"):
        _config(**{"curve.enabled": True, "curve.N_grid": {"gender": [2, 6], "speaker": [6, 12]}})
    with pytest.raises(CltmError, match=r"curve.N_grid.speaker: N \(15\)"):
        _config(**{"curve.enabled": True,
                   "curve.N_grid": {"gender": [2, 4], "speaker": [15, 30]}})
    with pytest.raises(CltmError, match=r"curve.N_grid.speaker: N \(4\) must be a multiple of "
                                        r"tasks.speaker.clips_per_speaker \(3\)"):
        _config(**{"curve.enabled": True, "curve.N_grid": {"gender": [2, 4], "speaker": [4, 8]}})
    c = _config(**{"curve.enabled": True, "tasks.gender.N": "auto"})
    assert c.tasks["gender"].N == "auto"


# --- probes -------------------------------------------------------------------------------------

def test_probe_choice_is_stable_and_capped(synthetic_subsets):
    m = pd.read_csv(synthetic_subsets["speaker"] / "manifest.csv")
    a, b = probe_clips(m, 3, 0), probe_clips(m.sample(frac=1, random_state=1), 3, 0)
    assert a == b and all(len(v) == 3 for v in a.values())
    assert probe_clips(m, 3, 1) != a and probe_clips(m, 0, 0) == {}
    big = probe_clips(m, 1000, 0)
    assert sum(len(v) for v in big.values()) == (m["role"] == "eval").sum()


def test_run_returns_the_probe_embeddings_it_scored_with(synthetic_subsets):
    w = Worker(settings("speaker", synthetic_subsets, probe_clips=3))
    record = w.run(RunSpec("speaker", "aa", "cross", "bb", 0), "h")
    probes = record["probes"]
    assert probes["target"].shape == (3, 16) and probes["donor"].shape == (3, 16)
    assert probes["target"].dtype == np.float16
    # the target's probe rows are that model's embeddings of those clips, computed alone by
    # transformers' encoder holding the run's trained weights (a speaker embedding comes from
    # the encoder, whatever its head)
    trained, _ = w.recipe.weights(0)
    w.encoder.load_state_dict(trained)
    alone = loop.embed(w.encoder, [w.waves[c] for c in w.probes["aa"]], w.device,
                        w.do_normalize, "fp32", SPEAKER_LAYERS).numpy()
    np.testing.assert_allclose(probes["target"], alone, rtol=2e-3, atol=2e-3)
    same = w.run(RunSpec("speaker", "aa", "self", "aa", 0), "h")
    assert "donor" not in same["probes"]


def test_store_writes_and_prunes_probes(tmp_path):
    store = RunStore(tmp_path)
    store.write_probes("h1", {"target": np.ones((2, 3), np.float16)})
    store.write_probes("h2", {"target": np.zeros((2, 3), np.float16)})
    store.prune_probes(["h2"])
    assert [p.name for p in (tmp_path / "probes").iterdir()] == ["h2.npz"]


# --- geometry and gaps on a synthetic store with a known answer ---------------------------------

LANGS = ["aa", "bb", "cc", "dd"]


def _synthetic_store(root: Path, shift: dict[tuple[str, str], float]) -> Path:
    """A speaker store whose donor clouds sit `shift` away from the target cloud, and whose
    CLTM falls as the shift grows; cross embeddings of the target rotate with the shift."""
    rng = np.random.default_rng(0)
    store = RunStore(root / "runs")
    base_cloud = rng.standard_normal((20, 6))
    rows = []
    for seed in (0, 1):
        for t in LANGS:
            for cond, donor in [("base", t), ("self", t)] + [("cross", d) for d in LANGS
                                                               if d != t]:
                s = shift.get((t, donor), 0.0)
                score = {"base": 0.6, "self": 0.8}.get(cond, 0.8 - 0.05 * s)
                h = f"{t}-{cond}-{donor}-{seed}"
                noise = 0.3 * s * rng.standard_normal(base_cloud.shape)
                probes = {"target": (base_cloud + noise).astype(np.float16)}
                if cond == "cross":
                    probes["donor"] = (base_cloud + np.array([s, 0, 0, 0, 0, 0])).astype(np.float16)
                store.write_probes(h, probes)
                rows.append({"hash": h, "task": "speaker", "target": t, "condition": cond,
                             "donor": donor, "seed": seed, "score": score + 0.001 * seed,
                             "run_id": h})
    store.rewrite(rows)
    return root / "runs"


def _geometry(config, runs_dir: Path, metrics: Path) -> dict:
    return geometry_stage.run("speaker", config.task("speaker"), runs_dir,
                              metrics / "speaker" / "cltm.csv",
                              metrics / "speaker" / "geometry",
                              metrics / "speaker" / "geometry.json", config.analysis)


def test_geometry_of_a_task_without_donor_probes_is_a_note(tmp_path):
    config = _config()
    out = geometry_stage.run("gender", config.task("gender"), tmp_path / "no-store",
                             tmp_path / "cltm.csv", tmp_path / "geometry",
                             tmp_path / "geometry.json", config.analysis)
    assert out == {"enabled": False}
    written = json.loads((tmp_path / "geometry.json").read_text())
    assert written == {"enabled": False,
                       "reason": "the gender task's cross runs embed no donor clips"}


def test_geometry_and_cka_recover_a_planted_ordering(tmp_path):
    pairs = [(t, d) for t in LANGS for d in LANGS if t != d]
    shift = {p: float(k + 1) for k, p in enumerate(pairs)}
    runs_dir = _synthetic_store(tmp_path, shift)
    metrics = tmp_path / "metrics"
    (metrics / "speaker").mkdir(parents=True)
    # the CLTM that these scores give: (0.8 - 0.05 s - 0.6) / 0.2 = 1 - s / 4
    cltm = pd.DataFrame(1.0, index=LANGS, columns=LANGS)
    for (t, d), s in shift.items():
        cltm.loc[t, d] = 1 - s / 4
    cltm.rename_axis("target").to_csv(metrics / "speaker" / "cltm.csv")
    config = _config(**{"analysis.probe_clips": 20})

    g = _geometry(config, runs_dir, metrics)
    assert g["cells"] == 12
    assert g["correlations"]["centroid"]["spearman"] == pytest.approx(-1.0)
    assert g["correlations"]["sinkhorn"]["spearman"] < -0.9
    centroid = pd.read_csv(metrics / "speaker" / "geometry" / "centroid.csv").set_index("target")
    expected = []
    for seed in (0, 1):
        with np.load(runs_dir / "probes" / f"aa-cross-bb-{seed}.npz") as z:
            x, y = z["donor"].astype(float), z["target"].astype(float)
        expected.append(np.linalg.norm(x.mean(0) - y.mean(0)))
    assert centroid.loc["aa", "bb"] == pytest.approx(np.mean(expected), rel=1e-9)
    top = g["extreme_pairs"][0]
    assert (top["target"], top["donor"]) == pairs[0]

    r = gaps_stage.run("speaker", runs_dir, metrics / "speaker" / "cltm.csv",
                       metrics / "speaker" / "gaps", metrics / "speaker" / "gaps.json", {},
                       config.analysis)
    assert r["cka"]["correlation_with_cltm"]["spearman"] > 0.8  # more noise: lower CKA and CLTM
    assert r["performance_gap"]["self"]["std"] == pytest.approx(0.0, abs=1e-12)
    cross = pd.Series({t: np.mean([0.8 - 0.05 * shift[(t, d)] + 0.0005 for d in LANGS if d != t])
                       for t in LANGS})
    assert r["performance_gap"]["cross"]["mean_rpd"] == pytest.approx(
        gaps.performance_gap(cross)["mean_rpd"], rel=1e-6)
    saved = json.loads((metrics / "speaker" / "gaps.json").read_text())
    assert saved["cka"]["enabled"] and (metrics / "speaker" / "gaps" / "cka.png").is_file()


def test_missing_probes_are_reported_not_invented(tmp_path):
    runs_dir = _synthetic_store(tmp_path, {})
    metrics = tmp_path / "metrics"
    (metrics / "speaker").mkdir(parents=True)
    config = _config(**{"analysis.probe_clips": 0})
    assert _geometry(config, runs_dir, metrics) == {"enabled": False}
    saved = json.loads((metrics / "speaker" / "geometry.json").read_text())
    assert "probe_clips is 0" in saved["reason"]


def test_n_auto_reads_the_curve_choice(tmp_path, monkeypatch):
    from cltm.data.build import resolve_n

    monkeypatch.chdir(tmp_path)
    config = _config(**{"curve.enabled": True, "tasks.gender.N": "auto"})
    choice = tmp_path / "gender.json"
    with pytest.raises(CltmError, match="curve@gender"):
        resolve_n(config, "gender", choice)
    choice.write_text('{"enabled": true, "chosen_N": 4}')
    assert resolve_n(config, "gender", choice) == 4
    assert resolve_n(replace(config), "speaker", None) == config.tasks["speaker"].N


def test_a_task_can_have_its_own_lr_and_epochs():
    from cltm.train.runner import settings_of, train_params

    c = _config(**{"tasks.speaker.lr": 3e-4, "tasks.speaker.epochs": 2, "train.lr": 1e-3,
                   "tasks.gender.epochs": None, "tasks.gender.head_init": None,
                   "tasks.gender.head_lr_scale": 30.0, "tasks.gender.encoder": None,
                   "train.encoder": "finetune", "tasks.speaker.encoder": "frozen"})
    assert (train_params(c, "speaker").lr, train_params(c, "speaker").epochs) == (3e-4, 2)
    # null: train's
    assert train_params(c, "gender").epochs == c.train.epochs
    assert train_params(c, "gender").head_init == c.train.head_init
    assert train_params(c, "gender").head_lr_scale == c.tasks["gender"].head_lr_scale != 1.0
    assert train_params(c, "gender").encoder == "finetune"
    assert train_params(c, "speaker").encoder == "frozen"
    assert settings_of(c, "speaker")["train.lr"] == 3e-4
    with pytest.raises(CltmError, match=r"tasks\.gender\.lr"):
        _config(**{"tasks.gender.lr": -1.0})


def test_a_task_can_have_its_own_seeds(tmp_path, monkeypatch):
    from cltm.train.runner import plan

    c = _config(**{"tasks.gender.seeds": [0, 1, 2, 3], "train.seeds": [0, 1]})
    assert c.seeds_of("gender") == [0, 1, 2, 3] and c.seeds_of("speaker") == [0, 1]
    monkeypatch.chdir(tmp_path)  # no subsets here: plan counts the grid from the params
    n = len(c.data.languages)
    runs = {row["task"]: row["runs"] for row in plan(c, tmp_path, tmp_path)}
    assert runs == {"gender": (n * n + n) * 4, "speaker": (n * n + n) * 2}
    with pytest.raises(CltmError, match=r"tasks\.speaker\.seeds has repeated seeds"):
        _config(**{"tasks.speaker.seeds": [1, 1]})
    with pytest.raises(CltmError, match=r"tasks\.gender\.seeds must list at least one seed"):
        _config(**{"tasks.gender.seeds": []})
