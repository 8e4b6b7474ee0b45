"""Geometry of the speaker-embedding space across languages (CLTM paper §4.3, Table 2).

The paper sets the Euclidean distance between two languages' embedding centroids beside the CLTM
of their most positive and most negative pairs. A centroid sees only a shift of the mean; the
Sinkhorn distance (entropic optimal transport, Cuturi 2013) compares the whole clouds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import pandas as pd

# POT imports every array backend it finds (torch, jax, cupy, tensorflow) at import time; analysis/
# never imports torch (DESIGN.md), and numpy arrays need none of them. An explicit setting wins.
for _backend in ("PYTORCH", "JAX", "CUPY", "TENSORFLOW"):
    os.environ.setdefault(f"POT_BACKEND_DISABLE_{_backend}", "1")

import ot  # noqa: E402


def centroid_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Euclidean distance between the mean rows of two (samples × features) clouds."""
    cx = np.asarray(x, dtype=np.float64).mean(axis=0)
    cy = np.asarray(y, dtype=np.float64).mean(axis=0)
    return float(np.linalg.norm(cx - cy))


def sinkhorn_distance(x: np.ndarray, y: np.ndarray, reg: float) -> float:
    """Entropic OT cost ⟨γ, M⟩ between two clouds with uniform weights, M the Euclidean distances.

    `reg` is relative: the entropic regularisation is reg × median(M). An absolute value would
    mean different things in different embedding spaces (L2-normalised speaker embeddings have
    distances up to 2, raw ones hundreds): too large a value blurs every plan to the product
    measure, too small a one underflows exp(−M / reg). Scaling by the median keeps M / reg near
    1 / reg for a typical pair whatever the units; 0.01–0.1 is a sensible range. The returned
    cost is the transport term alone, without the entropy (Cuturi's Sinkhorn distance); it is
    positive even for a cloud against itself, as entropic plans spread mass.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if reg <= 0:
        raise ValueError(f"sinkhorn_distance needs a positive reg, got {reg}")
    cost = ot.dist(x, y, metric="euclidean")
    # Over half the pairs coinciding (duplicated points) leaves a median of 0: fall back to the
    # mean, and two clouds of one and the same point are at distance 0.
    scale = float(np.median(cost)) or float(cost.mean())
    if scale == 0:
        return 0.0
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(ot.sinkhorn2(a, b, cost, reg * scale, numItermax=10_000))


def _lookup(matrix: pd.DataFrame, target: str, donor: str) -> float:
    # Distances are symmetric: a matrix filled in one triangle only still answers.
    for r, c in ((target, donor), (donor, target)):
        if r in matrix.index and c in matrix.columns:
            v = float(matrix.loc[r, c])
            if math.isfinite(v):
                return v
    return math.nan


def extreme_pairs(cltm: pd.DataFrame, distances: Mapping[str, pd.DataFrame],
                  k: int = 2) -> list[dict]:
    """The paper's Table 2: the k most positive and k most negative defined off-diagonal cells.

    Rows of `cltm` are targets, columns donors. "Positive" cells are those > 0 (positive
    transfer), largest first; "negative" those < 0 (negative transfer), most negative first; with
    fewer such cells fewer are returned, so a matrix without negative transfer lists none. Each
    entry has target, donor, cltm, sign and one key per distance name (NaN where the distance
    matrix lacks the pair).
    """
    cells = []
    for target in cltm.index:
        for donor in cltm.columns:
            value = float(cltm.loc[target, donor])
            if target != donor and math.isfinite(value):
                cells.append((value, str(target), str(donor)))
    positive = sorted((c for c in cells if c[0] > 0), key=lambda c: (-c[0], c[1], c[2]))[:k]
    negative = sorted((c for c in cells if c[0] < 0), key=lambda c: (c[0], c[1], c[2]))[:k]
    out = []
    for sign, chosen in (("positive", positive), ("negative", negative)):
        for value, target, donor in chosen:
            row = {"target": target, "donor": donor, "cltm": value, "sign": sign}
            row.update({name: _lookup(m, target, donor) for name, m in distances.items()})
            out.append(row)
    return out
