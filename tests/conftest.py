"""Shared fixtures: tiny synthetic subsets (no eSpeak, no decoding) and a tiny HuBERT."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cltm.config import AnalysisConfig
from cltm.data.pack import PackWriter, to_int16
from cltm.data.subsets import make_trials

REPO = Path(__file__).resolve().parents[1]


def copy_pipeline(root: Path) -> None:
    """What `dvc repro` needs of the repository, copied to `root` (params.yaml is the caller's)."""
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")


def run_cmd(args: list[str], cwd: Path) -> str:
    """Run a command; fail the test with its output if it fails; return stdout + stderr."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


TINY_HUBERT = {
    "model_type": "hubert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_dim": [16] * 7,
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
}


def _voice(rng: np.random.Generator, f0: float, seconds: float) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.3 * x / 2.3 + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def write_synthetic_subsets(out: Path, task: str, languages=("aa", "bb", "cc"),
                            n_per_class: int = 2, eval_speakers: int = 4,
                            clips_per_speaker: int = 2, seed: int = 0) -> pd.DataFrame:
    """A manifest (+ trials for speaker) and packed audio in the subsets stage's format."""
    rng = np.random.default_rng(seed)
    rows = []
    for li, lang in enumerate(languages):
        spk = 0
        for role, n_speakers in (("D", n_per_class), ("D_prime", n_per_class),
                                 ("eval", eval_speakers // 2)):
            for gender in ("male", "female"):
                for _ in range(n_speakers):
                    spk += 1
                    f0 = (110 if gender == "male" else 210) + 25 * rng.random() + 5 * li
                    for c in range(clips_per_speaker):
                        seconds = 0.6 + 0.5 * rng.random()
                        rows.append({"clip": f"{lang}_{spk}_{c}.mp3", "language": lang,
                                     "speaker": f"{lang}-s{spk}", "gender": gender,
                                     "role": role, "duration_s": seconds,
                                     "_wave": _voice(rng, f0, seconds)})
    manifest = pd.DataFrame(rows)
    writer = PackWriter(out)
    for clip, wave in zip(manifest["clip"], manifest["_wave"]):
        writer.append(clip, to_int16(wave))
    manifest = manifest.drop(columns="_wave")
    slots = writer.finish(list(manifest["clip"]))
    manifest["offset"] = [slots[c].offset for c in manifest["clip"]]
    manifest["n_samples"] = [slots[c].n_samples for c in manifest["clip"]]
    manifest.to_csv(out / "manifest.csv", index=False)
    if task == "speaker":
        trials = make_trials(manifest[manifest["role"] == "eval"], seed=0,
                             max_pairs_per_speaker=200)
        trials.to_csv(out / "trials.csv", index=False)
    return manifest


@pytest.fixture(scope="session")
def synthetic_subsets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("subsets")
    out = {}
    for task in ("gender", "speaker"):
        write_synthetic_subsets(root / task, task)
        out[task] = root / task
    return out


def _copy_into(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(src, dst)


#: Outs compared byte for byte with the full pipeline's (the rest: written at all).
TEXT_OUTS = (".csv", ".json", ".md", ".parquet")


def run_hermetic(root: Path, pipeline_dir: Path, corpus_roots: Sequence[str], stage: str,
                 drop: Sequence[str] = ()) -> tuple[int, str, list[str]]:
    """Run one stage of a reproduced pipeline the way DESIGN.md's hermetic rule reads it: in a
    fresh directory holding only the stage's declared deps (as dvc.lock resolved them), the
    pipeline's params.yaml and the corpus roots (immutable releases, linked read-only).

    `root` is the repository copy, `pipeline_dir` the folder of the dvc.yaml (root or below it),
    `corpus_roots` the release roots relative to `pipeline_dir`; `drop`: deps to leave out, as
    if dvc.yaml did not declare them. Returns (exit code, output, the declared outs it did not
    write or wrote otherwise than the full pipeline did). A file out that is a table or text
    (.csv, .json, .md, .parquet) must equal the pipeline's byte for byte: a stage that reads an
    undeclared file and only notes its absence would otherwise pass."""
    lock = yaml.safe_load((pipeline_dir / "dvc.lock").read_text())["stages"][stage]
    fresh = Path(tempfile.mkdtemp(prefix="hermetic-"))
    rel = pipeline_dir.relative_to(root)
    work = fresh / rel
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(pipeline_dir / "params.yaml", work / "params.yaml")
    for params_file in lock.get("params", {}):  # declared params files (../params.yaml)
        src = (pipeline_dir / params_file).resolve()
        _copy_into(src, fresh / src.relative_to(root.resolve()))
    outs = {(pipeline_dir / o["path"]).resolve() for o in lock.get("outs", [])}
    # The releases first, linked whole (the stage that writes one, demo-corpus, gets none); a
    # dep inside a linked release is there already.
    releases = [r for r in ((pipeline_dir / c).resolve() for c in corpus_roots)
                if r.exists() and r not in outs]
    for release in releases:
        dst = fresh / release.relative_to(root.resolve())
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(release, target_is_directory=True)
    for dep in lock.get("deps", []):
        src = (pipeline_dir / dep["path"]).resolve()
        if dep["path"] in drop or any(r == src or r in src.parents for r in releases):
            continue
        _copy_into(src, fresh / src.relative_to(root.resolve()))
    env = {**os.environ, "PYTHONPATH": str(fresh / "src"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{fresh / 'mlflow.db'}"}
    proc = subprocess.run(lock["cmd"], shell=True, cwd=work, env=env, capture_output=True,
                          text=True)
    missing = []
    for out in (o["path"] for o in lock.get("outs", [])):
        made = work / out
        if not made.exists():
            missing.append(f"{out} (not written)")
        elif made.suffix in TEXT_OUTS and made.read_bytes() != (pipeline_dir / out).read_bytes():
            missing.append(f"{out} (differs from the pipeline's)")
    output = proc.stdout + proc.stderr
    shutil.rmtree(fresh, ignore_errors=True)
    return proc.returncode, output, missing


def hermetic_failures(root: Path, pipeline_dir: Path, corpus_roots: Sequence[str]
                      ) -> dict[str, str]:
    """run_hermetic for every stage of the pipeline's dvc.lock, two at a time (each in its own
    folder, so they cannot see each other; the machine has two cores); returns why each stage
    that failed did."""
    from concurrent.futures import ThreadPoolExecutor

    stages = lock_stages(pipeline_dir)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = pool.map(lambda s: run_hermetic(root, pipeline_dir, corpus_roots, s), stages)
        return {stage: f"exit {code}, outs: {missing}\n{output[-1500:]}"
                for stage, (code, output, missing) in zip(stages, results, strict=True)
                if code or missing}


def lock_stages(pipeline_dir: Path) -> list[str]:
    """The stages dvc.lock holds (every stage a reproduced pipeline ran), in its order."""
    return list(yaml.safe_load((pipeline_dir / "dvc.lock").read_text())["stages"])


#: The tests' demo corpus before their overrides: nothing planted (the pipeline's values are
#: params.yaml's demo block).
PLAIN_DEMO = {"speakers_per_language": 40, "clips_per_speaker": 5, "dev_speakers": 4,
              "test_speakers": 10, "family_trait_strength": 1.0, "null": False, "seed": 0,
              "clip_seconds": 3.0, "gender_shift_semitones": 0.0, "gender_pitch_offset": 0.0,
              "speaker_axes_db": 0.0, "speaker_axes_focus": 0.0, "speaker_warp_semitones": 0.0}


def demo_spec(languages: Sequence[str], **overrides: object):
    """A demo.DemoSpec of `languages`: PLAIN_DEMO with `overrides`."""
    from cltm.data.demo import DemoSpec

    return DemoSpec(languages=tuple(languages), **{**PLAIN_DEMO, **overrides})


def analysis_config(**overrides: object) -> AnalysisConfig:
    """The demo's analysis settings (params.yaml) with `overrides`; `highlight` is
    analysis.highlight_languages."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["analysis"]
    if "highlight" in overrides:
        overrides["highlight_languages"] = overrides.pop("highlight")
    return AnalysisConfig(**{**raw, **overrides})


def paper_tasks() -> dict:
    """The paper's two tasks by name, as the report takes them."""
    from cltm.tasks.base import load

    return {t: load(f"cltm.tasks.{t}") for t in ("gender", "speaker")}


def paper_contrasts() -> dict:
    """The paper's headline contrast, as params.yaml's analysis.contrasts gives it."""
    from cltm.config import ContrastConfig

    return {"speaker-gender": ContrastConfig("gender", "speaker", "gender")}


def run_cltm(task: str, runs: Path, out: Path, families_csv: Path | None = None,
             **overrides: object) -> dict:
    """The cltm stage on a run store with the demo's analysis settings and `overrides`."""
    from cltm.stages import cltm
    from cltm.tasks.base import load

    return cltm.run_cltm(task, load(f"cltm.tasks.{task}"), Path(runs), Path(out),
                         analysis_config(**overrides), families_csv)
