"""A warm worker: loads the encoder and the task's audio once, then runs many specs.

Runs are trained by a recipe behind one interface (train K runs, embed clips with each of the K
models, classify with a run's head, a run's weights for its checkpoint):
- `FusedRecipe`: fine-tuning, K runs at once as one fused model (train/fused.py; K from
  `train.fuse`, K = 1 the same code). A run's result does not depend on K or its partners.
- `PlainRecipe`: fine-tuning one run at a time on transformers' own modules, for encoders the
  fused model does not cover (WavLM, data2vec-audio; the reason is logged).
- `FrozenRecipe`: a frozen encoder's features, each clip's computed once, and a small head.
Before each group the encoder starts from a copy of its initial weights kept in the device's
memory: no disk read per run. Results go back as plain dicts; the worker never writes the run
store or MLflow (one process does that), so it imports neither.
"""

from __future__ import annotations

import functools
import logging
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cltm.data.pack import PackedAudio
from cltm.tasks.base import TaskConfig
from cltm.tasks.base import load as load_task
from cltm.train import fused, loop
from cltm.train.grid import RunSpec, probe_clips, training_clips
from cltm.train.model import load_encoder, resolve_device

log = logging.getLogger(__name__)

# A frozen encoder's features, for either task: the last 4 layers' mean, statistics-pooled.
# (On a probe corpus the last layer alone left Dutch's gender self-gain at 0.)
FROZEN_LAYERS = 4


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs, as plain values (it travels to Ray actors)."""

    task: str
    task_module: str  # the task's code (tasks.<task>.module)
    task_settings: TaskConfig  # its params block
    subsets_dir: str
    name_or_path: str
    random_init: dict[str, Any] | None
    init_seed: int
    train: loop.TrainParams
    device: str
    threads: int | None
    checkpoints: str  # none | self | all
    first_seed: int
    # Embedding probes: at most this many evaluation clips per language (0: none), chosen by
    # probe_seed. Every run returns its model's embeddings of the target's probe clips (and,
    # for speaker cross runs, of the donor's), for the geometry and CKA analyses.
    probe_clips: int
    probe_seed: int
    # Fine-tuned runs trained at once (train.fuse): K >= 1 or "auto". Not part of a run's result.
    fuse: int | str
    checkpoints_dir: str | None = None  # needed only when checkpoints is not none


Job = tuple[RunSpec, str]


@dataclass
class Prepared:
    """A run ready to train: its spec and hash, training rows, class names and labels."""

    spec: RunSpec
    run_hash: str
    rows: pd.DataFrame
    classes: list[str]
    labels: torch.Tensor


def fuse_groups(jobs: Sequence[Job], k: int, steps: Sequence[int]) -> list[list[int]]:
    """Indices of `jobs` in groups of at most k to train fused: within a seed, runs of the same
    number of steps (no lane idles while others train), in grid order, so the runs of one
    target sit together and share their evaluation clips."""
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, ((spec, _), n) in enumerate(zip(jobs, steps)):
        buckets.setdefault((spec.seed, n), []).append(i)
    seeds = list(dict.fromkeys(spec.seed for spec, _ in jobs))
    groups = []
    for seed in seeds:
        for (s, _), idx in buckets.items():
            if s == seed:
                groups.extend(idx[i : i + k] for i in range(0, len(idx), k))
    return groups


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
        self.task = load_task(settings.task_module)
        self.extras = self.task.load_extras(subsets, settings.task_settings)
        self.probes = probe_clips(self.manifest, settings.probe_clips, settings.probe_seed)
        # Frozen encoder: each clip's pooled features, computed the first time a run needs them.
        self.features: dict[str, torch.Tensor] = {}
        self.device_name = (torch.cuda.get_device_name(self.device)
                            if self.device.type == "cuda" else f"cpu ({platform.machine()})")
        self.recipe = self._recipe()

    def _recipe(self) -> Recipe:
        if self.s.train.encoder == "frozen":
            return FrozenRecipe(self)
        reason = fused.unsupported(self.encoder.config)
        if reason is not None:
            log.warning("train.fuse: %s", reason)
            return PlainRecipe(self)
        k = self.s.fuse
        n_params = sum(p.numel() for p in self.encoder.parameters())
        # A fused step pads to the longest clip of its K: the longest clip of the data bounds it.
        longest = max(w.numel() for w in self.waves.values()) / 16_000
        t, cap = self.s.train, loop.EVAL_BATCH.get(self.device.type, 16)
        eval_batch = fused.eval_batch(self.encoder.config, n_params, longest, t.precision,
                                      t.batch_size, cap)
        if k == "auto":
            k = fused.auto_k(self.encoder.config, n_params, self.device, t.precision,
                             seconds=longest, batch=t.batch_size, eval_clips=cap)
            log.info("train.fuse: auto: %d runs fused on %s", k, self.device_name)
        return FusedRecipe(self, int(k), eval_batch)

    def reset(self) -> None:
        self.encoder.load_state_dict(self.initial)
        self.encoder.zero_grad(set_to_none=True)

    def run(self, spec: RunSpec, run_hash: str) -> dict[str, Any]:
        return next(iter(self.run_many([(spec, run_hash)])))

    def run_many(self, jobs: Sequence[Job]) -> Iterator[dict[str, Any]]:
        """Train and score `jobs`, K at a time; yield each run's record."""
        prepared = [self._prepare(spec, h) for spec, h in jobs]
        steps = [self.s.train.epochs * -(-len(p.rows) // self.s.train.batch_size)
                 for p in prepared]
        for idx in fuse_groups(jobs, self.recipe.k, steps):
            group = [prepared[i] for i in idx]
            start = time.perf_counter()
            losses = self.recipe.train(group)
            results = self._score(group)
            wall = (time.perf_counter() - start) / len(group)
            for k, p in enumerate(group):
                self._checkpoint(p.spec, k)
                yield {
                    **p.spec.as_dict(),
                    "run_id": p.spec.run_id,
                    "hash": p.run_hash,
                    **results[k],
                    "loss_final": losses[k][-1],
                    "loss_mean": float(np.mean(losses[k])),
                    "steps": len(losses[k]),
                    "train_clips": len(p.rows),
                    "wall_s": wall,
                    "device": self.device_name,
                    "fused": len(group),
                    "padding_share": self.recipe.padding_share,
                }

    def _prepare(self, spec: RunSpec, run_hash: str) -> Prepared:
        rows = training_clips(self.manifest, spec)
        classes, labels = self.task.targets(rows, self.extras)
        return Prepared(spec, run_hash, rows, classes, torch.tensor(labels))

    def _score(self, group: list[Prepared]) -> list[dict[str, Any]]:
        m = self.manifest
        evals = [m[(m["language"] == p.spec.target) & (m["role"] == "eval")] for p in group]
        embs = self.recipe.embed([list(e["clip"]) for e in evals], self._layers)
        out = []
        for k, (p, eval_rows, emb) in enumerate(zip(group, evals, embs)):
            spec = p.spec
            result = self.task.score(spec.target, eval_rows, emb,
                                     functools.partial(self.recipe.classify, k), self.extras)
            if self.probes:
                position = {c: i for i, c in enumerate(eval_rows["clip"])}
                target = emb[[position[c] for c in self.probes[spec.target]]]
                # float16: a probe's purpose is distances and similarities, and at paper scale
                # the probes of 20,000 runs are the largest thing the grid writes.
                result["probes"] = {"target": target.numpy().astype(np.float16)}
            out.append(result)
        if self.probes and self.task.donor_probes:
            donors = [self.probes[p.spec.donor] if p.spec.condition == "cross" else []
                      for p in group]
            if any(donors):
                for k, e in enumerate(self.recipe.embed(donors, self._layers)):
                    if donors[k]:
                        out[k]["probes"]["donor"] = e.numpy().astype(np.float16)
        return out

    @property
    def _layers(self) -> int:
        if self.s.train.encoder == "frozen":
            return FROZEN_LAYERS
        return self.task.embedding_layers

    def _features(self, clips: Sequence[str]) -> torch.Tensor:
        """A frozen encoder's statistics-pooled features of `clips`, each computed once."""
        todo = [c for c in dict.fromkeys(clips) if c not in self.features]
        if todo:
            out = loop.embed(self.encoder, [self.waves[c] for c in todo], self.device,
                              self.do_normalize, self.s.train.precision, self._layers,
                              stats=True)
            self.features.update(zip(todo, out))
        return torch.stack([self.features[c] for c in clips])

    def _checkpoint(self, spec: RunSpec, k: int) -> None:
        policy = self.s.checkpoints
        first_self = spec.condition in ("base", "self") and spec.seed == self.s.first_seed
        wanted = policy == "all" or (policy == "self" and first_self)
        if not wanted or not self.s.checkpoints_dir:
            return
        from safetensors.torch import save_file

        out = Path(self.s.checkpoints_dir) / f"{spec.run_id.replace('/', '__')}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        encoder, head = self.recipe.weights(k)
        state = {f"encoder.{n}": v.detach().contiguous().cpu() for n, v in encoder.items()}
        state.update({f"head.{n}": v.detach().contiguous().cpu()
                      for n, v in head.items()})
        save_file(state, str(out), metadata={"run_id": spec.run_id})


class Recipe:
    """How a group of runs is trained and scored. `k`: the most runs it trains at once."""

    k = 1
    padding_share = 0.0

    def __init__(self, worker: Worker) -> None:
        self.w = worker

    def train(self, group: list[Prepared]) -> list[list[float]]:
        """Train the group's runs; return each run's loss of every step."""
        raise NotImplementedError

    def embed(self, lanes: list[list[str]], layers: int) -> list[torch.Tensor]:
        """Run k's task embedding of the clips lanes[k]: the input of the gender classifier,
        or the verification embedding."""
        raise NotImplementedError

    def classify(self, k: int, emb: torch.Tensor) -> np.ndarray:
        """Run k's class of each embedding row."""
        raise NotImplementedError

    def weights(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run k's (encoder, head) state dicts."""
        raise NotImplementedError


class FusedRecipe(Recipe):
    """Fine-tune K runs at once as one fused model (train/fused.py)."""

    def __init__(self, worker: Worker, k: int, eval_batch: int) -> None:
        super().__init__(worker)
        self.k, self.eval_batch = k, eval_batch
        self.enc: fused.FusedEncoder | None = None

    def train(self, group: list[Prepared]) -> list[list[float]]:
        w = self.w
        runs = [fused.RunData([w.waves[c] for c in p.rows["clip"]], p.labels, p.spec.seed,
                              len(p.classes)) for p in group]
        self.enc = None  # the previous group's weights go before the next are made
        self.enc = fused.FusedEncoder(w.encoder, len(group), state=w.initial).to(w.device)
        trainer = fused.FusedTrainer(self.enc, runs, w.s.train, w.device, w.do_normalize)
        losses = trainer.train()
        self.padding_share = trainer.stats.padding_share
        return losses

    def embed(self, lanes: list[list[str]], layers: int) -> list[torch.Tensor]:
        w = self.w
        return fused.embed(self.enc, [[w.waves[c] for c in lane] for lane in lanes], w.device,
                           w.do_normalize, w.s.train.precision, last_layers=layers,
                           batch=self.eval_batch)

    def classify(self, k: int, emb: torch.Tensor) -> np.ndarray:
        return loop.classify(self.enc.head(k), emb, self.w.device)

    def weights(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.enc.plain_state(k), self.enc.head(k).state_dict()


class PlainRecipe(Recipe):
    """Fine-tune one run at a time on transformers' modules (encoders not fused)."""

    def train(self, group: list[Prepared]) -> list[list[float]]:
        (p,) = group
        w = self.w
        w.reset()
        loop.seed_everything(p.spec.seed)
        self.head = loop.new_head(w.encoder.config.hidden_size, len(p.classes),
                                   w.s.train.head_init, w.device)
        waves = [w.waves[c] for c in p.rows["clip"]]
        return [loop.train(w.encoder, self.head, waves, p.labels, w.s.train, p.spec.seed,
                            w.device, w.do_normalize)]

    def embed(self, lanes: list[list[str]], layers: int) -> list[torch.Tensor]:
        w = self.w
        return [loop.embed(w.encoder, [w.waves[c] for c in lane], w.device, w.do_normalize,
                            w.s.train.precision, last_layers=layers) for lane in lanes]

    def classify(self, k: int, emb: torch.Tensor) -> np.ndarray:
        return loop.classify(self.head, emb, self.w.device)

    def weights(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.w.encoder.state_dict(), self.head.state_dict()


class FrozenRecipe(Recipe):
    """A frozen encoder: each clip's features once, then a head per run (on CPU)."""

    def train(self, group: list[Prepared]) -> list[list[float]]:
        (p,) = group
        w = self.w
        loop.seed_everything(p.spec.seed)
        features = w._features(list(p.rows["clip"]))
        self.head = loop.FrozenHead(features, len(p.classes), project=w.task.project,
                                     init=w.s.train.head_init)
        return [loop.train_frozen(self.head, features, p.labels, w.s.train)]

    def embed(self, lanes: list[list[str]], layers: int) -> list[torch.Tensor]:
        self.head.eval()
        with torch.no_grad():
            return [self.head.embed(self.w._features(lane)) for lane in lanes]

    def classify(self, k: int, emb: torch.Tensor) -> np.ndarray:
        return loop.classify(self.head.classify, emb, torch.device("cpu"))

    def weights(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return self.w.encoder.state_dict(), self.head.state_dict()
