"""K runs fused into one model (train/fused.py): equal to transformers, to K = 1, per run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from cltm.train import fused, loop
from cltm.train.fused import FusedEncoder, FusedTrainer, RunData, plain_parameters
from cltm.train.model import load_encoder
from tests.conftest import TINY_HUBERT

torch.set_num_threads(1)
CPU = torch.device("cpu")
NO_NOISE = {"mask_time_prob": 0.0, "layerdrop": 0.0, "hidden_dropout": 0.0,
            "attention_dropout": 0.0, "activation_dropout": 0.0, "feat_proj_dropout": 0.0}
# Noise on, strong enough that every kind fires in a few steps of short clips.
NOISE = {"mask_time_prob": 0.3, "mask_time_length": 2, "mask_time_min_masks": 1,
         "layerdrop": 0.4, "hidden_dropout": 0.1, "attention_dropout": 0.1,
         "activation_dropout": 0.1, "feat_proj_dropout": 0.1}
FRONT_ENDS = {
    "hubert-group": {"model_type": "hubert"},
    "hubert-layer-stable": {"model_type": "hubert", "feat_extract_norm": "layer",
                            "do_stable_layer_norm": True},
    "wav2vec2-group": {"model_type": "wav2vec2"},
    "wav2vec2-layer-stable": {"model_type": "wav2vec2", "feat_extract_norm": "layer",
                              "do_stable_layer_norm": True},
    "wav2vec2-layer": {"model_type": "wav2vec2", "feat_extract_norm": "layer"},
}
PARAMS = loop.TrainParams(lr=1e-3, weight_decay=0.01, grad_clip=1.0, epochs=1, batch_size=1,
                           precision="fp32", head_init="random", head_lr_scale=3.0,
                           encoder="finetune")
TOL = {"atol": 1e-5, "rtol": 1e-5}
# Weights after AdamW steps: a gradient element near AdamW's eps (1e-8) divides by
# sqrt(v) + eps of its own size, so a rounding difference of 1e-9 there (a batched matmul
# over K runs against one) moves that weight by up to a few percent of lr (1e-3).
WEIGHTS_TOL = {"atol": 1e-4, "rtol": 1e-5}


def _encoder(front: str, **extra):
    model, _ = load_encoder("unused", {**TINY_HUBERT, **FRONT_ENDS[front], **extra}, init_seed=0)
    return model


def _waves(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen) for n in lengths]


def _run(seed: int, n_clips: int, classes: int, lengths_seed: int) -> RunData:
    gen = torch.Generator().manual_seed(lengths_seed)
    lengths = (4000 + torch.randint(0, 6000, (n_clips,), generator=gen)).tolist()
    labels = torch.randint(0, classes, (n_clips,), generator=gen)
    return RunData(_waves(lengths, lengths_seed), labels, seed, classes)


# --- 1. K = 1 against transformers --------------------------------------------------------------

@pytest.mark.parametrize("front", list(FRONT_ENDS))
def test_k1_forward_and_every_gradient_equal_transformers(front):
    model = _encoder(front, **NO_NOISE)
    model.train()
    enc = FusedEncoder(copy.deepcopy(model), 1)
    enc.train()
    w = _waves([9000])[0][None]
    out = model(w, output_hidden_states=True)
    last, states, _, _ = enc(w[None], torch.tensor([[9000]]), None, hidden_states=True)
    torch.testing.assert_close(last[0], out.last_hidden_state, **TOL)
    assert len(states) == len(out.hidden_states)
    for a, b in zip(states, out.hidden_states):
        torch.testing.assert_close(a[0], b, **TOL)
    probe = torch.randn(out.last_hidden_state.shape, generator=torch.Generator().manual_seed(1))
    (out.last_hidden_state * probe).mean().backward()
    (last[0] * probe).mean().backward()
    plain, mine = plain_parameters(model), enc.params
    assert set(plain) == set(mine)
    for name, p in plain.items():
        assert p.grad is not None, name
        torch.testing.assert_close(mine[name].grad[0], p.grad, **TOL, msg=name)


@pytest.mark.parametrize("front", ["hubert-group", "wav2vec2-layer-stable"])
def test_k1_training_equals_torch_adamw_and_clipping(front):
    """The fused trainer at K = 1, noise off, against the plain model trained with
    torch.optim.AdamW (two groups, the head's lr scaled) and clip_grad_norm_."""
    model = _encoder(front, **NO_NOISE)
    run = _run(seed=5, n_clips=4, classes=3, lengths_seed=2)
    trainer = FusedTrainer(FusedEncoder(copy.deepcopy(model), 1), [run], PARAMS, CPU, True)
    head = trainer.enc.head(0)
    losses = trainer.train()[0]
    opt = torch.optim.AdamW([{"params": list(model.parameters())},
                             {"params": list(head.parameters()), "lr": PARAMS.lr * 3.0}],
                            lr=PARAMS.lr, weight_decay=PARAMS.weight_decay)
    model.train()
    plain_losses = []
    for idx in fused.run_orders([run], 1, 1)[0]:
        feats = loop.pooled(model, [run.waves[i] for i in idx], CPU, True)
        loss = nn.functional.cross_entropy(head(feats), run.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*model.parameters(), *head.parameters()], 1.0)
        opt.step()
        plain_losses.append(float(loss.detach()))
    assert losses == pytest.approx(plain_losses, abs=1e-5)
    state = trainer.enc.plain_state(0)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(state[name], p, **TOL, msg=name)
    mine = trainer.enc.head(0)
    torch.testing.assert_close(mine.weight, head.weight, **TOL)


# --- 2. fused K = 3 equals three runs alone, whatever the partners ------------------------------

def _train(model, runs, params=PARAMS):
    trainer = FusedTrainer(FusedEncoder(copy.deepcopy(model), len(runs)), runs, params, CPU, True)
    losses = trainer.train()
    evals = _waves([5000, 9000, 7000], seed=9)
    emb = fused.embed(trainer.enc, [evals] * len(runs), CPU, True, "fp32", last_layers=2,
                      batch=2)
    return trainer, losses, emb


@pytest.mark.parametrize("front", ["hubert-group", "wav2vec2-layer-stable"])
def test_fused_runs_equal_runs_alone_with_dropout_layerdrop_and_specaugment(front):
    model = _encoder(front, **NOISE)
    runs = [_run(seed=1, n_clips=3, classes=2, lengths_seed=1),
            _run(seed=2, n_clips=5, classes=4, lengths_seed=2),  # more steps, more classes
            _run(seed=3, n_clips=3, classes=2, lengths_seed=3)]
    fused_trainer, fused_losses, fused_emb = _train(model, runs)
    assert fused_trainer.stats.padding_share > 0  # the clips really differ in length
    noisy = 0
    for k, run in enumerate(runs):
        alone, losses, emb = _train(model, [run])
        assert fused_losses[k] == pytest.approx(losses[0], abs=1e-5)
        assert len(losses[0]) == len(run.waves)
        for name, p in alone.enc.plain_state(0).items():
            torch.testing.assert_close(fused_trainer.enc.plain_state(k)[name], p, **WEIGHTS_TOL)
        torch.testing.assert_close(fused_emb[k], emb[0], **TOL)
        # the noise is on: the same run without it trains differently
        _, quiet_losses, _ = _train(_encoder(front, **NO_NOISE), [run])
        noisy += quiet_losses[0] != pytest.approx(losses[0], abs=1e-4)
    assert noisy == 3
    # a run's result does not depend on its partners
    other = [runs[1], _run(seed=7, n_clips=2, classes=3, lengths_seed=7)]
    _, other_losses, other_emb = _train(model, other)
    assert other_losses[0] == pytest.approx(fused_losses[1], abs=1e-5)
    torch.testing.assert_close(other_emb[0], fused_emb[1], **TOL)


def test_each_kind_of_noise_draws_from_the_runs_own_stream():
    cfg = _encoder("hubert-group", **NOISE).config
    frames = torch.tensor([[30, 20], [25, 1]])
    a = fused.Noise([fused.RunStreams(1), fused.RunStreams(2)], [2, 1], frames, cfg)
    b = fused.Noise([fused.RunStreams(2)], [1], frames[1:, :1], cfg)
    torch.testing.assert_close(a.layer_keep[1], b.layer_keep[0])
    sa, sb = a.spec_mask(30), b.spec_mask(25)
    assert torch.equal(sa[1, 0, :25], sb[0, 0]) and not sa[1, 1].any() and not sa[1, 0, 25:].any()
    assert sa[0, 0].any() and not sa[0, 0, 30:].any() and not sa[0, 1, 20:].any()
    x = torch.ones(2, 2, 30, 4)
    da, db = a.dropout(x, 0.5, "s"), b.dropout(torch.ones(1, 1, 25, 4), 0.5, "s")
    torch.testing.assert_close(da[1, :1, :25], db[0])
    assert set(da[0].unique().tolist()) == {0.0, 2.0}


def test_counter_based_dropout_keeps_1_minus_p_independently_across_runs_sites_and_steps():
    """The hash's masks behave as independent draws: the keep rate is 1 - p, and two runs, two
    sites, two steps or two neighbouring elements agree as often as independent masks do."""
    cfg = _encoder("hubert-group", **NOISE).config
    frames = torch.tensor([[200] * 4] * 2)

    def noise(step):
        return fused.Noise([fused.RunStreams(1), fused.RunStreams(2)], [4, 4], frames, cfg, step)

    x = torch.ones(2, 4, 200, 256)
    p, chance = 0.1, 0.9**2 + 0.1**2
    a, b = noise(5).dropout(x, p, "0.activation") > 0, noise(5).dropout(x, p, "hidden") > 0
    c = noise(6).dropout(x, p, "0.activation") > 0
    assert a.float().mean().item() == pytest.approx(1 - p, abs=0.003)
    for u, v in ((a[0], a[1]), (a, b), (a, c), (a[..., 1:], a[..., :-1]),
                 (a[:, :, 1:], a[:, :, :-1]), (a[:, 1:], a[:, :-1])):
        assert (u == v).float().mean().item() == pytest.approx(chance, abs=0.005)
    assert torch.equal(noise(5).dropout(x, p, "0.activation") > 0, a)  # a function of its key


def test_span_mask_draws_transformers_numbers_of_spans():
    """Per clip the number of spans is transformers' (int(p*n/L + eps), at least min_masks,
    capped), each of length L inside the clip's valid frames."""
    gen = torch.Generator().manual_seed(0)
    counts = []
    for _ in range(200):
        m = fused.span_mask([200, 50], 200, 0.05, 10, 2, gen)
        assert not m[1, 50:].any()
        counts.append(m[0].sum())
        assert 2 * 10 >= m[1].sum() >= 10
    # expected masked share of a long clip: about p (overlaps make it a little less)
    assert 0.8 * 0.05 * 200 < sum(counts) / len(counts) <= 0.05 * 200 + 10


# --- 3. padding-exact ---------------------------------------------------------------------------

@pytest.mark.parametrize("front", ["hubert-group", "wav2vec2-group", "wav2vec2-layer-stable"])
def test_a_padded_fused_step_gives_each_run_what_its_clip_gets_alone(front):
    model = _encoder(front, **NOISE)
    streams = lambda seeds: [fused.RunStreams(s) for s in seeds]  # noqa: E731
    lanes = [_waves([9000, 4000], 1), _waves([5200], 2), _waves([7000, 6100], 3)]
    enc = FusedEncoder(copy.deepcopy(model), 3)
    enc.train()
    waves, lengths, clips = fused.pad_lanes(lanes, fused.min_samples(model.config), CPU, True)
    frames = enc.frames_of(lengths)
    last, _, frames, _ = enc(waves, lengths, fused.Noise(streams([1, 2, 3]), clips, frames,
                                                         model.config))
    pooled = fused.pool(last, frames)
    for k, lane in enumerate(lanes):
        one = FusedEncoder(copy.deepcopy(model), 1)
        one.train()
        w, n, c = fused.pad_lanes([lane], fused.min_samples(model.config), CPU, True)
        f = one.frames_of(n)
        l1, _, f1, _ = one(w, n, fused.Noise(streams([k + 1]), c, f, model.config))
        torch.testing.assert_close(pooled[k, : len(lane)], fused.pool(l1, f1)[0], **TOL)


# --- per-run clipping and per-run fp16 skips ----------------------------------------------------

def _stepped(model, runs, inject=None, scales=False):
    trainer = FusedTrainer(FusedEncoder(copy.deepcopy(model), len(runs)), runs, PARAMS, CPU,
                           True)
    if scales:
        trainer.scales = fused.LossScales(len(runs), True, CPU)
    trainer.enc.train()
    losses, active, used = trainer.forward_loss(0)
    trainer.backward(losses)
    if inject is not None:
        for g in trainer.grads():
            g[1] = inject(g[1])
    norms = fused.per_run_sq_norms(trainer.grads()).sqrt()
    overflow = trainer.update(active, used)
    return trainer, norms, overflow


def test_a_huge_gradient_is_clipped_in_its_run_only():
    model = _encoder("hubert-group", **NO_NOISE)
    runs = [_run(s, 2, 2, s) for s in (1, 2, 3)]
    ref, _, _ = _stepped(model, runs)
    big, norms, _ = _stepped(model, runs, inject=lambda g: g * 1e6)
    assert norms[1] > 1e3
    grads = big.grads()
    assert fused.per_run_sq_norms(grads)[1].sqrt() == pytest.approx(1.0, rel=1e-4)  # clipped
    for k in (0, 2):
        for name, p in ref.enc.params.items():
            torch.testing.assert_close(big.enc.params[name][k], p[k], **TOL, msg=name)
    moved = [(big.enc.params[n][1] - ref.enc.params[n][1]).abs().max() for n in ref.enc.params]
    assert max(moved) > 0  # run 1 did step, with its clipped gradient


def test_an_fp16_overflow_skips_that_runs_step_only():
    model = _encoder("hubert-group", **NO_NOISE)
    runs = [_run(s, 2, 2, s) for s in (1, 2, 3)]
    start = FusedEncoder(copy.deepcopy(model), 3)
    ref, _, ok = _stepped(model, runs, scales=True)
    bad, _, overflow = _stepped(model, runs, inject=lambda g: g * float("inf"), scales=True)
    assert not ok.any() and overflow.tolist() == [False, True, False]
    assert bad.scales.scale.tolist() == [2.0**16, 2.0**15, 2.0**16]
    for name, p in ref.enc.params.items():
        if name.startswith("head."):
            continue
        torch.testing.assert_close(bad.enc.params[name][1], start.params[name][1], msg=name)
        for k in (0, 2):
            torch.testing.assert_close(bad.enc.params[name][k], p[k], **TOL, msg=name)
    assert bad.opt.steps["encoder.layer_norm.weight"].tolist() == [1.0, 0.0, 1.0]


def test_loss_scale_grows_after_the_interval_per_run():
    s = fused.LossScales(2, True, CPU)
    s.tracker = torch.tensor([fused.SCALE_INTERVAL - 1, 5])
    s.update(torch.tensor([True, True]), torch.tensor([False, False]))
    assert s.scale.tolist() == [2.0**17, 2.0**16] and s.tracker.tolist() == [0, 6]


def test_fused_adamw_equals_torch_adamw_per_run_with_skips_overflow_and_clipping():
    """Three runs of two tensors through unscale, clip and the multi-tensor AdamW, against
    three plain torch.optim.AdamW runs with GradScaler's skip and clip_grad_norm_: run 1 skips
    tensor `b` every other step (LayerDrop), run 2 overflows at step 2, and every run's
    gradient norm is above the clip."""
    gen = torch.Generator().manual_seed(0)
    K = 3
    start = {"a": torch.randn(K, 4, 5, generator=gen), "b": torch.randn(K, 6, generator=gen)}
    params = {n: nn.Parameter(w.clone()) for n, w in start.items()}
    lr = {"a": 0.01, "b": 0.03}
    opt = fused.FusedAdamW(params, lr, weight_decay=0.1)
    scales = fused.LossScales(K, True, CPU)
    plain = [{n: nn.Parameter(w[k].clone()) for n, w in start.items()} for k in range(K)]
    popt = [torch.optim.AdamW([{"params": [q["a"]], "lr": 0.01},
                               {"params": [q["b"]], "lr": 0.03}], weight_decay=0.1)
            for q in plain]
    for step in range(5):
        true = {n: 5 * torch.randn(w.shape, generator=gen) for n, w in start.items()}
        scale = scales.scale.clone()
        for n, p in params.items():  # as backward of the scaled loss leaves them
            p.grad = true[n] * scale.reshape(-1, *([1] * (p.dim() - 1)))
        used = {"b": [True, step % 2 == 0, True]}
        if not used["b"][1]:
            params["b"].grad[1] = 0.0  # a skipped layer's slice has no gradient in the model
        if step == 2:
            params["a"].grad[2, 0, 0] = float("inf")
        overflow, norms = fused.unscale_clip_step(opt, scales, [True] * K, used, 1.0)
        assert overflow.tolist() == [False, False, step == 2]
        assert (norms[:2] > 1.0).all()  # clipping is on
        for k in range(K):
            if step == 2 and k == 2:
                continue  # GradScaler skips optimizer.step()
            plain[k]["a"].grad = true["a"][k].clone()
            plain[k]["b"].grad = true["b"][k].clone() if used["b"][k] else None
            torch.nn.utils.clip_grad_norm_([q for q in plain[k].values() if q.grad is not None],
                                           1.0)
            popt[k].step()
    assert scales.scale.tolist() == [2.0**16, 2.0**16, 2.0**15]
    assert opt.steps["a"].tolist() == [5, 5, 4] and opt.steps["b"].tolist() == [5, 3, 4]
    for k in range(K):
        for n in params:
            torch.testing.assert_close(params[n][k], plain[k][n], **TOL, msg=f"{n}[{k}]")


# --- a step that never waits on the device, launches independent of K --------------------------

def _trainer(k, **noise):
    model = _encoder("hubert-group", **noise)
    runs = [_run(seed=s, n_clips=3, classes=2, lengths_seed=s) for s in range(k)]
    trainer = FusedTrainer(FusedEncoder(copy.deepcopy(model), k), runs, PARAMS, CPU, True)
    trainer.enc.train()
    return trainer


@pytest.mark.parametrize("precision", ["fp32", "fp16-scales"])
def test_a_fused_step_reads_nothing_back_from_the_device(monkeypatch, precision):
    """The CPU proxy of "no host-device sync in a step": nothing in the step's device part
    reads a tensor's value into Python (item / bool / int / float reach
    aten::_local_scalar_dense, which the profiler sees; tolist, numpy and cpu, which on CUDA
    would copy to the host, are counted by hand). It proves that the code asks the device
    for no value mid-step; it cannot see a blocking host-to-device copy (on CPU there is none),
    which is why every such copy in the step is non_blocking."""
    trainer = _trainer(3, **NOISE)
    if precision == "fp16-scales":  # the loss scales and their skip decisions on the device
        trainer.scales = fused.LossScales(3, True, CPU)
    trainer.step(0)
    inputs = trainer.prepare(1)
    calls = []
    for name in ("tolist", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **kw):
            calls.append(_name)
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    profile = fused.profile_step(trainer, inputs)
    assert profile.reads == 0 and calls == []
    monkeypatch.undo()
    assert len(trainer.losses[0]) == 0 and len(trainer._pending) == 2  # not read back yet
    trainer.flush()
    assert [len(x) for x in trainer.losses] == [2, 2, 2]


def test_a_fused_step_launches_as_many_operations_at_k_1_4_and_16():
    """Launches per step do not grow with K (LayerDrop off: at K = 1 a layer its draw skips
    is not computed at all, which is a saving, not a launch). What grows is one optimiser
    launch per run and learning-rate group."""
    counts = {}
    for k in (1, 4, 16):
        trainer = _trainer(k, **{**NOISE, "layerdrop": 0.0})
        counts[k] = fused.profile_step(trainer, trainer.prepare(0)).ops
    assert counts[16] <= 1.05 * counts[1], counts
    assert counts[4] <= 1.02 * counts[1], counts


def test_unsupported_encoders_are_named():
    cfg = _encoder("hubert-group").config
    assert fused.unsupported(cfg) is None
    wavlm, _ = load_encoder("unused", {**TINY_HUBERT, "model_type": "wavlm"}, init_seed=0)
    assert "wavlm" in fused.unsupported(wavlm.config)
    with pytest.raises(ValueError, match="wavlm"):
        FusedEncoder(wavlm, 2)
    assert "feature masking" in fused.unsupported(replace_config(cfg, mask_feature_prob=0.1))


def replace_config(cfg, **kw):
    c = copy.deepcopy(cfg)
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_auto_k_is_one_on_cpu_and_the_estimate_grows_with_the_clip():
    cfg = _encoder("hubert-group").config
    assert fused.auto_k(cfg, 10_000, CPU, "fp32") == 1
    assert fused.bytes_per_run(cfg, 10_000, 10.0, "fp32") > fused.bytes_per_run(cfg, 10_000, 2.0,
                                                                            "fp32")
    half, full = (fused.memory_terms(cfg, 10_000, 5.0, p)["train_activations"]
                  for p in ("fp16", "fp32"))
    assert half < full


def test_the_memory_estimate_has_every_term():
    from transformers import HubertConfig

    cfg, n = HubertConfig(), 94_000_000  # HuBERT-base / mHuBERT-147
    t32 = fused.memory_terms(cfg, n, 5.0, "fp32")
    t16 = fused.memory_terms(cfg, n, 5.0, "fp16")
    assert t32["state"] == 16 * n and t32["autocast_copies"] == 0
    assert t16["autocast_copies"] == 2 * n  # autocast's fp16 copy of every weight
    # padding to the longest clip of the K: the activations of a step follow the longest clip
    longer = fused.memory_terms(cfg, n, 10.0, "fp32")["train_activations"]
    assert longer > 1.9 * t32["train_activations"]
    assert fused.memory_terms(cfg, n, 5.0, "fp32", batch=4)["train_activations"] == pytest.approx(
        4 * t32["train_activations"], rel=1e-6)
    # evaluation, 16 clips a run with the GroupNorm's fp32 temporaries: about 48 GB at K = 26
    # and 5 s clips by the count
    assert 1.5e9 < t32["eval_activations"] < 3e9
    assert fused.memory_terms(cfg, n, 5.0, "fp32", eval_clips=8)["eval_activations"] == (
        t32["eval_activations"] // 2)
    per = fused.bytes_per_run(cfg, n, 5.0, "fp16")
    assert per >= 1.5 * (t16["state"] + t16["autocast_copies"] + t16["eval_activations"])
    assert fused.k_that_fits(80 * 10**9, cfg, n, "fp16", 5.0) == int(0.9 * 80 * 10**9 // per)
    with pytest.raises(MemoryError, match="evaluation of 16 clips"):
        fused.k_that_fits(10**9, cfg, n, "fp16", 5.0)


def _peak_bytes(fn) -> int:
    """The peak of memory allocated on the CPU while `fn` runs, from torch's memory profiler
    (each allocation and free, in order)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("k", [1, 4])
def test_the_memory_estimate_bounds_the_measured_peak_of_training_and_evaluation(k):
    model = _encoder("hubert-group", **NOISE)
    n_params = sum(p.numel() for p in model.parameters())
    runs = [_run(seed=s, n_clips=3, classes=2, lengths_seed=s) for s in range(k)]
    longest = max(w.numel() for r in runs for w in r.waves) / 16_000
    evals = _waves([9000] * 16, seed=4)

    def train_and_evaluate():
        trainer = FusedTrainer(FusedEncoder(copy.deepcopy(model), k), runs, PARAMS, CPU, True)
        trainer.train()
        fused.embed(trainer.enc, [evals] * k, CPU, True, "fp32", batch=16)

    peak = _peak_bytes(train_and_evaluate)
    assert peak > 0
    estimate = k * fused.bytes_per_run(model.config, n_params, max(longest, 9000 / 16_000),
                                       "fp32", PARAMS.batch_size, 16)
    assert peak < estimate, (peak, estimate)


# --- the grid at another K ----------------------------------------------------------------------

RESULT_KEYS = ("score", "loss_final", "loss_mean", "steps", "train_clips", "eval_clips",
               "pred_classes", "pred_male_share")


def _grid_at(root, monkeypatch, fuse):
    import yaml

    from cltm.config import load_config
    from cltm.train.runner import run_grid

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["fuse"] = fuse
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    from tests.test_grid import GENDER, _records

    run_grid(load_config("params.yaml"), "gender", *GENDER, Path("models/gender"),
             progress=False)

    return _records(root)


def test_the_grid_fused_by_4_equals_the_grid_run_by_run_and_resumes_at_another_k(
        tmp_path, monkeypatch):
    from tests.test_grid import make_project

    one = _grid_at(make_project(_mkdir(tmp_path / "one"), seeds=(0,)), monkeypatch, 1)
    four_root = make_project(_mkdir(tmp_path / "four"), seeds=(0,))
    four = _grid_at(four_root, monkeypatch, 4)
    assert set(one) == set(four) and len(one) == 12
    assert {r["fused"] for r in one.values()} == {1}
    assert max(r["fused"] for r in four.values()) == 4
    for run_id, rec in one.items():
        assert four[run_id]["hash"] == rec["hash"]  # K is not in the run hash
        for key in RESULT_KEYS:
            assert four[run_id][key] == pytest.approx(rec[key], abs=1e-5), (run_id, key)
    # interrupted after 5 runs, resumed at K = 3: the 5 stored runs are kept as they are
    store = four_root / "metrics" / "runs" / "gender" / "runs.jsonl"
    kept = store.read_text().splitlines()[:5]
    store.write_text("\n".join(kept) + "\n")
    resumed = _grid_at(four_root, monkeypatch, 3)
    import json

    for line in kept:
        rec = json.loads(line)
        assert resumed[rec["run_id"]] == rec  # reused, not rerun (wall_s and all)
    rerun = set(resumed) - {json.loads(x)["run_id"] for x in kept}
    assert len(rerun) == 7 and max(resumed[r]["fused"] for r in rerun) == 3
    for run_id in rerun:
        for key in RESULT_KEYS:
            assert resumed[run_id][key] == pytest.approx(one[run_id][key], abs=1e-5)


def _mkdir(path):
    path.mkdir()
    return path


def test_fuse_groups_keep_seeds_apart_and_equal_step_counts_together():
    from cltm.train.grid import grid_specs
    from cltm.train.worker import fuse_groups

    specs = grid_specs("gender", ["aa", "bb", "cc"], [0, 1])
    jobs = [(s, "h") for s in specs]
    steps = [120 if s.condition == "base" else 240 for s in specs]
    groups = fuse_groups(jobs, 4, steps)
    assert sorted(i for g in groups for i in g) == list(range(len(jobs)))
    for g in groups:
        assert len(g) <= 4
        assert len({specs[i].seed for i in g}) == 1 and len({steps[i] for i in g}) == 1
    assert sum(len(g) < 4 for g in groups) <= 4  # one partial group per (seed, step count)
    seeds = [specs[g[0]].seed for g in groups]
    assert seeds == sorted(seeds)  # whole seeds first, as the grid runs
