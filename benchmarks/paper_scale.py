"""The paper's scale on one machine, simulated: what every layer that needs no GPU costs.

The paper's grid is (44² + 44) × 10 = 19,800 runs a task over a Common Voice release of
millions of clips. Each figure below is measured on synthetic data of that size, with the
pipeline's own code, and printed as one JSON line:

- `driver`: the process that drives a grid, over 19,800 runs of a worker that returns at once
  (run specs, run hashes, the store's appends with fsync, the MLflow queue, the progress bar):
  wall time per run from the start to the last record stored, less the one-off start of the
  MLflow tracker (`tracker_start_s`: importing MLflow, opening the store). MLflow's writing
  happens in its own process and is timed by the next figure.
- `mlflow`: MLflow's time per run (the tracker's thread writing nested runs to SQLite).
- `analysis`: `cltm cltm`'s work (matrix, bootstrap, permutations, plots) and the report on a
  synthetic run store of 44 languages × 10 seeds.
- `dvc_status`: `dvc status` of the pipeline pointed at a release of 44 locales after its
  metadata stages ran, once with 10,000 clip files in the release and once with 1,000,000
  (--clips): the stages depend on the locales' TSVs, so the two should cost the same.
- `languages`: `cltm languages` (reading 44 locales' TSVs) on a synthetic release in Common
  Voice 22.0 layout whose largest locale has a 2,000,000-row validated.tsv (no clips: the
  command reads only metadata): time and peak memory of the process.

    PYTHONPATH=src python benchmarks/paper_scale.py                    # everything
    PYTHONPATH=src python benchmarks/paper_scale.py --only driver mlflow
    PYTHONPATH=src python benchmarks/paper_scale.py --languages 8 --seeds 2   # a quick look

The synthetic data goes to a temporary directory (--work to keep it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTIONS = ("dvc_status", "driver", "mlflow", "analysis", "languages")


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def paper_locales(n: int) -> list[str]:
    """n Common Voice locales that the language metadata knows (families for the analysis)."""
    table = pd.read_csv(REPO / "src" / "cltm" / "analysis" / "languages.csv", comment="#",
                        dtype=str, keep_default_na=False)
    locales = list(table["locale"])
    if n > len(locales):
        raise SystemExit(f"only {len(locales)} locales have metadata; ask for fewer")
    return locales[:n]


def speaker_id(locale: str, k: int) -> str:
    return hashlib.sha512(f"{locale}/{k}".encode()).hexdigest()


def write_manifest(directory: Path, locales: list[str], d_clips: int, eval_clips: int,
                   clips_per_speaker: int) -> None:
    """A subsets manifest of the paper's size: per language D and D' of `d_clips` clips each
    and `eval_clips` evaluation clips (selection: fixed, as in configs/paper.yaml)."""
    rows = []
    for locale in locales:
        k = 0
        for role, count in (("D", d_clips), ("D_prime", d_clips), ("eval", eval_clips)):
            for c in range(count):
                spk = k + c // clips_per_speaker
                rows.append((f"common_voice_{locale}_{len(rows)}.mp3", locale,
                             speaker_id(locale, spk), ("male", "female")[spk % 2], role, 4.0))
            k += count // clips_per_speaker + 1
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["clip", "language", "speaker", "gender", "role", "duration_s"]
                 ).to_csv(directory / "manifest.csv", index=False)


def bench_driver(args: argparse.Namespace, work: Path) -> None:
    from cltm.config import load_config
    from cltm.train import executors, stage
    from cltm.train import tracking as tracking_mod
    from cltm.train.grid import Fingerprints, grid_specs
    from cltm.train.store import RunStore

    locales = paper_locales(args.languages)
    subsets = work / "driver" / "subsets"
    # The speaker task's sizes (configs/paper.yaml: N 1000, 50 clips a speaker): the larger.
    write_manifest(subsets, locales, d_clips=1000, eval_clips=500, clips_per_speaker=50)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'driver' / 'mlflow.db'}"
    config = load_config(REPO / "params.yaml")
    settings = {"task": "speaker", "model": "utter-project/mHuBERT-147", "code": "bench"}

    t0 = time.perf_counter()
    fingerprint = Fingerprints(subsets, settings)
    specs = grid_specs("speaker", locales, list(range(args.seeds)))
    store = RunStore(work / "driver" / "runs")
    jobs, done, total = stage._split(specs, fingerprint, store)
    planned = time.perf_counter()

    marks: dict[str, float] = {}

    def instant(settings, jobs):  # a worker that returns at once
        marks["first"] = time.perf_counter()
        for spec, run_hash in jobs:
            yield {**spec.as_dict(), "run_id": spec.run_id, "hash": run_hash, "score": 0.5,
                   "eer": 0.5, "loss_final": 0.1, "loss_mean": 0.2, "wall_s": 0.0,
                   "steps": 1, "train_clips": 2000, "device": "none"}

    close = tracking_mod.Tracker.close

    def stop_at_the_end(self, status="FINISHED"):
        # Not waiting for MLflow's process to write 19,800 runs (the `mlflow` figure times
        # that): the records are in the store, which is what a resumed grid logs from.
        marks["loop"] = time.perf_counter()
        close(self, "KILLED")

    executors.run_inline, tracking_mod.Tracker.close = instant, stop_at_the_end
    stage._execute(config, jobs, done, store, not args.no_progress, None, run_name="bench",
                   tracked=settings)
    stored = len(store.load())
    assert stored == total, (stored, total)
    plan_s, loop_s = planned - t0, marks["loop"] - marks["first"]
    emit(figure="driver", runs=total, languages=len(locales), seeds=args.seeds,
         plan_ms_per_run=round(1000 * plan_s / total, 3),
         tracker_start_s=round(marks["first"] - planned, 1),
         loop_ms_per_run=round(1000 * loop_s / total, 3),
         driver_ms_per_run=round(1000 * (plan_s + loop_s) / total, 3))


def bench_mlflow(args: argparse.Namespace, work: Path) -> None:
    from cltm.train.tracking import Tracker, write_run

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    (work / "mlflow").mkdir(parents=True, exist_ok=True)
    tracker = Tracker("bench", {"model": "bench"})
    tracker.start()
    record = {"task": "speaker", "target": "de", "condition": "cross", "donor": "fr",
              "seed": 0, "score": 0.5, "eer": 0.5, "loss_final": 0.1, "loss_mean": 0.2,
              "wall_s": 1.0, "steps": 100, "train_clips": 2000, "device": "none"}
    t0 = time.perf_counter()
    for i in range(args.mlflow_runs):
        write_run(tracker.client, tracker.experiment_id, tracker.parent_id, tracker.tags,
                  tracker.settings,
                  {**record, "run_id": f"speaker/de/cross-fr/{i}", "hash": f"{i:064x}"})
    per_run = (time.perf_counter() - t0) / args.mlflow_runs
    tracker.close()
    emit(figure="mlflow", runs=args.mlflow_runs, ms_per_run=round(1000 * per_run, 2),
         grid_minutes_19800=round(19_800 * per_run / 60, 1))


def bench_analysis(args: argparse.Namespace, work: Path) -> None:
    locales = paper_locales(args.languages)
    runs = work / "analysis" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    skill = {lang: rng.uniform(0.6, 0.8) for lang in locales}
    with open(runs / "runs.jsonl", "w") as fh:
        for seed in range(args.seeds):
            for target in locales:
                for condition, donor in [("base", target), ("self", target),
                                         *(("cross", d) for d in locales if d != target)]:
                    lift = {"base": 0.0, "self": 0.08}.get(condition, rng.uniform(-0.02, 0.08))
                    score = skill[target] + lift + rng.normal(0, 0.02)
                    fh.write(json.dumps({
                        "task": "gender", "target": target, "condition": condition,
                        "donor": donor, "seed": seed, "score": float(score),
                        "hash": f"{seed}-{target}-{condition}-{donor}",
                        "run_id": f"gender/{target}/{condition}/{seed}",
                        "pred_classes": 2}) + "\n")
    from cltm.analysis.stage import run_cltm, run_report

    out = work / "analysis" / "metrics"
    t0 = time.perf_counter()
    run_cltm("gender", runs, out / "gender", family_level="genus", highlight=None,
             families_csv=None, fdr=0.05, bootstrap=1000, ci_level=0.95, permutations=2000,
             stats_seed=0, pair_seeds=True)
    t1 = time.perf_counter()
    run_report(out, out / "report.md", null_control=False, planted=False)
    t2 = time.perf_counter()
    emit(figure="analysis", languages=len(locales), seeds=args.seeds,
         cltm_s=round(t1 - t0, 1), report_s=round(t2 - t1, 1))


def write_release(root: Path, locales: list[str], big_rows: int, rows: int) -> None:
    """Common Voice 22.0 layout, metadata only: the first locale's validated.tsv has
    `big_rows` rows, every other one `rows`; train/dev/test split the first 30% of them."""
    from cltm.data.demo import TSV_COLUMNS

    for i, locale in enumerate(locales):
        n = big_rows if i == 0 else rows
        folder = root / locale
        (folder / "clips").mkdir(parents=True, exist_ok=True)
        spk = np.arange(n) // 20  # 20 clips a speaker
        ids = np.array([speaker_id(locale, k) for k in range(int(spk[-1]) + 1)])
        table = pd.DataFrame({c: "" for c in TSV_COLUMNS}, index=range(n))
        table["client_id"] = ids[spk]
        table["path"] = [f"common_voice_{locale}_{k}.mp3" for k in range(n)]
        table["sentence_id"] = "0"
        table["sentence"] = "a sentence"
        table["up_votes"], table["down_votes"] = 2, 0
        table["gender"] = np.where(spk % 2 == 0, "male_masculine", "female_feminine")
        table["locale"] = locale
        table.to_csv(folder / "validated.tsv", sep="\t", index=False)
        cut = [0, int(0.2 * n), int(0.25 * n), int(0.3 * n)]
        for split, a, b in zip(("train", "dev", "test"), cut[:-1], cut[1:], strict=True):
            table.iloc[a:b].to_csv(folder / f"{split}.tsv", sep="\t", index=False)
        pd.DataFrame({"clip": table["path"], "duration[ms]": 4000}).to_csv(
            folder / "clip_durations.tsv", sep="\t", index=False)


def bench_dvc_status(args: argparse.Namespace, work: Path) -> None:
    import shutil

    locales = paper_locales(args.languages)
    root = work / "release"
    write_release(root, locales, big_rows=200, rows=200)
    repo = work / "repo"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update({"source": "commonvoice", "languages": locales})
    params["data"]["commonvoice"]["root"] = str(root)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}

    def run(*cmd: str) -> float:
        t = time.perf_counter()
        out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
        return time.perf_counter() - t

    run("git", "init", "-q")
    repro_s = run("dvc", "repro", "metadata")
    made = 0
    for clips in sorted(args.clips):
        per_locale = -(-(clips - made) // len(locales))
        for locale in locales:  # empty files: no stage reads them, none may hash them
            folder = root / locale / "clips"
            for k in range(per_locale):
                (folder / f"common_voice_{locale}_{made + k}.mp3").touch()
        made += per_locale * len(locales)
        times = sorted(run("dvc", "status") for _ in range(3))
        emit(figure="dvc_status", locales=len(locales), clips=made,
             metadata_repro_s=round(repro_s, 1), status_s=round(times[1], 2))


def bench_languages(args: argparse.Namespace, work: Path) -> None:
    locales = paper_locales(args.languages)
    root = work / "release"
    t0 = time.perf_counter()
    write_release(root, locales, big_rows=args.big_rows, rows=args.rows)
    built = time.perf_counter() - t0
    code = ("import resource, sys, time; from cltm.cli import main; t = time.perf_counter(); "
            "rc = main(sys.argv[1:]); "
            "print('BENCH', time.perf_counter() - t, "
            "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rc)")
    cmd = [sys.executable, "-c", code, "--params", str(REPO / "params.yaml"), "languages",
           "--root", str(root), *locales]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH")]
    if not line:
        raise SystemExit(f"cltm languages failed:\n{out.stderr[-3000:]}")
    _, seconds, maxrss_kb, rc = line[-1].split()
    emit(figure="languages", locales=len(locales), biggest_rows=args.big_rows,
         other_rows=args.rows, build_release_s=round(built, 1), seconds=round(float(seconds), 1),
         peak_memory_mb=round(int(maxrss_kb) / 1024), exit_code=int(rc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--languages", type=int, default=44)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--mlflow-runs", type=int, default=500)
    ap.add_argument("--big-rows", type=int, default=2_000_000,
                    help="rows of the largest locale's validated.tsv")
    ap.add_argument("--rows", type=int, default=20_000, help="rows of every other locale's")
    ap.add_argument("--clips", type=int, nargs="+", default=[10_000, 1_000_000],
                    help="clip files in the release for the dvc_status figure")
    ap.add_argument("--work", help="keep the synthetic data here (default: a temporary dir)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    emit(figure="machine", cpus=os.cpu_count(), python=sys.version.split()[0],
         maxrss_units="kB", load=os.getloadavg()[0])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for section in args.only:
            globals()[f"bench_{section}"](args, work / section)


if __name__ == "__main__":
    main()
