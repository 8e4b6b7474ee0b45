"""Training runs: metrics, padding-exact batches, determinism, the grid and its store."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from cltm.errors import CltmError
from cltm.train import tasks
from cltm.train.grid import Fingerprints, RunSpec, grid_specs, training_clips
from cltm.train.model import MaskedGroupNorm, load_encoder
from cltm.train.store import RunStore
from cltm.train.worker import Worker, WorkerSettings
from tests.conftest import TINY_HUBERT

PARAMS = tasks.TrainParams(lr=1e-3, weight_decay=0.0, grad_clip=1.0, epochs=1, batch_size=1,
                           precision="fp32")


def settings(task: str, subsets, **kw) -> WorkerSettings:
    base = WorkerSettings(task=task, subsets_dir=str(subsets[task]), name_or_path="unused",
                          random_init=TINY_HUBERT, init_seed=0, train=PARAMS, device="cpu",
                          threads=1)
    return replace(base, **kw)


# --- metrics against independent computations -------------------------------------------------

def _eer_brute_force(scores: np.ndarray, labels: np.ndarray) -> float:
    best, eer = np.inf, None
    for thr in np.unique(np.concatenate([scores, [np.inf]])):
        fpr = np.mean(scores[labels == 0] >= thr)
        fnr = np.mean(scores[labels == 1] < thr)
        if abs(fpr - fnr) < best:
            best, eer = abs(fpr - fnr), (fpr + fnr) / 2
    return float(eer)


def test_auc_and_eer_match_independent_computations():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(400), np.zeros(400)].astype(int)
    scores = np.r_[rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 400)]
    auc, eer = tasks.auc_eer(scores, labels)
    assert auc == pytest.approx(roc_auc_score(labels, scores))
    assert eer == pytest.approx(_eer_brute_force(scores, labels), abs=0.005)
    # two Gaussians one SD apart: EER = Φ(-0.5) ≈ 0.3085
    assert eer == pytest.approx(0.3085, abs=0.04)


def test_eer_of_separable_and_inverted_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert tasks.auc_eer(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), labels) == (1.0, 0.0)
    auc, eer = tasks.auc_eer(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), labels)
    assert auc == 0.0 and eer == pytest.approx(1.0)


def test_macro_f1_matches_sklearn():
    y = [0, 0, 1, 1, 1, 0, 1]
    p = [0, 1, 1, 1, 0, 0, 1]
    assert tasks.macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    # one class never predicted: its F1 is 0, not an error
    assert tasks.macro_f1([0, 1, 1], [1, 1, 1]) == pytest.approx(0.4)


# --- padding-exact batching --------------------------------------------------------------------

def test_padded_batches_equal_one_by_one():
    encoder, _ = load_encoder("unused", TINY_HUBERT)
    encoder.eval()
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=gen) for n in (16_000, 23_456, 9_000, 12_345)]
    cpu = torch.device("cpu")
    with torch.no_grad():
        for layers in (1, 3):
            batched = tasks.pooled(encoder, waves, cpu, True, last_layers=layers)
            alone = torch.cat([tasks.pooled(encoder, [w], cpu, True, last_layers=layers)
                               for w in waves])
            assert torch.allclose(batched, alone, atol=1e-4)


def test_masked_group_norm_cpu_loop_matches_the_batched_masked_path():
    """The CPU path (one GroupNorm per clip) and the CUDA path (masked arithmetic) agree on
    every valid frame, and each clip gets what a plain GroupNorm gives it alone."""
    norm = MaskedGroupNorm(4, 4)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(3, 4, 50, generator=torch.Generator().manual_seed(0))
    norm.lengths = torch.tensor([50, 30, 12])
    looped, masked = norm(x), norm._masked(x)
    for i, n in enumerate((50, 30, 12)):
        alone = torch.nn.functional.group_norm(x[i : i + 1, :, :n], 4, norm.weight, norm.bias,
                                               norm.eps)[0]
        assert torch.equal(looped[i, :, :n], alone)
        assert torch.allclose(masked[i, :, :n], alone, atol=1e-5)
        assert not looped[i, :, n:].any()


def test_training_loss_with_padding_equals_one_by_one():
    """With SpecAugment and dropout off, a padded batch's loss is the mean of per-clip losses."""
    cfg = {**TINY_HUBERT, "mask_time_prob": 0.0, "layerdrop": 0.0, "hidden_dropout": 0.0,
           "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0}
    encoder, _ = load_encoder("unused", cfg)
    encoder.train()
    head = torch.nn.Linear(16, 2)
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=gen) for n in (16_000, 11_000, 7_000)]
    labels = torch.tensor([0, 1, 1])
    cpu = torch.device("cpu")
    loss = torch.nn.functional.cross_entropy(head(tasks.pooled(encoder, waves, cpu, True)),
                                             labels)
    singles = [torch.nn.functional.cross_entropy(head(tasks.pooled(encoder, [w], cpu, True)),
                                                 labels[i : i + 1]) for i, w in enumerate(waves)]
    assert loss.item() == pytest.approx(torch.stack(singles).mean().item(), abs=1e-4)


# --- the grid ----------------------------------------------------------------------------------

def test_grid_has_n_squared_plus_n_runs_per_seed():
    specs = grid_specs("gender", ["a", "b", "c", "d"], [0, 1, 2])
    assert len(specs) == (16 + 4) * 3
    assert len({s.run_id for s in specs}) == len(specs)
    conds = [s.condition for s in specs if s.seed == 0 and s.target == "a"]
    assert conds.count("base") == 1 and conds.count("self") == 1 and conds.count("cross") == 3


def test_training_clips_per_condition(synthetic_subsets):
    fp = Fingerprints(synthetic_subsets["gender"], {"x": 1})
    m = fp.manifest
    base = training_clips(m, RunSpec("gender", "aa", "base", "aa", 0))
    self_ = training_clips(m, RunSpec("gender", "aa", "self", "aa", 0))
    cross = training_clips(m, RunSpec("gender", "aa", "cross", "bb", 0))
    assert set(base["role"]) == {"D"} and set(base["language"]) == {"aa"}
    assert len(self_) == len(cross) == 2 * len(base)
    assert set(cross["language"]) == {"aa", "bb"} and set(cross["role"]) == {"D"}


def test_run_hash_changes_with_what_determines_the_result(synthetic_subsets):
    spec = RunSpec("gender", "aa", "cross", "bb", 0)
    a = Fingerprints(synthetic_subsets["gender"], {"lr": 1e-3})
    b = Fingerprints(synthetic_subsets["gender"], {"lr": 1e-4})
    assert a(spec) == Fingerprints(synthetic_subsets["gender"], {"lr": 1e-3})(spec)
    assert a(spec) != b(spec)
    assert a(spec) != a(replace(spec, seed=1))
    assert a(spec) != a(replace(spec, donor="cc"))


def test_store_survives_a_torn_line(tmp_path):
    store = RunStore(tmp_path)
    store.append({"hash": "h1", "run_id": "r1", "score": 0.5})
    with open(store.path, "a") as fh:
        fh.write('{"hash": "h2", "run_id": "r2", "sco')  # killed mid-write
    store.append({"hash": "h3", "run_id": "r3", "score": 0.7})
    assert set(store.load()) == {"h1", "h3"}
    store.rewrite([store.load()["h3"]])
    assert [json.loads(x)["hash"] for x in store.path.read_text().splitlines()] == ["h3"]


# --- runs ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workers(synthetic_subsets):
    return {t: Worker(settings(t, synthetic_subsets)) for t in ("gender", "speaker")}


@pytest.mark.parametrize("task", ["gender", "speaker"])
def test_same_seed_same_score_different_seed_different(workers, task):
    w = workers[task]
    spec = RunSpec(task, "aa", "self", "aa", 0)
    first = w.run(spec, "h")
    # another run in between must not leak into the next one (the reset is complete)
    w.run(RunSpec(task, "bb", "cross", "cc", 5), "h")
    again = w.run(spec, "h")
    other = w.run(replace(spec, seed=1), "h")
    assert first["score"] == again["score"]
    assert first["loss_final"] == again["loss_final"]
    assert first["loss_final"] != other["loss_final"]
    assert 0.0 <= first["score"] <= 1.0
    if task == "speaker":
        assert 0.0 <= first["eer"] <= 1.0 and first["eval_trials"] > 0
    else:
        assert first["eval_clips"] == 8


def test_fresh_worker_gives_the_same_result(workers, synthetic_subsets):
    spec = RunSpec("gender", "cc", "cross", "aa", 3)
    fresh = Worker(settings("gender", synthetic_subsets))
    assert fresh.run(spec, "h")["score"] == workers["gender"].run(spec, "h")["score"]
    assert fresh.run(spec, "h")["loss_mean"] == workers["gender"].run(spec, "h")["loss_mean"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_runs(synthetic_subsets, precision):
    w = Worker(settings("gender", synthetic_subsets, train=replace(PARAMS, precision=precision,
                                                                   batch_size=2)))
    rec = w.run(RunSpec("gender", "aa", "base", "aa", 0), "h")
    assert np.isfinite(rec["loss_final"]) and 0.0 <= rec["score"] <= 1.0


def test_checkpoint_policy_self(tmp_path, synthetic_subsets):
    w = Worker(settings("gender", synthetic_subsets, checkpoints="self",
                        checkpoints_dir=str(tmp_path), first_seed=0))
    w.run(RunSpec("gender", "aa", "self", "aa", 0), "h")
    w.run(RunSpec("gender", "aa", "cross", "bb", 0), "h")
    w.run(RunSpec("gender", "aa", "base", "aa", 1), "h")
    assert [p.name for p in tmp_path.iterdir()] == ["gender__aa__self__0.safetensors"]


def test_model_dir_without_weights_says_how_to_get_them(tmp_path):
    from transformers import HubertConfig

    HubertConfig(**TINY_HUBERT).save_pretrained(tmp_path)  # config.json, no weights
    with pytest.raises(CltmError, match=r"could not load the encoder.*huggingface-cli download"):
        load_encoder(str(tmp_path), None)


def test_missing_local_model_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(CltmError, match=r"not a directory.*huggingface-cli download"):
        load_encoder(str(tmp_path / "mHuBERT-147"), None)


# --- the recipe: the head's initialisation and learning rate ----------------------------------

def test_zero_head_starts_every_run_alike_and_leaves_the_seed_stream_where_random_does():
    torch.manual_seed(3)
    random_head = tasks.new_head(16, 4, "random", torch.device("cpu"))
    after_random = torch.rand(1)
    torch.manual_seed(3)
    zero_head = tasks.new_head(16, 4, "zero", torch.device("cpu"))
    after_zero = torch.rand(1)
    assert random_head.weight.abs().sum() > 0
    assert not zero_head.weight.any() and not zero_head.bias.any()
    # dropout and LayerDrop draw the same masks under either init
    assert torch.equal(after_random, after_zero)
    with pytest.raises(ValueError, match=r"random \| zero"):
        tasks.new_head(16, 4, "xavier", torch.device("cpu"))


def test_head_lr_scale_moves_the_head_that_many_times_faster():
    """One AdamW step moves each parameter by about lr (the first step's update is lr·sign):
    the head's by lr·head_lr_scale, the encoder's by lr."""
    encoder, _ = load_encoder("unused", {**TINY_HUBERT, "layerdrop": 0.0,
                                         "mask_time_prob": 0.0})
    head = tasks.new_head(16, 2, "random", torch.device("cpu"))
    before_head = head.weight.detach().clone()
    before_enc = encoder.encoder.layers[0].feed_forward.output_dense.weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(8000, generator=gen)]
    params = replace(PARAMS, lr=1e-4, head_lr_scale=20.0, grad_clip=1e9)
    tasks.train(encoder, head, waves, torch.tensor([1]), params, seed=0,
                device=torch.device("cpu"), do_normalize=True)
    head_step = (head.weight - before_head).abs().max().item()
    enc_step = (encoder.encoder.layers[0].feed_forward.output_dense.weight
                - before_enc).abs().max().item()
    assert head_step == pytest.approx(20 * 1e-4, rel=0.01)
    assert enc_step == pytest.approx(1e-4, rel=0.01)


def test_gender_record_counts_predicted_classes(workers):
    record = workers["gender"].run(RunSpec("gender", "aa", "base", "aa", 0), "h")
    assert 1 <= record["pred_classes"] <= 2
    assert 0.0 <= record["pred_male_share"] <= 1.0
    if record["pred_classes"] == 1:
        assert record["pred_male_share"] in (0.0, 1.0)
