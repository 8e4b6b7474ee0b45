"""How much fusing K fine-tuning runs into one model buys (train/fused.py, issue #29).

On the mHuBERT-147 architecture (HuBERT-base: 12 layers, 768 hidden, conv_bias false,
feat_extract_norm group) with random weights and synthetic clips of about 5 s (uniform 4-6 s),
batch 1, it measures training clip-steps per second and seconds per run for
- `serial`: one run at a time on transformers' modules (loop.train's step: the pre-#29 path),
- `processes`: K such runs in K processes at once on the same device,
- `fused`: K runs as one fused model (FusedTrainer), K in --k where it fits,
with model FLOP/s (FlopCounterMode on one clip-step, forward + backward) and the share of the
device's peak, peak memory, the padding share, and the GPU-hours both paper grids would take at
that pace (gender 240 steps a run, speaker about 2,000, 19,800 runs a task; training steps only,
evaluation not counted). One JSON line per figure.

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

import torch
from torch.utils.flop_counter import FlopCounterMode

from cltm.train import fused, loop
from cltm.train.model import build_random_encoder

MHUBERT_147 = {"model_type": "hubert", "conv_bias": False,  # HubertConfig's defaults else
               "feat_extract_norm": "group"}
TINY = {"model_type": "hubert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "conv_dim": [32] * 7, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4}
PEAK_FLOPS = {"H100": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
              "H200": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
              "A100": {"fp32": 19.5e12, "bf16": 312e12, "fp16": 312e12}}
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
                seconds: float) -> float:
    """Clip-steps per second of one run at a time on transformers' modules."""
    model = build_random_encoder(config, 0).to(device)
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
               k: int) -> tuple[float, float, float]:
    """(clip-steps per second, peak memory GiB, padding share) of k runs fused."""
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
    return pace, peak_memory(device), trainer.stats.padding_share


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
    peak = next((v[precision] for key, v in PEAK_FLOPS.items() if key in name), None)
    flops = flops_per_clip_step(config, device, seconds)
    emit(figure="model_flops_per_clip_step", device=name, seconds=seconds, flops=flops)

    def report(mode: str, k: int, pace: float, memory: float | None = None,
               padding: float | None = None) -> None:
        row = {"figure": "pace", "mode": mode, "k": k, "device": name, "precision": precision,
               "clip_steps_per_s": pace, "s_per_run_gender": GRIDS["gender"] / pace * k,
               "model_flops_per_s": pace * flops,
               "share_of_peak": pace * flops / peak if peak else None}
        if memory is not None:
            row["peak_memory_gib"] = memory
        if padding is not None:
            row["padding_share"] = padding
        emit(**row)
        for task, steps in GRIDS.items():
            emit(figure="grid_projection", mode=mode, k=k, task=task, steps_per_run=steps,
                 runs=RUNS_PER_TASK, device_hours=RUNS_PER_TASK * steps / pace / 3600)

    serial = serial_pace(config, device, precision, args.steps, seconds)
    report("serial", 1, serial, peak_memory(device))
    for k in procs:
        report("processes", k, processes_pace(config, device, precision, args.steps, seconds, k))
    for k in ks:
        try:
            pace, memory, padding = fused_pace(config, device, precision, args.steps, seconds, k)
        except torch.OutOfMemoryError:
            emit(figure="pace", mode="fused", k=k, device=name, fits=False)
            break
        report("fused", k, pace, memory, padding)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
