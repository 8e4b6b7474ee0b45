"""Donor rankings, transfer profiles and the transfer graph (donors.py, transfer_graph.py,
transfer.py) and `cltm donors`, on simulated seed stores with known cell means."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from cltm import layout
from cltm.analysis import donors as dn
from cltm.analysis import stats as st
from cltm.analysis import transfer_graph as tg
from cltm.analysis.cltm import compute_cltm
from cltm.cli import main
from cltm.stages import cltm as cltm_stage
from tests.conftest import REPO, analysis_config
from tests.test_stats import make_runs, write_store

#: 12 languages in 3 planted blocks of 4: a donor of the target's own block transfers 0.9 of
#: the self-gain, any other 0.1.
BLOCK_LANGS = [f"b{k:02d}" for k in range(12)]
BLOCKS = np.arange(12) // 4
BLOCK_FAMILIES = {loc: "XYZ"[b] for loc, b in zip(BLOCK_LANGS, BLOCKS)}

TRANSFER_FILES = (layout.DONORS_FILE, layout.PROFILES_FILE, layout.GRAPH_FILE,
                  layout.COCLUSTERING_FILE, "donors.png", "profiles.png", "coclustering.png",
                  "transfer_map.png")


def write_transfer(runs, result, tests, families, out, task: str, **overrides) -> dict:
    return cltm_stage.write_transfer(runs, result, tests, families, out, task,
                                     analysis_config(**overrides))



def block_runs(seed: int = 0, seeds: int = 5) -> pd.DataFrame:
    gains = np.full(len(BLOCK_LANGS), 0.2)
    true = np.where(BLOCKS[:, None] == BLOCKS[None, :], 0.9, 0.1)
    return make_runs(np.random.default_rng(seed), BLOCK_LANGS, gains, true * gains[:, None],
                     seeds=seeds, sd=0.01)


def transfer_of(runs: pd.DataFrame, replicates: int = 300) -> tuple[dn.TransferDraws,
                                                                     pd.DataFrame]:
    result = compute_cltm(runs, pair_seeds=False)
    cells = st.seed_cells(runs, list(result.matrix.index))
    tests = st.cell_tests(cells, 0.05, result, paired=True)
    boot, _ = st.transfer_streams(0)
    td = dn.transfer_draws(cells, replicates=replicates, level=0.95, rng=boot, paired=True,
                           matrix=result.matrix)
    return td, tests


# --- planted blocks -------------------------------------------------------------------------------


def test_planted_blocks_rank_first_and_form_the_communities(tmp_path):
    runs = block_runs()
    result = compute_cltm(runs, pair_seeds=False)
    cells = st.seed_cells(runs, BLOCK_LANGS)
    tests = st.cell_tests(cells, 0.05, result, paired=True)
    summary = write_transfer(runs, result, tests, BLOCK_FAMILIES, tmp_path, task="speaker",
                             highlight=["b00", "b05"], bootstrap=300, permutations=1000)
    assert all((tmp_path / f).is_file() for f in TRANSFER_FILES)

    donors = pd.read_csv(tmp_path / "donors.csv")
    assert len(donors) == 12 * 11
    for target, table in donors.groupby("target"):
        same = table["donor"].map(BLOCK_FAMILIES) == BLOCK_FAMILIES[target]
        assert sorted(table.loc[same, "rank"]) == [1, 2, 3]  # the 3 block partners lead
        assert (table.loc[same, "top_k_share"] == 1.0).all()  # and do in every replicate
        assert (table.loc[~same, "top_k_share"] == 0.0).all()
        assert (table.loc[~same, "rank_low"] >= 4).all()
        assert table["low"].le(table["cltm"]).all() and table["high"].ge(table["cltm"]).all()
    assert (donors["same_family"] == (donors["target"].map(BLOCK_FAMILIES)
                                      == donors["donor"].map(BLOCK_FAMILIES))).all()
    partners = dn.partner_first(donors, 0.95)
    assert len(partners) == 12 and partners["first"].all() and partners["surely_first"].all()
    assert partners["first_share"].to_numpy() == pytest.approx(1.0)
    # the stage writes the verdict the report reads (transfer_graph.json's partner_first)
    pf = json.loads((tmp_path / "transfer_graph.json").read_text())["partner_first"]
    assert pf == summary["partner_first"]
    assert (pf["targets"], pf["first"], pf["surely_first"]) == (12, 12, 12)

    assert summary["ari"] == 1.0 and summary["n_communities"] == 3
    assert summary["ari_p"] < 0.01  # 5,775 ways to split 12 into 3 x 4: chance rarely matches
    assert summary["ari_low"] == summary["ari_high"] == 1.0
    graph = json.loads((tmp_path / "transfer_graph.json").read_text())
    assert sorted(map(sorted, graph["communities"])) == [BLOCK_LANGS[k:k + 4] for k in (0, 4, 8)]
    co = pd.read_csv(tmp_path / "coclustering.csv", index_col="language").to_numpy()
    same_block = BLOCKS[:, None] == BLOCKS[None, :]
    assert co[same_block].min() == 1.0 and co[~same_block].max() == 0.0

    profiles = pd.read_csv(tmp_path / "profiles.csv")
    # Every donor gives 0.9 to 3 targets and 0.1 to 8: (2.7 + 0.8) / 11 on average.
    assert profiles["given_mean"].to_numpy() == pytest.approx(3.5 / 11, abs=0.02)
    assert (profiles["given_low"] <= profiles["given_mean"]).all()
    assert profiles["pagerank"].sum() == pytest.approx(1.0)
    # The map puts block partners nearer each other than any other language.
    xy = profiles[["map_x", "map_y"]].to_numpy()
    dist = np.linalg.norm(xy[:, None] - xy[None, :], axis=-1)
    off = ~np.eye(12, dtype=bool)
    assert dist[same_block & off].max() < dist[~same_block].min()


def test_shuffled_family_labels_do_not_agree():
    td, _ = transfer_of(block_runs(), replicates=50)
    shuffled = dict(zip(BLOCK_LANGS, np.random.default_rng(1).permutation(
        list(BLOCK_FAMILIES.values()))))
    graph = tg.transfer_graph(td, shuffled, permutations=1000, rng=np.random.default_rng(2),
                              seed=0)
    assert graph.summary["n_communities"] == 3  # the communities are the blocks still
    assert abs(graph.summary["ari"]) < 0.2
    assert graph.summary["ari_p"] > 0.2
    assert abs(graph.summary["ari_chance"]) < 0.02


def test_planted_agreement_from_a_cltm_csv(tmp_path):
    """The calibration's figure: a corpus's communities against its planted families, from
    the cltm.csv and families.csv a variant's work directory already holds."""
    matrix = compute_cltm(block_runs(), pair_seeds=False).matrix
    matrix.to_csv(tmp_path / "cltm.csv", index_label="target")
    pd.DataFrame({"locale": BLOCK_LANGS, "family": [BLOCK_FAMILIES[x] for x in BLOCK_LANGS]}
                 ).to_csv(tmp_path / "families.csv", index=False)
    found = tg.planted_agreement(tmp_path, tmp_path / "families.csv", permutations=500,
                                 stats_seed=0)
    assert found["ari"] == 1.0 and found["ari_p"] < 0.01 and found["n_communities"] == 3
    mixed = {loc: "PQRS"[k % 4] for k, loc in enumerate(BLOCK_LANGS)}  # one of each block
    found = tg.planted_agreement(tmp_path, mixed, permutations=500, stats_seed=0)
    assert found["ari"] < 0 and found["ari_p"] > 0.5


def test_adjusted_rand_many_equals_sklearn():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, (30, 15))
    b = rng.integers(0, 3, 15)
    expected = [adjusted_rand_score(row, b) for row in a]
    assert tg.adjusted_rand_many(a, b) == pytest.approx(expected, abs=1e-12)
    # The trivial labellings, where sklearn has special cases (one group, all singletons).
    one, alone, swapped = np.zeros(6, int), np.arange(6), np.array([1, 1, 0, 0, 2, 2])
    for x, y in ((one, one), (alone, alone), (one, alone), (swapped, swapped[::-1])):
        assert tg.adjusted_rand_many(x, y)[0] == pytest.approx(adjusted_rand_score(x, y))


# --- PageRank -------------------------------------------------------------------------------------


def hand_pagerank(c: np.ndarray, alpha: float = 0.85, steps: int = 500) -> np.ndarray:
    """The textbook power iteration: edges target -> donor weighted by the positive cells,
    uniform teleport, a dangling node's rank spread over every node."""
    n = len(c)
    w = [[c[i][j] if i != j and c[i][j] > 0 else 0.0 for j in range(n)] for i in range(n)]
    rank = [1.0 / n] * n
    for _ in range(steps):
        new = [(1 - alpha) / n] * n
        for i in range(n):
            out = sum(w[i])
            for j in range(n):
                new[j] += alpha * rank[i] * (w[i][j] / out if out > 0 else 1.0 / n)
        rank = new
    return np.array(rank)


def test_pagerank_against_a_hand_computation():
    c = np.array([[1.0, 0.8, -0.2, 0.1],
                  [0.5, 1.0, 0.4, -0.3],
                  [0.9, -0.1, 1.0, 0.6],
                  [np.nan, np.nan, np.nan, np.nan]])  # an undefined row: a dangling node
    expected = hand_pagerank(np.nan_to_num(c, nan=-1.0))
    assert tg.pagerank(c) == pytest.approx(expected, abs=1e-5)
    assert tg.pagerank_many(c[None])[0] == pytest.approx(expected, abs=1e-8)
    # Donor 0, helped into by every target, ranks first; the undefined row's language still
    # ranks (it is a donor to two targets).
    assert np.argmax(tg.pagerank(c)) == 0 and tg.pagerank(c)[3] > 0.25 / 4


def test_pagerank_is_never_all_zeros():
    hurting = -np.ones((4, 4)) + 2 * np.eye(4)  # no positive transfer at all
    assert tg.pagerank(hurting) == pytest.approx(np.full(4, 0.25))
    assert tg.pagerank_many(hurting[None])[0] == pytest.approx(np.full(4, 0.25))
    rng = np.random.default_rng(3)
    many = rng.normal(0.2, 0.5, (20, 7, 7))
    many[3, 2] = np.nan
    ranks = tg.pagerank_many(many)
    assert (ranks > 0).all() and ranks.sum(1) == pytest.approx(np.ones(20))
    for c, r in zip(many[:5], ranks[:5]):
        assert r == pytest.approx(tg.pagerank(c), abs=1e-5)
    graph = nx.from_numpy_array(tg.positive_weights(many[0]), create_using=nx.DiGraph)
    assert graph.number_of_edges() == int((tg.positive_weights(many[0]) > 0).sum())


# --- the rank's interval --------------------------------------------------------------------------


def test_rank_interval_covers_the_true_rank_about_nominally():
    """Donors 0.03 of a self-gain apart with noise of about twice that in a cell: the ranks
    move between replicates, and the 95% interval of a rank should still hold the true rank
    in about 95% of simulated stores (measured: 0.95; 0.85 with 3 seeds, the bootstrap's known
    narrowness)."""
    langs = [f"l{k}" for k in range(5)]
    n = len(langs)
    gains = np.full(n, 0.3)
    true = np.zeros((n, n))
    for i in range(n):
        true[i, [j for j in range(n) if j != i]] = 0.3 + 0.03 * np.arange(n - 1)[::-1]
    true_rank = dn.donor_ranks(np.where(np.eye(n, dtype=bool), 1.0, true))
    rng = np.random.default_rng(5)
    covered, width = [], []
    for _ in range(40):
        runs = make_runs(rng, langs, gains, true * gains[:, None], seeds=6, sd=0.03)
        td, tests = transfer_of(runs, replicates=200)
        table = dn.donor_rankings(td, tests, top_k=1)
        truth = true_rank[table["target"].map(langs.index), table["donor"].map(langs.index)]
        covered += list((table["rank_low"] <= truth) & (truth <= table["rank_high"]))
        width += list(table["rank_high"] - table["rank_low"])
    assert 0.88 <= np.mean(covered) <= 0.995
    assert 1.0 <= np.mean(width) <= 3.0  # uncertain ranks, yet not the whole range 1-4


# --- `cltm donors` --------------------------------------------------------------------------------


LANGS = ["l0", "l1", "l2", "l3", "l4"]


def small_runs() -> pd.DataFrame:
    gains = np.full(5, 0.2)
    true = np.array([[1.0, 0.9, 0.2, -0.4, 0.5]] * 5)
    return make_runs(np.random.default_rng(4), LANGS, gains, true * gains[:, None], seeds=4,
                     sd=0.01)


def ranked_donors(out: str) -> list[str]:
    """The donor codes of a printed donor table, in its order."""
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("rank"))
    rows = [line for line in lines[start + 1:] if not line.startswith("*")]
    return [line.split()[1] for line in rows]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--params", str(REPO / "params.yaml"), "donors", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_donors_from_a_run_store_and_from_a_matrix(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no demo corpus here: the families are the metadata's
    runs = small_runs()
    store = write_store(tmp_path / "runs", runs)
    code, out, _ = cli(capsys, "l0", "--runs", str(store), "--task", "gender")
    assert code == 0
    assert "Donors of l0 (gender)" in out and "seed-bootstrap replicates" in out
    ranked = ranked_donors(out)
    assert ranked == ["l1", "l4", "l2", "l3"]  # 0.9, 0.5, 0.2, -0.4
    assert "helps" in out and "hurts" in out and "[" in out

    # The same table as the stage's donors.csv for the same settings (params.yaml's).
    result = compute_cltm(runs, pair_seeds=False)
    cells = st.seed_cells(runs, LANGS)
    write_transfer(runs, result, st.cell_tests(cells, 0.05, result, paired=True), {}, tmp_path,
                   task="gender", highlight=[])
    stage = pd.read_csv(tmp_path / "donors.csv").query("target == 'l0'")
    assert list(stage["donor"]) == ranked
    assert f"{stage['high'].iloc[0]:.3f}]" in out

    result.matrix.to_csv(tmp_path / "cltm.csv", index_label="target")
    code, out, _ = cli(capsys, "l0", str(tmp_path / "cltm.csv"))
    assert code == 0 and "point values only" in out
    assert ranked_donors(out) == ranked


def test_cli_donors_unknown_or_undefined_target_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    matrix = compute_cltm(small_runs(), pair_seeds=False).matrix
    matrix.loc["l2"] = np.nan
    matrix.to_csv(tmp_path / "cltm.csv", index_label="target")
    code, _, err = cli(capsys, "xx", str(tmp_path / "cltm.csv"))
    assert code == 2 and "'xx' is not a language" in err and "l0, l1, l2, l3, l4" in err
    code, _, err = cli(capsys, "l2", str(tmp_path / "cltm.csv"))
    assert code == 2 and "undefined" in err
    store = write_store(tmp_path / "runs", small_runs())
    code, _, err = cli(capsys, "es", "--runs", str(store))
    assert code == 2 and "l0, l1, l2, l3, l4" in err
    code, _, err = cli(capsys, "l0", "--runs", str(tmp_path / "nowhere"))
    assert code == 2 and "no run store" in err


def test_bootstrap_off_leaves_point_rankings(tmp_path):
    runs = small_runs()
    result = compute_cltm(runs, pair_seeds=False)
    cells = st.seed_cells(runs, LANGS)
    tests = st.cell_tests(cells, 0.05, result, paired=True)
    summary = write_transfer(runs, result, tests, {}, tmp_path, task="gender", highlight=[],
                             bootstrap=0, permutations=0)
    donors = pd.read_csv(tmp_path / "donors.csv")
    assert donors["rank"].notna().all() and donors["rank_low"].isna().all()
    assert summary["ari"] is None and summary["community_replicates"] == 0
    assert all((tmp_path / f).is_file() for f in TRANSFER_FILES)
