"""Time the pipeline's warm worker against the reference style, on whatever device is here.

Runs with no network and no Common Voice: it writes synthetic clips with Common-Voice-like
durations into the subsets stage's format, builds the mHuBERT-147 architecture (HuBERT-base:
12 layers, 768 hidden) with random weights, and runs base, self and cross runs of a few targets
through `cltm.train.worker.Worker`, once per precision. Then it runs the same runs the way the
public reference code did: a fresh process per run that loads the weights from disk, decodes and
resamples every 48 kHz clip file, trains at batch 1 in fp32 and evaluates clip by clip. Prints one
JSON line per measurement: seconds per run, model FLOP/s (counted by torch's FlopCounterMode on
the real clip lengths) and its share of the device's peak where known, peak GPU memory, and the
throughput ratio of the worker over the reference style.

    PYTHONPATH=src python benchmarks/bench_worker.py --task gender --precision fp32 bf16
    PYTHONPATH=src python benchmarks/bench_worker.py --task speaker --reference-runs 2

Without a GPU it says so and runs a tiny configuration (a 2-layer HuBERT of width 32, few short
clips) so that the code path is exercised on CPU. Needs torch, transformers, numpy, pandas and
scipy only (no soundfile, soxr, dvc, mlflow or ray): the reference style's clip files are 48 kHz
WAV (the standard library writes them) rather than MP3, which makes its decoding cheaper than
the reference's, never dearer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cltm.data.pack import PackedAudio, PackWriter, to_int16
from cltm.tasks.speaker import SPEAKER_LAYERS
from cltm.train.grid import RunSpec, training_clips
from cltm.train.loop import TrainParams
from cltm.train.model import resolve_device
from cltm.train.worker import Worker, WorkerSettings

# mHuBERT-147's encoder is HuBERT-base: transformers' HubertConfig defaults are that shape.
MHUBERT_147: dict = {"model_type": "hubert"}
#: The CPU fallback: small enough for a test, the same code path.
TINY: dict = {"model_type": "hubert", "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": [32] * 7,
              "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
#: Dense peak FLOP/s by device name fragment and precision (vendor data sheets; fp32 without
#: tensor cores). Unknown devices report no share of peak.
PEAK_FLOPS = {
    "H100": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
    "H200": {"fp32": 67e12, "bf16": 989e12, "fp16": 989e12},
    "A100": {"fp32": 19.5e12, "bf16": 312e12, "fp16": 312e12},
}
SAMPLE_RATE = 16_000
CLIP_RATE = 48_000  # Common Voice's MP3s


def clip_seconds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Common Voice clip lengths: about 5 s, most between 3 and 7 s."""
    return np.clip(rng.lognormal(np.log(4.8), 0.25, n), 2.0, 10.0)


def voice(rng: np.random.Generator, f0: float, seconds: float) -> np.ndarray:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
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
                samples = to_int16(voice(rng, f0, float(clip_seconds(rng, 1)[0])))
                writer.append(clip, samples)
                rows.append({"clip": clip, "language": lang, "speaker": f"{lang}-{spk}",
                             "gender": gender, "role": role,
                             "duration_s": samples.size / SAMPLE_RATE})
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


def peak_flops(device: str, precision: str) -> float | None:
    for key, peaks in PEAK_FLOPS.items():
        if key in device:
            return peaks[precision]
    return None


class FlopCount:
    """Model FLOPs of forward passes, counted by torch's FlopCounterMode on one model built
    once. Clip lengths are rounded to 0.1 s and each length is counted once: FLOPs grow with
    length (linearly, but for attention), so the rounding error is below 0.05 s a clip."""

    def __init__(self, config: dict, device: torch.device) -> None:
        from transformers import HubertConfig, HubertModel

        self.model = HubertModel(HubertConfig(**config)).to(device).eval()
        self.device = device
        self.per_length: dict[float, int] = {}

    def forward(self, seconds: list[float]) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        total = 0
        for x in seconds:
            length = round(x, 1)
            if length not in self.per_length:
                wave = torch.zeros(1, int(length * SAMPLE_RATE), device=self.device)
                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    self.model(wave)
                self.per_length[length] = counter.get_total_flops()
            total += self.per_length[length]
        return float(total)

    def run(self, manifest: pd.DataFrame, spec: RunSpec, epochs: int) -> float:
        """Training (forward + backward = 3 forwards) plus evaluation FLOPs of one run."""
        train = training_clips(manifest, spec)["duration_s"].tolist()
        ev = manifest[(manifest["language"] == spec.target) & (manifest["role"] == "eval")]
        return 3 * epochs * self.forward(train) + self.forward(ev["duration_s"].tolist())


def write_clip_files(subsets: Path, out: Path) -> None:
    """Every clip as a 48 kHz 16-bit WAV file: what the reference style decodes per step."""
    from scipy.signal import resample_poly

    out.mkdir(parents=True, exist_ok=True)
    audio = PackedAudio(subsets)
    for clip in pd.read_csv(subsets / "manifest.csv")["clip"]:
        x = resample_poly(audio[clip].astype(np.float32) / 32767.0, CLIP_RATE // SAMPLE_RATE, 1)
        with wave.open(str(out / clip.replace(".mp3", ".wav")), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(CLIP_RATE)
            f.writeframes(to_int16(x).tobytes())


def _decode(path: Path) -> torch.Tensor:
    from scipy.signal import resample_poly

    with wave.open(str(path), "rb") as f:
        x = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32) / 32767.0
    return torch.from_numpy(resample_poly(x, 1, CLIP_RATE // SAMPLE_RATE).astype(np.float32))


def reference_run(job: dict) -> dict:
    """One run the reference way, in this (fresh) process: weights from disk, every clip
    decoded and resampled when used, batch 1 fp32, evaluation one clip at a time."""
    from torch import nn
    from transformers import HubertModel

    from cltm.train import loop

    device = resolve_device(job["device"])
    spec = RunSpec(**job["spec"])
    manifest = pd.read_csv(Path(job["subsets"]) / "manifest.csv")
    clips = Path(job["clips"])
    start = time.perf_counter()
    loop.seed_everything(spec.seed)
    encoder = HubertModel.from_pretrained(job["model"]).to(device)
    rows = training_clips(manifest, spec)
    key = "gender" if spec.task == "gender" else "speaker"
    classes = sorted(rows[key].unique())
    head = nn.Linear(encoder.config.hidden_size, len(classes)).to(device)
    labels = [classes.index(v) for v in rows[key]]
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=job["lr"])
    encoder.train()
    for clip, label in zip(rows["clip"], labels):
        wave_ = _decode(clips / clip.replace(".mp3", ".wav"))
        features = loop.pooled(encoder, [wave_], device, True)
        loss = nn.functional.cross_entropy(head(features), torch.tensor([label], device=device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    encoder.eval()
    ev = manifest[(manifest["language"] == spec.target) & (manifest["role"] == "eval")]
    layers = 1 if spec.task == "gender" else SPEAKER_LAYERS
    with torch.no_grad():
        emb = torch.cat([loop.pooled(encoder, [_decode(clips / c.replace(".mp3", ".wav"))],
                                      device, True, layers).cpu() for c in ev["clip"]])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"run_id": spec.run_id, "in_process_s": time.perf_counter() - start,
            "eval_clips": len(ev), "embedding_rows": int(emb.shape[0])}


def measure_reference(specs: list[RunSpec], subsets: Path, clips: Path, model_dir: Path,
                      device: str, lr: float) -> tuple[float, list[dict]]:
    """Wall time of the reference style: a fresh Python process per run, start to exit."""
    out, start = [], time.perf_counter()
    for spec in specs:
        job = {"spec": spec.as_dict(), "subsets": str(subsets), "clips": str(clips),
               "model": str(model_dir), "device": device, "lr": lr}
        proc = subprocess.run([sys.executable, __file__, "--reference-job", json.dumps(job)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"reference run {spec.run_id} failed:\n{proc.stderr[-2000:]}")
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["gender", "speaker"], default="gender")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16", "fp16"])
    p.add_argument("--targets", type=int, default=2, help="target languages in the slice")
    p.add_argument("--n-train", type=int, default=None, help="clips in D (paper: 120 / 1000)")
    p.add_argument("--n-eval", type=int, default=None, help="evaluation clips per language")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--reference-runs", type=int, default=3,
                   help="runs of the slice also timed the reference way (0: none)")
    p.add_argument("--tiny", action="store_true", help="the CPU configuration, on any device")
    p.add_argument("--reference-job", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.reference_job:
        print(json.dumps(reference_run(json.loads(args.reference_job))), flush=True)
        return

    gpu = torch.cuda.is_available() and args.device != "cpu"
    tiny = args.tiny or not gpu
    if tiny and not args.tiny:
        print(json.dumps({"measure": "note", "message": "no GPU here: running the tiny "
                          "configuration on CPU (the targets are for one H100)"}), flush=True)
    config = TINY if tiny else MHUBERT_147
    device = "cpu" if tiny and not gpu else args.device
    n_train = args.n_train or (4 if tiny else 120 if args.task == "gender" else 1000)
    n_eval = args.n_eval or (8 if tiny else 200)
    per_speaker = 1 if args.task == "gender" else (2 if tiny else 50)
    precisions = ["fp32"] if tiny and not gpu else args.precision
    languages = [f"l{i}" for i in range(max(2, args.targets))]
    with tempfile.TemporaryDirectory() as tmp:
        subsets = Path(tmp) / args.task
        t0 = time.perf_counter()
        write_subsets(subsets, args.task, languages, n_train, n_eval, per_speaker)
        manifest = pd.read_csv(subsets / "manifest.csv")
        setup_s = time.perf_counter() - t0
        train = TrainParams(lr=1e-5, weight_decay=0.0, grad_clip=1.0, epochs=1,
                            batch_size=args.batch_size, precision="fp32", head_init="random",
                            head_lr_scale=1.0, encoder="finetune")
        base = WorkerSettings(task=args.task, task_module=f"cltm.tasks.{args.task}",
                              task_settings=None,
                              subsets_dir=str(subsets), name_or_path="unused",
                              random_init=config, init_seed=0, device=device, train=train,
                              threads=None, checkpoints="none", first_seed=0, probe_clips=0,
                              probe_seed=0, fuse=1)
        specs = []
        for target in languages[: args.targets]:
            donor = next(lang for lang in languages if lang != target)
            specs += [RunSpec(args.task, target, "base", target, 0),
                      RunSpec(args.task, target, "self", target, 0),
                      RunSpec(args.task, target, "cross", donor, 0)]
        counter = FlopCount(config, resolve_device(device))
        flops = sum(counter.run(manifest, s, train.epochs) for s in specs)
        worker_s_per_run = {}
        for precision in precisions:
            settings = replace(base, train=replace(base.train, precision=precision))
            t0 = time.perf_counter()
            worker = Worker(settings)
            load_s = time.perf_counter() - t0
            worker.run(specs[0], "warm-up")
            if gpu:
                torch.cuda.reset_peak_memory_stats()
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            records = [worker.run(s, "bench") for s in specs]
            if gpu:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            worker_s_per_run[precision] = wall / len(records)
            peak = peak_flops(records[0]["device"], precision)
            print(json.dumps({
                "measure": "worker_slice", "task": args.task, "precision": precision,
                "config": "tiny" if tiny else "mHuBERT-147", "device": records[0]["device"],
                "runs": len(records), "s_per_run": round(wall / len(records), 3),
                "train_clips_per_run": [r["train_clips"] for r in records],
                "eval_clips": n_eval, "batch_size": args.batch_size,
                "model_tflop_per_s": round(flops / wall / 1e12, 4),
                "share_of_peak": round(flops / wall / peak, 4) if peak else None,
                "scores": [round(r["score"], 4) for r in records],
                "finite_losses": all(np.isfinite(r["loss_final"]) for r in records),
                "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
                if gpu else None,
                "worker_load_s": round(load_s, 2), "data_setup_s": round(setup_s, 2),
            }), flush=True)
        if args.reference_runs > 0:
            from transformers import HubertConfig, HubertModel

            model_dir, clips = Path(tmp) / "model", Path(tmp) / "clips"
            torch.manual_seed(0)
            HubertModel(HubertConfig(**config)).save_pretrained(model_dir)
            write_clip_files(subsets, clips)
            chosen = specs[: args.reference_runs]
            wall, jobs = measure_reference(chosen, subsets, clips, model_dir, device, train.lr)
            ref_flops = sum(counter.run(manifest, s, train.epochs) for s in chosen)
            ref = wall / len(chosen)
            print(json.dumps({
                "measure": "reference_style", "task": args.task, "precision": "fp32",
                "config": "tiny" if tiny else "mHuBERT-147", "runs": len(chosen),
                "s_per_run": round(ref, 3),
                "in_process_s_per_run": round(np.mean([j["in_process_s"] for j in jobs]), 3),
                "model_tflop_per_s": round(ref_flops / wall / 1e12, 4),
            }), flush=True)
            for precision, s_run in worker_s_per_run.items():
                print(json.dumps({"measure": "throughput_ratio", "task": args.task,
                                  "worker_precision": precision,
                                  "worker_over_reference": round(ref / s_run, 2)}), flush=True)


if __name__ == "__main__":
    main()
