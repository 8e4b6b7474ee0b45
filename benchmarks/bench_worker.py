"""Time the pipeline's warm worker on a slice of a grid, on whatever device is here.

Runs with no network and no Common Voice: it writes synthetic clips with Common-Voice-like
durations into the subsets stage's format, builds the mHuBERT-147 architecture (HuBERT-base:
12 layers, 768 hidden) with random weights, and runs base, self and cross runs of a few targets
through `cltm.train.worker.Worker`, once per precision. Prints one JSON line per measurement.

    PYTHONPATH=src python benchmarks/bench_worker.py --task gender --precision fp32 bf16 fp16

Needs torch, transformers, numpy and pandas only (no soundfile, soxr, dvc, mlflow or ray), so it
runs on a bare GPU machine with the package on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cltm.data.pack import PackWriter, to_int16
from cltm.train.grid import RunSpec
from cltm.train.tasks import TrainParams
from cltm.train.worker import Worker, WorkerSettings

# mHuBERT-147's encoder is HuBERT-base: transformers' HubertConfig defaults are that shape.
MHUBERT_147: dict = {}


def clip_seconds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Common Voice clip lengths: about 5 s, most between 3 and 7 s."""
    return np.clip(rng.lognormal(np.log(4.8), 0.25, n), 2.0, 10.0)


def voice(rng: np.random.Generator, f0: float, seconds: float) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.3 * x / 2.3 + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def write_subsets(out: Path, task: str, languages: list[str], n_train: int, n_eval: int,
                  clips_per_speaker: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows, writer = [], PackWriter(out)
    for lang in languages:
        spk = 0
        for role, n in (("D", n_train), ("D_prime", n_train), ("eval", n_eval)):
            for i in range(n):
                if i % clips_per_speaker == 0:
                    spk += 1
                    gender = "male" if spk % 2 else "female"
                    f0 = (110 if gender == "male" else 210) + 30 * rng.random()
                clip = f"{lang}_{role}_{i}.mp3"
                writer.append(clip, to_int16(voice(rng, f0, float(clip_seconds(rng, 1)[0]))))
                rows.append({"clip": clip, "language": lang, "speaker": f"{lang}-{spk}",
                             "gender": gender, "role": role})
    manifest = pd.DataFrame(rows)
    writer.finish(list(manifest["clip"]))
    manifest.to_csv(out / "manifest.csv", index=False)
    if task == "speaker":
        ev = manifest[manifest["role"] == "eval"]
        pairs = []
        for lang, g in ev.groupby("language"):
            by_spk = list(g.groupby("speaker")["clip"])
            for (_, c1), (_, c2) in zip(by_spk, by_spk[2:]):
                pairs.append((c1.iloc[0], c1.iloc[-1], 1, lang))
                pairs.append((c1.iloc[0], c2.iloc[0], 0, lang))
        pd.DataFrame(pairs, columns=["a", "b", "label", "language"]).to_csv(
            out / "trials.csv", index=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["gender", "speaker"], default="gender")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--targets", type=int, default=2, help="target languages in the slice")
    p.add_argument("--n-train", type=int, default=None, help="clips in D (paper: 120 / 1000)")
    p.add_argument("--n-eval", type=int, default=200, help="evaluation clips per language")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    n_train = args.n_train or (120 if args.task == "gender" else 1000)
    languages = [f"l{i}" for i in range(max(2, args.targets))]
    with tempfile.TemporaryDirectory() as tmp:
        subsets = Path(tmp) / args.task
        t0 = time.perf_counter()
        write_subsets(subsets, args.task, languages, n_train, args.n_eval,
                      clips_per_speaker=1 if args.task == "gender" else 50)
        setup_s = time.perf_counter() - t0
        base = WorkerSettings(
            task=args.task, subsets_dir=str(subsets), name_or_path="unused",
            random_init=MHUBERT_147, init_seed=0, device=args.device,
            train=TrainParams(lr=1e-5, weight_decay=0.0, grad_clip=1.0, epochs=1,
                              batch_size=args.batch_size, precision="fp32"),
        )
        for precision in args.precision:
            settings = replace(base, train=replace(base.train, precision=precision))
            t0 = time.perf_counter()
            worker = Worker(settings)
            load_s = time.perf_counter() - t0
            specs = []
            for target in languages[: args.targets]:
                donor = next(lang for lang in languages if lang != target)
                specs += [RunSpec(args.task, target, "base", target, 0),
                          RunSpec(args.task, target, "self", target, 0),
                          RunSpec(args.task, target, "cross", donor, 0)]
            worker.run(specs[0], "warm-up")
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            records = [worker.run(s, "bench") for s in specs]
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            print(json.dumps({
                "measure": "worker_slice", "task": args.task, "precision": precision,
                "device": records[0]["device"], "runs": len(records),
                "s_per_run": round(wall / len(records), 3),
                "train_clips_per_run": [r["train_clips"] for r in records],
                "eval_clips": args.n_eval, "batch_size": args.batch_size,
                "scores": [round(r["score"], 4) for r in records],
                "finite_losses": all(np.isfinite(r["loss_final"]) for r in records),
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if torch.cuda.is_available() else None,
                "worker_load_s": round(load_s, 2), "data_setup_s": round(setup_s, 2),
            }), flush=True)


if __name__ == "__main__":
    main()
