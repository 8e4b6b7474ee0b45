"""How much fusing K fine-tuning runs into one model buys (train/fused.py, issue #29).

On the mHuBERT-147 architecture (HuBERT-base: 12 layers, 768 hidden, conv_bias false,
feat_extract_norm group) with random weights and synthetic clips of about 5 s (uniform 4-6 s),
batch 1, it measures training clip-steps per second and seconds per run for
- `serial`: one run at a time on transformers' modules (loop.train's step: the pre-#29 path),
- `processes`: K such runs in K processes at once on the same device,
- `fused`: K runs as one fused model (FusedTrainer), K in --k where it fits,
with model FLOP/s (FlopCounterMode on one clip-step, forward + backward) and the share of the
device's peak (looked up from the device's own name: PCIe and SXM parts differ), peak memory,
the padding share, evaluation's seconds a run, and the GPU-hours both paper grids would take at
that pace (gender 240 steps a run, speaker about 2,000, 19,800 runs a task; training steps and
evaluation). Besides: aten operations, host reads and device-to-host copies in one fused step
at each K (`fused.profile_step`), the optimiser's bytes a parameter, the padding share that
fused steps would have under a Common Voice-like length distribution, and the serial baseline
under torch.compile where it works. One JSON line per figure.

    PYTHONPATH=src python benchmarks/fused.py --k 1 4 16 32 64 --precision fp16

Without a GPU it says so and runs a tiny configuration (a 2-layer HuBERT of width 32, 1 s clips,
K up to 4) through the same code, in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from cltm.train import fused, loop
from cltm.train.model import build_random_encoder

MHUBERT_147 = {"model_type": "hubert", "conv_bias": False,  # HubertConfig's defaults else
               "feat_extract_norm": "group"}
TINY = {"model_type": "hubert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4}
#: Dense tensor-core peaks by the device's name, most specific first (NVIDIA's data sheets).
PEAK_FLOPS = {"H100 PCIe": {"fp32": 51e12, "bf16": 756e12, "fp16": 756e12},
              "H100 NVL": {"fp32": 60e12, "bf16": 835e12, "fp16": 835e12},
              "H100": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
              "H200": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
              "A100": {"fp32": 19.5e12, "bf16": 312e12, "fp16": 312e12}}
#: Common Voice-like clip durations: log-normal around 4.7 s, within 1-10 s (the release's
#: recordings are capped at 10 s); the speaker task's clips are not all 4-6 s.
CV_MEDIAN_S, CV_SIGMA, CV_RANGE = 4.7, 0.35, (1.0, 10.0)
GRIDS = {"gender": 240, "speaker": 2000}
RUNS_PER_TASK = 19_800


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def runs(k: int, steps: int, seconds: float, seed0: int = 0) -> list[fused.RunData]:
    out = []
    for r in range(k):
        gen = torch.Generator().manual_seed(seed0 + r)
        lengths = (16_000 * (seconds + (torch.rand(steps, generator=gen) - 0.5) * 2 * seconds / 5)
                   ).long().tolist()
        waves = [torch.randn(n, generator=gen) for n in lengths]
        out.append(fused.RunData(waves, torch.randint(0, 2, (steps,), generator=gen),
                                 seed0 + r, 2))
    return out


def params(precision: str, steps: int) -> loop.TrainParams:
    return loop.TrainParams(lr=1e-5, weight_decay=0.0, grad_clip=1.0, epochs=1, batch_size=1,
                             precision=precision, head_init="random", head_lr_scale=1.0,
                             encoder="finetune")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def serial_pace(config: dict, device: torch.device, precision: str, steps: int,
                seconds: float, compile: bool = False) -> float:
    """Clip-steps per second of one run at a time on transformers' modules (under
    torch.compile, dynamic shapes, with `compile`)."""
    model = build_random_encoder(config, 0).to(device)
    if compile:
        model = torch.compile(model, dynamic=True)
    model.train()
    run = runs(1, steps + 1, seconds)[0]
    head = loop.new_head(model.config.hidden_size, 2, "random", device)
    p = params(precision, steps)
    loop.train(model, head, run.waves[:1], run.labels[:1], p, 0, device, True)  # warm up
    sync(device)
    start = time.perf_counter()
    loop.train(model, head, run.waves[1:], run.labels[1:], p, 0, device, True)
    sync(device)
    return steps / (time.perf_counter() - start)


def _process(config, device, precision, steps, seconds, barrier, out) -> None:
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    barrier.wait()  # all k processes start together
    out.put(serial_pace(config, torch.device(device), precision, steps, seconds))


def processes_pace(config: dict, device: torch.device, precision: str, steps: int,
                   seconds: float, k: int) -> float:
    """Summed clip-steps per second of k serial runs in k processes at once."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_process, args=(config, str(device), precision, steps, seconds,
                                                barrier, out)) for _ in range(k)]
    for p in procs:
        p.start()
    paces = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(paces)


def fused_pace(config: dict, device: torch.device, precision: str, steps: int, seconds: float,
               k: int, eval_clips: int) -> tuple[float, float, float, float, fused.StepProfile]:
    """(clip-steps per second, peak memory GiB, padding share, evaluation seconds a run, one
    step's profile) of k runs fused."""
    model = build_random_encoder(config, 0)
    enc = fused.FusedEncoder(model, k).to(device)
    trainer = fused.FusedTrainer(enc, runs(k, steps + 1, seconds), params(precision, steps),
                                 device, True)
    enc.train()
    trainer.step(0)  # warm up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for s in range(1, steps + 1):
        trainer.step(s)
    sync(device)
    pace = k * steps / (time.perf_counter() - start)
    trainer.flush()
    profile = fused.profile_step(trainer, trainer.prepare(steps))
    evals = runs(1, eval_clips, seconds, seed0=10_000)[0].waves
    batch = fused.eval_batch(enc.config, sum(p[0].numel() for p in enc.params.values()),
                             seconds * 1.2, precision, 1)
    sync(device)
    start = time.perf_counter()
    fused.embed(enc, [evals] * k, device, True, precision, batch=batch)
    sync(device)
    eval_s = (time.perf_counter() - start) / k
    return pace, peak_memory(device), trainer.stats.padding_share, eval_s, profile


def cv_padding_share(k: int, steps: int = 2000, seed: int = 0) -> float:
    """The share of a fused batch-1 step's samples that are padding when each of the K runs
    draws its clip from a Common Voice-like length distribution (no bucketing)."""
    gen = np.random.default_rng(seed)
    lengths = np.clip(gen.lognormal(np.log(CV_MEDIAN_S), CV_SIGMA, (steps, k)), *CV_RANGE)
    return float(1.0 - lengths.sum() / (k * lengths.max(axis=1)).sum())


def flops_per_clip_step(config: dict, device: torch.device, seconds: float) -> float:
    model = build_random_encoder(config, 0).to(device)
    model.train()
    head = loop.new_head(model.config.hidden_size, 2, "random", device)
    wave = torch.randn(int(16_000 * seconds))
    with FlopCounterMode(display=False) as counter:
        feats = loop.pooled(model, [wave], device, True)
        torch.nn.functional.cross_entropy(head(feats), torch.tensor([0], device=device)).backward()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    ap.add_argument("--processes", type=int, nargs="+", default=[4])
    ap.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--eval-clips", type=int, default=100,
                    help="evaluation clips a run (timed once a K, counted in seconds a run)")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config, ks, procs, seconds, precision = (MHUBERT_147, args.k, args.processes, args.seconds,
                                             args.precision)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if device.type == "cpu":
        torch.set_num_threads(1)
        torch.backends.mkldnn.enabled = False  # as the worker does on CPU
        config, ks, procs, seconds, precision = TINY, [k for k in ks if k <= 4], [2], 1.0, "fp32"
        emit(figure="note", device="cpu", text="no GPU: a tiny configuration (2 layers, width 32, "
             "1 s clips, fp32, 1 thread) through the same code; the GPU-hour projections below "
             "are of this tiny model on this CPU, not of mHuBERT-147")
    part = next((key for key in PEAK_FLOPS if key in name), None)
    peak = PEAK_FLOPS[part][precision] if part else None
    emit(figure="device_peak", device=name, part=part, precision=precision, flops=peak)
    emit(figure="optimizer", bytes_per_parameter=fused.ADAMW_BYTES_PER_PARAM,
         text="per-run norm (read grad) + torch._fused_adamw_ over each run's slices")
    for k in (1, 4, 16, 32, 64):
        emit(figure="padding_cv", k=k, padding_share=cv_padding_share(k),
             distribution=f"lognormal median {CV_MEDIAN_S} s, sigma {CV_SIGMA}, {CV_RANGE} s")
    flops = flops_per_clip_step(config, device, seconds)
    emit(figure="model_flops_per_clip_step", device=name, seconds=seconds, flops=flops)

    def report(mode: str, k: int, pace: float, memory: float | None = None,
               padding: float | None = None, eval_s: float = 0.0) -> None:
        row = {"figure": "pace", "mode": mode, "k": k, "device": name, "precision": precision,
               "clip_steps_per_s": pace, "s_per_run_gender": GRIDS["gender"] / pace * k,
               "eval_s_per_run": eval_s,
               "s_per_run_gender_with_eval": GRIDS["gender"] / pace * k + eval_s,
               "model_flops_per_s": pace * flops,
               "share_of_peak": pace * flops / peak if peak else None}
        if memory is not None:
            row["peak_memory_gib"] = memory
        if padding is not None:
            row["padding_share"] = padding
        emit(**row)
        for task, steps in GRIDS.items():
            emit(figure="grid_projection", mode=mode, k=k, task=task, steps_per_run=steps,
                 runs=RUNS_PER_TASK,
                 device_hours=RUNS_PER_TASK * (steps / pace * k + eval_s) / k / 3600)

    serial = serial_pace(config, device, precision, args.steps, seconds)
    report("serial", 1, serial, peak_memory(device))
    if device.type == "cuda":
        try:
            report("serial-compiled", 1,
                   serial_pace(config, device, precision, args.steps, seconds, compile=True))
        except Exception as exc:  # a compiler failure is a figure, not an abort
            emit(figure="pace", mode="serial-compiled", k=1, device=name, works=False,
                 error=f"{type(exc).__name__}: {str(exc)[:200]}")
    else:
        emit(figure="pace", mode="serial-compiled", k=1, device=name, works=False,
             error="not measured on CPU: every new clip length recompiles for minutes")
    for k in procs:
        report("processes", k, processes_pace(config, device, precision, args.steps, seconds, k))
    eval_clips = args.eval_clips if device.type == "cuda" else 8
    for k in ks:
        try:
            pace, memory, padding, eval_s, profile = fused_pace(
                config, device, precision, args.steps, seconds, k, eval_clips)
        except torch.OutOfMemoryError:
            emit(figure="pace", mode="fused", k=k, device=name, fits=False)
            break
        report("fused", k, pace, memory, padding, eval_s)
        emit(figure="step_profile", k=k, device=name, aten_ops=profile.ops,
             host_reads=profile.reads, copies_to_host=profile.copies_to_host)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
