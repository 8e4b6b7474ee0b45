"""How much speaker information an encoder's pooled features carry, before any fine-tuning.

Scores the speaker task's own verification trials (`data/subsets/speaker/trials.csv`) with the
cosine of (a) each hidden layer of an encoder, mean-pooled over frames, and of the pipeline's
embedding (mean of the last 4 layers), and (b) a feature-free reference: the mean and standard
deviation over time of 40 log-mel energies (the pretraining's MFCC front end). Both also centred
(the language's mean evaluation feature removed before the cosine). If the reference separates the
speakers and the encoder does not, the encoder discards the information that speaker fine-tuning
would need.

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
from cltm.tasks.speaker import SPEAKER_LAYERS
from cltm.train.loop import cosine_scores
from cltm.train.model import forward, load_encoder, masked_mean, normalise, pad_batch
from cltm.train.pretrain import log_mel


def log_mel_statistics(x: np.ndarray) -> torch.Tensor:
    """Mean and SD over time of the log-mel energies the pretraining's MFCCs start from."""
    logmel = log_mel(x.astype(np.float64) / 32767.0)
    return torch.from_numpy(np.concatenate([logmel.mean(0), logmel.std(0)])).float()


def encoder_features(model: str, clips: list[np.ndarray]) -> dict[str, torch.Tensor]:
    if model.startswith("random:"):
        config = json.loads((Path(model[7:]) / "config.json").read_text())
        meta = ("architectures", "transformers_version", "torch_dtype", "dtype")
        keep = {k: v for k, v in config.items() if k not in meta}
        encoder, do_normalize = load_encoder("", keep, init_seed=0)
    else:
        encoder, do_normalize = load_encoder(model, None, init_seed=0)
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
    feats["pipeline_embedding"] = torch.stack(
        [torch.stack(c[-SPEAKER_LAYERS:]).mean(0) for c in per_layer])
    return feats


def trial_auc(features: torch.Tensor, index: dict[str, int], trials: pd.DataFrame,
              centred: bool = False) -> float:
    """ROC AUC of the pipeline's cosine scores; `centred` subtracts the mean feature of the
    language's evaluation clips first, so a component common to every clip stops dominating."""
    if centred:
        features = features - features.mean(0)
    scores = cosine_scores(features, index, trials["a"].tolist(), trials["b"].tolist())
    return float(roc_auc_score(trials["label"], scores))


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
    for language, rows in manifest[manifest["role"] == "eval"].groupby("language"):
        clips = [audio[c] for c in rows["clip"]]
        index = {c: i for i, c in enumerate(rows["clip"])}
        lang_trials = trials[trials["language"] == language]
        reference = torch.stack([log_mel_statistics(x) for x in clips])
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
