"""The transfer graph: central donors, communities of languages, and whether they are families.

The graph
    The positive-transfer graph has an edge target i → donor j, weighted CLTM[i, j], wherever
    that cell is above 0 (defined rows, no self-loops): a target points at the donors that help
    it. PageRank (networkx `pagerank`, damping ALPHA) on it is a donor centrality: a language
    ranks high when it helps targets that themselves help others. PageRank divides a node's
    out-weights by their sum, so a target whose self-gain is small (its cells large either
    way) weighs no more than another. A language with no positive out-edge (an undefined row,
    or a target no donor helps) is dangling and networkx spreads its rank evenly: the ranks are
    positive and sum to 1, never all zeros (the reference's `nx.pagerank_numpy` is gone from
    NetworkX 3, and its call reported zeros).

Communities
    Louvain (networkx `louvain_communities`, seeded) on the undirected graph whose weight
    between i and j is P[i, j] + P[j, i], where P[i, j] is donor j's share of target i's
    positive transfer (row-normalised, for the reason above: each target weighs the same).
    Communities are numbered in the order of their first language.

Agreement with the families
    The adjusted Rand index (sklearn) between the communities and the family labels, over the
    languages with a known family; its permutation p shuffles the family labels (family sizes
    kept), one-sided towards more agreement than chance, with the usual +1 (stats._perm_p).
    The null mean of the ARI is about 0 and reported as `ari_chance`.

Co-clustering (bootstrap)
    In every replicate of stats.py's seed bootstrap the communities are found again, with the
    same Louvain seed so that the differences come from the data, not from the algorithm's own
    randomness; the share of replicates in which two languages share a community says how
    stable a community is, and the replicates' ARIs give the ARI its percentile interval.
    PageRank gets its interval the same way.

The map
    A 2-D metric MDS (sklearn, started from classical MDS, so deterministic) of the defined
    languages' profiles: each language's row (what it receives) and column (what it gives) of
    the defined CLTM, compared by Euclidean distance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
from sklearn.manifold import MDS
from sklearn.metrics import adjusted_rand_score

from cltm.analysis.donors import TransferDraws
from cltm.analysis.languages import read_families_csv
from cltm.analysis.stats import CHUNK, _perm_p, family_codes, percentile_interval, transfer_streams
from cltm.analysis.tables import read_matrix_csv
from cltm.errors import CltmError
from cltm.layout import MATRIX_FILE

log = logging.getLogger(__name__)

#: PageRank's damping (networkx's default, the usual value).
ALPHA = 0.85
#: Bootstrap replicates whose communities are found again (the first ones drawn): Louvain
#: takes about 4 ms a replicate at 44 languages, and a share of 200 replicates is within
#: ±0.07 of its limit (95%), fine enough to tell a stable community from a chance one.
GRAPH_REPLICATES = 200


def positive_weights(c: np.ndarray) -> np.ndarray:
    """The positive-transfer graph's weights (..., n, n): CLTM[i, j] where above 0 off the
    diagonal, else 0 (NaN cells of undefined rows included)."""
    off = ~np.eye(c.shape[-1], dtype=bool)
    return np.where(off & (np.nan_to_num(c, nan=0.0) > 0), np.nan_to_num(c, nan=0.0), 0.0)


def pagerank(c: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """PageRank of the positive-transfer graph of one CLTM (n, n), one value per language in
    the matrix's order; positive, summing to 1."""
    graph = nx.from_numpy_array(positive_weights(c), create_using=nx.DiGraph)
    ranks = nx.pagerank(graph, alpha=alpha, weight="weight")
    return np.array([ranks[k] for k in range(c.shape[-1])])


def pagerank_many(c: np.ndarray, alpha: float = ALPHA, tol: float = 1e-10,
                  max_iter: int = 1000) -> np.ndarray:
    """pagerank of B CLTMs (B, n, n) at once: (B, n). networkx's power iteration (uniform
    teleport, dangling rank spread evenly), vectorised over the replicates, because building
    and ranking 1000 graphs one by one takes seconds; run to a tighter tolerance than
    networkx's, so the two agree to its (tests/test_donors.py checks they do)."""
    w = positive_weights(c)
    n = w.shape[-1]
    out = w.sum(-1, keepdims=True)
    step = np.divide(w, out, out=np.zeros_like(w), where=out > 0)  # row-stochastic or 0
    dangling = out[..., 0] == 0
    x = np.full(w.shape[:-1], 1.0 / n)
    for _ in range(max_iter):
        spread = (x * dangling).sum(-1, keepdims=True) / n
        new = alpha * (np.einsum("bi,bij->bj", x, step) + spread) + (1 - alpha) / n
        done = np.abs(new - x).sum(-1).max() < n * tol
        x = new
        if done:
            return x
    raise CltmError(f"PageRank did not converge in {max_iter} iterations")


def community_weights(c: np.ndarray) -> np.ndarray:
    """The symmetric weights Louvain works on: P + Pᵀ, P the row-normalised positive transfer."""
    pos = positive_weights(c)
    total = pos.sum(-1, keepdims=True)
    share = np.divide(pos, total, out=np.zeros_like(pos), where=total > 0)
    return share + np.swapaxes(share, -1, -2)


def _graph(weights: np.ndarray) -> nx.Graph:
    """The undirected graph of a symmetric weight matrix, every language a node (edges where
    the weight is positive); built edge by edge, 3 times faster than from_numpy_array."""
    n = weights.shape[-1]
    i, j = np.triu_indices(n, 1)
    keep = weights[i, j] > 0
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_weighted_edges_from(zip(i[keep].tolist(), j[keep].tolist(),
                                      weights[i, j][keep].tolist()))
    return graph


def communities(c: np.ndarray, seed: int) -> np.ndarray:
    """A community label per language (Louvain on community_weights), numbered in the order
    of each community's first language."""
    found = nx.community.louvain_communities(_graph(community_weights(c)), weight="weight",
                                             seed=seed)
    labels = np.empty(c.shape[-1], dtype=int)
    for label, members in enumerate(sorted(found, key=min)):
        labels[sorted(members)] = label
    return labels


def modularity(c: np.ndarray, labels: np.ndarray) -> float | None:
    """Modularity of a labelling on community_weights' graph; None on a graph without edges."""
    graph = _graph(community_weights(c))
    if graph.size(weight="weight") <= 0:
        return None
    parts = [set(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels)]
    return float(nx.community.modularity(graph, parts, weight="weight"))


def adjusted_rand_many(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sklearn's adjusted_rand_score of many labellings at once: `a` and `b` broadcast to
    (P, m) (non-negative integer labels); (P,). The permutation null needs thousands of ARIs,
    and sklearn's per-call checks made them take seconds (the tests check the two agree)."""
    a, b = np.broadcast_arrays(np.atleast_2d(a), np.atleast_2d(b))
    m = a.shape[-1]
    table = np.einsum("pma,pmb->pab", np.eye(a.max() + 1)[a], np.eye(b.max() + 1)[b])

    def pairs(x: np.ndarray) -> np.ndarray:
        return x * (x - 1) / 2

    index = pairs(table).sum((1, 2))
    rows, cols = pairs(table.sum(2)).sum(1), pairs(table.sum(1)).sum(1)
    expected = rows * cols / pairs(m)
    top = (rows + cols) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        ari = (index - expected) / (top - expected)
    # Both labellings trivial alike (one group, or all singletons): sklearn's 1.0.
    return np.where(top == expected, 1.0, ari)


def family_agreement(labels: np.ndarray, codes: np.ndarray, *, permutations: int,
                     rng: np.random.Generator) -> dict[str, float | None]:
    """ARI of `labels` against the family `codes` (stats.family_codes; -1, unknown, left out)
    with its one-sided permutation p and chance value (None without permutations, and
    everything None with fewer than 2 families among the known languages)."""
    known = codes >= 0
    out: dict[str, float | None] = {"ari": None, "ari_p": None, "ari_chance": None}
    if np.unique(codes[known]).size < 2:
        return out
    fam, lab = codes[known], labels[known]
    out["ari"] = float(adjusted_rand_score(fam, lab))
    if permutations > 0:
        null = np.concatenate([
            adjusted_rand_many(rng.permuted(np.broadcast_to(fam, (size, fam.size)), axis=1), lab)
            for size in np.diff([*range(0, permutations, CHUNK), permutations])])
        out["ari_p"] = _perm_p(null, out["ari"], two_sided=False)
        out["ari_chance"] = float(null.mean())
    return out


def transfer_map(c: np.ndarray, seed: int) -> np.ndarray:
    """2-D MDS coordinates (n, 2) of each defined language's row and column (the module
    docstring); NaN for undefined languages, and for all with fewer than 3 defined."""
    n = c.shape[-1]
    defined = ~np.isnan(c).all(-1)
    coords = np.full((n, 2), np.nan)
    if defined.sum() < 3:
        return coords
    sub = c[np.ix_(defined, defined)]
    profiles = np.concatenate([sub, sub.T], axis=1)
    mds = MDS(n_components=2, n_init=1, init="classical_mds", random_state=seed)
    coords[defined] = mds.fit_transform(profiles)
    return coords


@dataclass(frozen=True)
class TransferGraph:
    """What transfer_graph found: per language and per pair, and the summary for the JSON."""

    languages: list[str]
    pagerank: np.ndarray  # (n,)
    pagerank_low: np.ndarray  # (n,) percentile interval over the bootstrap replicates
    pagerank_high: np.ndarray
    community: np.ndarray  # (n,) labels
    coclustering: np.ndarray  # (n, n) share of replicates in one community; NaN without any
    coords: np.ndarray  # (n, 2) the MDS map
    summary: dict[str, object]


def transfer_graph(td: TransferDraws, families: Mapping[str, str] | None, *,
                   permutations: int, rng: np.random.Generator, seed: int) -> TransferGraph:
    """PageRank, communities, their agreement with `families` and the bootstrap's
    co-clustering, from the CLTM and its replicates (`td`); `rng` draws the family shuffles,
    `seed` seeds Louvain and the MDS."""
    langs, n = td.languages, len(td.languages)
    codes = family_codes(langs, families)
    labels = communities(td.point, seed)
    agreement = family_agreement(labels, codes, permutations=permutations, rng=rng)
    ranks = pagerank(td.point)
    rep_ranks = pagerank_many(td.draws) if len(td.draws) else np.full((0, n), np.nan)
    graph_draws = td.draws[:GRAPH_REPLICATES]
    rep_labels = np.array([communities(c, seed) for c in graph_draws], dtype=int).reshape(-1, n)
    known = codes >= 0
    co = (rep_labels[:, :, None] == rep_labels[:, None, :]).mean(0) if len(rep_labels) else (
        np.full((n, n), np.nan))
    rep_ari = np.full(0, np.nan)
    if agreement["ari"] is not None and len(rep_labels):
        rep_ari = adjusted_rand_many(codes[known], rep_labels[:, known])
    bounds = [percentile_interval(rep_ranks[:, k], td.level) or (np.nan, np.nan)
              for k in range(n)]
    ari_ci = percentile_interval(rep_ari, td.level, defined=agreement["ari"] is not None)
    family_labels = np.where(known, codes, -1 - np.arange(n))  # an unknown family stands alone
    groups = [[langs[k] for k in np.flatnonzero(labels == g)] for g in np.unique(labels)]
    summary = {
        "languages": n,
        "graph": "edge target -> donor weighted CLTM[target, donor] where above 0",
        "pagerank_alpha": ALPHA,
        "pagerank": dict(zip(langs, map(float, ranks))),
        "communities": groups,
        "n_communities": len(groups),
        "modularity": modularity(td.point, labels),
        "family_modularity": modularity(td.point, family_labels),
        "languages_with_family": int(known.sum()),
        "n_families": int(np.unique(codes[known]).size),
        **agreement,
        "ari_low": None if ari_ci is None else ari_ci[0],
        "ari_high": None if ari_ci is None else ari_ci[1],
        "permutations": int(permutations),
        "bootstrap_replicates": len(td.draws),
        "community_replicates": len(graph_draws),
        "louvain_seed": int(seed),
    }
    return TransferGraph(langs, ranks, np.array([x[0] for x in bounds]),
                         np.array([x[1] for x in bounds]), labels, co,
                         transfer_map(td.point, seed), summary)


def community_agreement(matrix: pd.DataFrame, families: Mapping[str, str], *,
                        permutations: int, stats_seed: int) -> dict[str, object]:
    """The communities of a CLTM (defined rows or not) against `families`: ARI, its
    permutation p and chance value, the communities and their count. What the calibration
    summary reports per corpus against the planted families (a figure, not a check)."""
    langs = [str(x) for x in matrix.index]
    c = matrix.reindex(index=langs, columns=langs).to_numpy(dtype=float)
    labels = communities(c, stats_seed)
    out = family_agreement(labels, family_codes(langs, families), permutations=permutations,
                           rng=transfer_streams(stats_seed)[1])
    groups = [[langs[k] for k in np.flatnonzero(labels == g)] for g in np.unique(labels)]
    return {**out, "n_communities": len(groups), "communities": groups,
            "permutations": int(permutations)}


def planted_agreement(task_dir: Path, families: Mapping[str, str] | Path, *,
                      permutations: int, stats_seed: int) -> dict[str, object]:
    """community_agreement of the `cltm.csv` in `task_dir` (a cltm stage's output folder, as
    `calibration/work/<variant>/metrics/<task>`) against `families` (a map, or the demo
    corpus's families.csv): it needs no rerun of the corpus, only the matrix it wrote."""
    if isinstance(families, Path):
        families = read_families_csv(families)
    matrix = read_matrix_csv(Path(task_dir) / MATRIX_FILE, "CLTM")
    return community_agreement(matrix, families, permutations=permutations,
                               stats_seed=stats_seed)

