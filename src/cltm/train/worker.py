"""A warm worker: loads the encoder and the task's audio once, then runs many specs.

Before each run the encoder is reset from a copy of its initial weights kept in the device's
memory: no disk read per run. Results go back as plain dicts; the worker never writes the run
store or MLflow (one process does that), so it imports neither.
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cltm.data.pack import PackedAudio
from cltm.train import tasks
from cltm.train.grid import RunSpec, probe_clips, training_clips
from cltm.train.model import load_encoder, resolve_device

log = logging.getLogger(__name__)

SPEAKER_LAYERS = 4  # embedding = mean of the last 4 hidden layers
# A frozen encoder's features, for either task: the last 4 layers' mean, statistics-pooled.
# (On a probe corpus the last layer alone left Dutch's gender self-gain at 0.)
FROZEN_LAYERS = 4


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs, as plain values (it travels to Ray actors)."""

    task: str
    subsets_dir: str
    name_or_path: str
    random_init: dict[str, Any] | None
    init_seed: int
    train: tasks.TrainParams
    device: str = "auto"
    threads: int | None = None
    checkpoints: str = "none"  # none | self | all
    checkpoints_dir: str | None = None
    first_seed: int = 0
    # Embedding probes: at most this many evaluation clips per language (0: none), chosen by
    # probe_seed. Every run returns its model's embeddings of the target's probe clips (and,
    # for speaker cross runs, of the donor's), for the geometry and CKA analyses.
    probe_clips: int = 0
    probe_seed: int = 0


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.s = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.device = resolve_device(settings.device)
        if self.device.type == "cpu":
            # oneDNN builds a convolution primitive for every new input shape; with clips of
            # varying length nearly every training step misses its cache (measured on the demo:
            # 120 ms a step with oneDNN, 27 ms without, 1 thread).
            torch.backends.mkldnn.enabled = False
        encoder, self.do_normalize = load_encoder(settings.name_or_path, settings.random_init,
                                                  settings.init_seed)
        self.encoder = encoder.to(self.device)
        self.initial = {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}
        subsets = Path(settings.subsets_dir)
        self.manifest = pd.read_csv(subsets / "manifest.csv")
        audio = PackedAudio(subsets)
        self.waves = {c: torch.from_numpy(audio[c]) for c in self.manifest["clip"]}
        self.trials = (pd.read_csv(subsets / "trials.csv") if settings.task == "speaker"
                       else None)
        self.probes = probe_clips(self.manifest, settings.probe_clips, settings.probe_seed)
        # Frozen encoder: each clip's pooled features, computed the first time a run needs them.
        self.features: dict[str, torch.Tensor] = {}
        self.device_name = (torch.cuda.get_device_name(self.device)
                            if self.device.type == "cuda" else f"cpu ({platform.machine()})")

    def reset(self) -> None:
        self.encoder.load_state_dict(self.initial)
        self.encoder.zero_grad(set_to_none=True)

    def run(self, spec: RunSpec, run_hash: str) -> dict[str, Any]:
        start = time.perf_counter()
        if self.s.train.encoder != "frozen":  # a frozen encoder never changes
            self.reset()
        tasks.seed_everything(spec.seed)
        train_rows = training_clips(self.manifest, spec)
        if spec.task == "gender":
            classes = ["female", "male"]
        else:
            classes = sorted(train_rows["speaker"].unique())
        key = "gender" if spec.task == "gender" else "speaker"
        label_of = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([label_of[v] for v in train_rows[key]])
        if self.s.train.encoder == "frozen":
            features = self._features(train_rows["clip"])
            head = tasks.FrozenHead(features, len(classes), project=spec.task == "speaker",
                                    init=self.s.train.head_init)
            losses = tasks.train_frozen(head, features, labels, self.s.train)
        else:
            head = tasks.new_head(self.encoder.config.hidden_size, len(classes),
                                  self.s.train.head_init, self.device)
            waves = [self.waves[c] for c in train_rows["clip"]]
            losses = tasks.train(self.encoder, head, waves, labels, self.s.train, spec.seed,
                                 self.device, self.do_normalize)
        result = self._score(spec, head)
        self._checkpoint(spec, head)
        return {
            **spec.as_dict(),
            "run_id": spec.run_id,
            "hash": run_hash,
            **result,
            "loss_final": losses[-1],
            "loss_mean": float(np.mean(losses)),
            "steps": len(losses),
            "train_clips": len(train_rows),
            "wall_s": time.perf_counter() - start,
            "device": self.device_name,
        }

    def _score(self, spec: RunSpec, head: nn.Module) -> dict[str, Any]:
        m = self.manifest
        eval_rows = m[(m["language"] == spec.target) & (m["role"] == "eval")]
        emb = self._embed(eval_rows["clip"], head)
        if spec.task == "gender":
            if isinstance(head, tasks.FrozenHead):
                pred = tasks.classify(head.classify, emb, torch.device("cpu"))
            else:
                pred = tasks.classify(head, emb, self.device)
            truth = (eval_rows["gender"] == "male").astype(int).to_numpy()
            # A run that predicts one class for every clip has learnt nothing about gender
            # (macro-F1 0.333 on a balanced set): counted as such by the cltm stage.
            result: dict[str, Any] = {"score": tasks.macro_f1(truth, pred),
                                      "eval_clips": len(eval_rows),
                                      "pred_classes": len(np.unique(pred)),
                                      "pred_male_share": float(np.mean(pred))}
        else:
            index = {c: i for i, c in enumerate(eval_rows["clip"])}
            trials = self.trials[self.trials["language"] == spec.target]
            scores = tasks.cosine_scores(emb, index, trials["a"].tolist(), trials["b"].tolist())
            auc, eer = tasks.auc_eer(scores, trials["label"].to_numpy())
            result = {"score": auc, "eer": eer, "eval_trials": len(trials)}
        if self.probes:
            result["probes"] = self._probe_embeddings(spec, eval_rows, emb, head)
        return result

    def _embed(self, clips: pd.Series, head: nn.Module) -> torch.Tensor:
        """The task's embedding: the input of the gender classifier, or the verification
        embedding (a frozen run's: its projection of the standardised features)."""
        if isinstance(head, tasks.FrozenHead):
            head.eval()
            with torch.no_grad():
                return head.embed(self._features(clips))
        return tasks.embed(self.encoder, [self.waves[c] for c in clips], self.device,
                           self.do_normalize, self.s.train.precision, last_layers=self._layers)

    @property
    def _layers(self) -> int:
        if self.s.train.encoder == "frozen":
            return FROZEN_LAYERS
        return 1 if self.s.task == "gender" else SPEAKER_LAYERS

    def _features(self, clips: pd.Series) -> torch.Tensor:
        """A frozen encoder's statistics-pooled features of `clips`, each computed once."""
        todo = [c for c in dict.fromkeys(clips) if c not in self.features]
        if todo:
            out = tasks.embed(self.encoder, [self.waves[c] for c in todo], self.device,
                              self.do_normalize, self.s.train.precision, self._layers,
                              stats=True)
            self.features.update(zip(todo, out))
        return torch.stack([self.features[c] for c in clips])

    def _probe_embeddings(self, spec: RunSpec, eval_rows: pd.DataFrame, emb: torch.Tensor,
                          head: nn.Module) -> dict[str, np.ndarray]:
        # float16: a probe's purpose is distances and similarities, and at paper scale the
        # probes of 20,000 runs are the largest thing the grid writes.
        position = {c: i for i, c in enumerate(eval_rows["clip"])}
        target = emb[[position[c] for c in self.probes[spec.target]]]
        out = {"target": target.numpy().astype(np.float16)}
        if spec.task == "speaker" and spec.condition == "cross":
            donor = self._embed(pd.Series(self.probes[spec.donor]), head)
            out["donor"] = donor.numpy().astype(np.float16)
        return out

    def _checkpoint(self, spec: RunSpec, head: nn.Module) -> None:
        policy = self.s.checkpoints
        first_self = spec.condition in ("base", "self") and spec.seed == self.s.first_seed
        wanted = policy == "all" or (policy == "self" and first_self)
        if not wanted or not self.s.checkpoints_dir:
            return
        from safetensors.torch import save_file

        out = Path(self.s.checkpoints_dir) / f"{spec.run_id.replace('/', '__')}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        state = {f"encoder.{k}": v.detach().contiguous().cpu()
                 for k, v in self.encoder.state_dict().items()}
        state.update({f"head.{k}": v.detach().contiguous().cpu()
                      for k, v in head.state_dict().items()})
        save_file(state, str(out), metadata={"run_id": spec.run_id})
