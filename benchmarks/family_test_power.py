"""Power and size of the two family-structure tests on simulated grids whose truth is known.

stats.family_structure tests planted families twice over the CLTM's defined cells: `contrast`
(mean same-family cell minus mean cross-family cell) and `rank_contrast` (the same over each
target's donors ranked within its row). A cell is a mean gain over the target's mean
self-gain; where a self-gain is small against its seed noise, that row's cells run to several
units either way and dominate the plain contrast. This script measures what that does to each
test, on grids simulated from a model, not on any corpus the calibration uses:

- languages in families of equal size; target i has a true self-gain s_i, log-normal around
  --self-gain (spread --self-gain-spread in log units), so some targets gain little;
- a true cell c_ij = 1 on the diagonal, and off it a language-pair effect N(--cross, --pair-sd²)
  plus --effect when i and j share a family (0: no family structure, the test's size);
- every run's gain is s_i · c_ij plus seed noise N(0, --seed-sd²), --seeds seeds; a target whose
  mean self-gain is not positive is undefined, as in the cltm stage.

Each simulated grid gets both permutation tests (the stage's own code, --permutations
shuffles), and the script prints one JSON line per effect: the share of grids where each test's
p < --alpha. At effect 0 that share is the test's false-positive rate (it should stay near
alpha); above 0 it is the test's power.

    PYTHONPATH=src python benchmarks/family_test_power.py
    PYTHONPATH=src python benchmarks/family_test_power.py --effects 0 0.5 --grids 500
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from cltm.analysis.stats import family_structure


def simulate(rng: np.random.Generator, args: argparse.Namespace, effect: float) -> pd.DataFrame:
    """One grid's CLTM (targets x donors), NaN rows where the mean self-gain is not positive."""
    m = args.languages
    family = np.arange(m) // args.family_size
    same = family[:, None] == family[None, :]
    s = args.self_gain * np.exp(args.self_gain_spread * rng.standard_normal(m))
    c = args.cross + args.pair_sd * rng.standard_normal((m, m)) + effect * same
    np.fill_diagonal(c, 1.0)
    gains = (s[:, None] * c)[None] + args.seed_sd * rng.standard_normal((args.seeds, m, m))
    mean = gains.mean(axis=0)
    self_gain = np.diag(mean).copy()
    cells = mean / self_gain[:, None]
    cells[self_gain <= 0] = np.nan
    names = [f"l{i}" for i in range(m)]
    return pd.DataFrame(cells, index=names, columns=names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--effects", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    ap.add_argument("--grids", type=int, default=300, help="simulated grids per effect")
    ap.add_argument("--languages", type=int, default=8)
    ap.add_argument("--family-size", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--self-gain", type=float, default=0.05)
    ap.add_argument("--self-gain-spread", type=float, default=0.7)
    ap.add_argument("--cross", type=float, default=0.5)
    ap.add_argument("--pair-sd", type=float, default=0.4)
    ap.add_argument("--seed-sd", type=float, default=0.1)
    ap.add_argument("--permutations", type=int, default=500)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.languages % args.family_size:
        ap.error("--languages must be a multiple of --family-size")

    rng = np.random.default_rng(args.seed)
    for effect in args.effects:
        started = time.perf_counter()
        rejected = {"contrast": 0, "rank_contrast": 0}
        tested = 0
        for _ in range(args.grids):
            cells = simulate(rng, args, effect)
            families = {name: f"F{i // args.family_size}" for i, name in enumerate(cells.index)}
            fs = family_structure(cells, families, family_level="genus",
                                  permutations=args.permutations, rng=rng)
            if fs["contrast_p"] is None:  # too few defined languages to test
                continue
            tested += 1
            for key in rejected:
                rejected[key] += fs[f"{key}_p"] < args.alpha
        print(json.dumps({
            "effect": effect, "grids": args.grids, "tested": tested,
            "contrast_rejects": round(rejected["contrast"] / max(tested, 1), 3),
            "rank_contrast_rejects": round(rejected["rank_contrast"] / max(tested, 1), 3),
            "seconds": round(time.perf_counter() - started, 1),
        }), flush=True)


if __name__ == "__main__":
    main()
