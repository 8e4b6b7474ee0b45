"""The ECAPA learning check (issue 36): AUC of base, self and cross runs against training steps
on a speaker subsets directory, to choose `steps` from measurement.

Each run trains once for the largest step count; the AUC at every smaller count is measured on
the way (`train_ecapa(after_step=...)`: no step depends on the total, so the state after step k
is that of a k-step run). Per target and seed it runs base, self and one cross run (the next
language in alphabetical order as donor). One CSV row per run and step count; a summary of the
mean AUC, the mean self and cross gains and their SD over targets and seeds.

    PYTHONPATH=src python benchmarks/ecapa_learning.py data/subsets/speaker \
        --seeds 0 1 --steps 5 10 25 50 100 --out /tmp/ecapa_learning.csv

Settings: `demo_settings()`, with --set key=value (JSON values) overriding its fields.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from cltm.data.pack import PackedAudio
from cltm.train import loop
from cltm.train.ecapa_recipe import TrainedEcapa, all_features, demo_settings, embed, train_ecapa
from cltm.train.grid import RunSpec, training_clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("subsets", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50, 100])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    s = demo_settings(**{**overrides, "steps": max(args.steps)})
    manifest = pd.read_csv(args.subsets / "manifest.csv")
    trials = pd.read_csv(args.subsets / "trials.csv")
    audio = PackedAudio(args.subsets)
    waves = {c: torch.from_numpy(audio[c]) for c in manifest["clip"].unique()}
    feats = all_features(waves, s)
    languages = sorted(manifest["language"].unique())
    checks = {0, *args.steps}
    rows = []
    for seed in args.seeds:
        for i, target in enumerate(languages):
            donor = languages[(i + 1) % len(languages)]
            evaluation = manifest[(manifest["language"] == target) & (manifest["role"] == "eval")]
            eval_clips = evaluation["clip"].tolist()
            index = {c: j for j, c in enumerate(eval_clips)}
            t = trials[trials["language"] == target]

            def auc_of(run: TrainedEcapa, clips=eval_clips, index=index, t=t) -> float:
                emb = embed(run, [waves[c] for c in clips], [feats[c] for c in clips])
                scores = loop.cosine_scores(emb, index, t["a"].tolist(), t["b"].tolist())
                return loop.auc_eer(scores, t["label"].to_numpy())[0]

            for spec in (RunSpec("speaker", target, "base", target, seed),
                         RunSpec("speaker", target, "self", target, seed),
                         RunSpec("speaker", target, "cross", donor, seed)):
                train = training_clips(manifest, spec)
                clips, speakers = train["clip"].tolist(), train["speaker"].tolist()
                found: dict[int, float] = {}

                def measure(run: TrainedEcapa, found=found) -> None:
                    if len(run.losses) in checks:
                        found[len(run.losses)] = auc_of(run)

                start = time.perf_counter()
                untrained = train_ecapa([waves[c] for c in clips], speakers,
                                        replace(s, steps=0), seed, [feats[c] for c in clips])
                found[0] = auc_of(untrained)
                train_ecapa([waves[c] for c in clips], speakers, s, seed,
                            [feats[c] for c in clips], after_step=measure)
                wall = time.perf_counter() - start
                rows.extend({"seed": seed, "target": target, "condition": spec.condition,
                             "steps": k, "auc": v, "wall_s": wall} for k, v in found.items())
                print(spec.run_id, f"{wall:.1f} s",
                      {k: round(v, 3) for k, v in sorted(found.items())}, flush=True)
    df = pd.DataFrame(rows)
    if args.out:
        df.to_csv(args.out, index=False)
    wide = df.pivot_table(index=["seed", "target", "steps"], columns="condition",
                          values="auc").reset_index()
    wide["self_gain"] = wide["self"] - wide["base"]
    wide["cross_gain"] = wide["cross"] - wide["base"]
    by = wide.groupby("steps")
    print(by[["base", "self", "cross", "self_gain", "cross_gain"]].mean().round(3))
    print("SD over targets and seeds:")
    print(by[["self_gain", "cross_gain"]].std().round(3))


if __name__ == "__main__":
    main()
