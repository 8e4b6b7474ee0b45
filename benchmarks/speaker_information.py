"""How much speaker information an encoder's pooled features carry, before any fine-tuning.

Scores the speaker task's own verification trials (`data/subsets/speaker/trials.csv`) with the
cosine of (a) each hidden layer of an encoder, mean-pooled over frames, and of the pipeline's
embedding (mean of the last 4 layers), and (b) a feature-free reference: the mean and standard
deviation over time of 40 log-mel energies. Both also centred (the language's mean evaluation
feature removed before the cosine). If the reference separates the speakers and the
encoder does not, the encoder discards the information that speaker fine-tuning would need.

    PYTHONPATH=src python benchmarks/speaker_information.py models/pretrained [more models]

Prints one JSON line per model and language (ROC AUC per feature). Use `random:DIR` to score a
randomly initialised encoder of DIR's architecture.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from cltm.data.pack import PackedAudio
from cltm.train.model import forward, load_encoder, masked_mean, normalise, pad_batch

SAMPLE_RATE = 16_000


def mel_filterbank(n_mels: int = 40, n_fft: int = 400) -> torch.Tensor:
    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + hz / 700)

    freqs = np.linspace(0, SAMPLE_RATE / 2, n_fft // 2 + 1)
    edges = 700 * (10 ** (np.linspace(0, mel(np.array(SAMPLE_RATE / 2)), n_mels + 2) / 2595) - 1)
    bank = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i : i + 3]
        bank[i] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return torch.from_numpy(bank).float()


def log_mel_statistics(x: np.ndarray, bank: torch.Tensor) -> torch.Tensor:
    """Mean and SD over time of log-mel energies (25 ms windows, 10 ms hop)."""
    wave = torch.from_numpy(x.astype(np.float32) / 32767.0)
    spectrum = torch.stft(wave, 400, 160, window=torch.hann_window(400), return_complex=True)
    power = spectrum.abs() ** 2
    logmel = torch.log(bank @ power + 1e-10)
    return torch.cat([logmel.mean(1), logmel.std(1)])


def encoder_features(model: str, clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
    if model.startswith("random:"):
        config = json.loads((Path(model[7:]) / "config.json").read_text())
        meta = ("architectures", "transformers_version", "torch_dtype", "dtype")
        keep = {k: v for k, v in config.items() if k not in meta}
        encoder, do_normalize = load_encoder("", keep, init_seed=0)
    else:
        encoder, do_normalize = load_encoder(model, None)
    encoder.eval()
    per_layer: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for x in clips:
            batch, lengths = pad_batch([torch.from_numpy(x.astype(np.float32) / 32767.0)],
                                       torch.device("cpu"))
            if do_normalize:
                batch = normalise(batch, lengths)
            out, mask = forward(encoder, batch, lengths, hidden_states=True)
            per_layer.append([masked_mean(h.float(), mask)[0] for h in out.hidden_states])
    layers = len(per_layer[0])
    feats = {f"layer{k}": torch.stack([c[k] for c in per_layer]) for k in range(layers)}
    feats["pipeline_embedding"] = torch.stack([torch.stack(c[-4:]).mean(0) for c in per_layer])
    return feats


def trial_auc(features: torch.Tensor, index: dict[str, int], trials: pd.DataFrame,
              centred: bool = False) -> float:
    """ROC AUC of the cosine (the pipeline's score); `centred` subtracts the mean feature of the
    language's evaluation clips first, so a component common to every clip stops dominating."""
    if centred:
        features = features - features.mean(0)
    e = torch.nn.functional.normalize(features, dim=-1)
    a = torch.tensor([index[c] for c in trials["a"]])
    b = torch.tensor([index[c] for c in trials["b"]])
    return float(roc_auc_score(trials["label"], (e[a] * e[b]).sum(-1).numpy()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model directories or hub ids; random:DIR")
    p.add_argument("--subsets", default="data/subsets/speaker")
    args = p.parse_args()
    torch.set_num_threads(2)
    subsets = Path(args.subsets)
    manifest = pd.read_csv(subsets / "manifest.csv")
    trials = pd.read_csv(subsets / "trials.csv")
    audio = PackedAudio(subsets)
    bank = mel_filterbank()
    for language, rows in manifest[manifest["role"] == "eval"].groupby("language"):
        clips = [audio[c] for c in rows["clip"]]
        index = {c: i for i, c in enumerate(rows["clip"])}
        lang_trials = trials[trials["language"] == language]
        reference = torch.stack([log_mel_statistics(x, bank) for x in clips])
        for model in args.models:
            feats = encoder_features(model, clips)
            print(json.dumps({
                "language": language, "model": model, "trials": len(lang_trials),
                "log_mel_statistics": round(trial_auc(reference, index, lang_trials), 3),
                **{k: round(trial_auc(v, index, lang_trials), 3) for k, v in feats.items()},
                "log_mel_statistics_centred":
                    round(trial_auc(reference, index, lang_trials, centred=True), 3),
                "pipeline_embedding_centred":
                    round(trial_auc(feats["pipeline_embedding"], index, lang_trials, True), 3),
            }), flush=True)


if __name__ == "__main__":
    main()
