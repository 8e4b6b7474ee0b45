"""Load and validate `params.yaml` once, at the edge.

This is the only module that knows the key names. Everything downstream receives typed,
checked dataclasses, so a typo in a key or a wrong type fails here with one message that names
the key and what is expected, instead of deep inside a stage.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from cltm.errors import CltmError
from cltm.layout import ENCODER_TYPES
from cltm.tasks.base import Task, TaskConfig, load

DEFAULT_PARAMS = Path("params.yaml")


@dataclass(frozen=True)
class CommonVoiceConfig:
    # The release root (one folder per locale). With data.source: demo, the demo corpus that
    # dvc.yaml's demo-corpus stage writes.
    root: str
    # `validated`: validated clips of speakers outside dev/test; `train`: the official split only.
    pool: Literal["validated", "train"]


@dataclass(frozen=True)
class DataConfig:
    source: Literal["demo", "commonvoice"]
    languages: list[str]
    commonvoice: CommonVoiceConfig
    # Drop languages that cannot fill a request (with a warning) instead of stopping.
    drop_short_languages: bool
    min_duration_s: float | None
    max_duration_s: float | None
    # Seed of the data selection. `fixed`: one draw of D and D' that every training seed trains
    # on (the paper's). `per_seed`: each training seed draws its own D and D' (seeded by
    # selection_seed and the training seed), so that the seeds' spread, and with it every SE,
    # test and interval, covers which clips a subset happened to get, not only the training
    # noise. Evaluation clips and trials are drawn once either way.
    selection: Literal["fixed", "per_seed"]
    # Where each language's D and D' come from. `per_language`: its own speakers (the paper's).
    # `shared`: dealt from every language's speakers at once, so that D'_i and D_j are drawn
    # alike by construction and, on the null-control corpus, every true cell is 1 given the
    # corpus (the calibration's exchangeable variant). Needs selection: per_seed.
    selection_pool: Literal["per_language", "shared"]
    selection_seed: int
    trials_seed: int
    # Processes for decoding and generation.
    workers: int


@dataclass(frozen=True)
class DemoConfig:
    speakers_per_language: int
    clips_per_speaker: int
    dev_speakers: int
    test_speakers: int
    clip_seconds: float  # typical clip length; Common Voice clips run 2-6 s
    family_trait_strength: float
    null_control: bool
    seed: int
    # The planted task cues, scaled by family_trait_strength (data/demo.py): each family's
    # frequency warp of its voices (pitch and formants) in semitones at strength 1 and the move
    # of its eSpeak pitch setting (0-100, F0 alone), the spread of each speaker's own spectral
    # colouring (dB), and how much of that spread a family's speakers put on the family's own
    # two bands (0: none; the total stays the same).
    gender_shift_semitones: float
    gender_pitch_offset: float
    speaker_axes_db: float
    speaker_axes_focus: float
    # Not a planting: the spread (semitones) of each speaker's own warp, at every strength.
    speaker_warp_semitones: float


@dataclass(frozen=True)
class ModelConfig:
    # A Hugging Face model id or a local directory holding config.json and the weights.
    name_or_path: str
    # Config overrides for a randomly initialised encoder (demo and tests: no weights needed),
    # `model_type` (required) one of ENCODER_TYPES. When set, name_or_path is not read.
    random_init: dict[str, Any] | None
    init_seed: int


@dataclass(frozen=True)
class PretrainConfig:
    """HuBERT-style pretraining of a small encoder on the corpus (the demo's stand-in for
    mHuBERT-147). When enabled, model.name_or_path names its output directory (dvc.yaml's
    pretrain stage), the model that fine-tuning loads."""

    enabled: bool
    # Config overrides of the small encoder; `model_type` (required) one of ENCODER_TYPES.
    architecture: dict[str, Any]
    clusters: int
    epochs: int
    crop_seconds: float
    batch_size: int
    lr: float
    seed: int
    threads: int


@dataclass(frozen=True)
class RayConfig:
    # GPUs per worker: 1 = one worker per GPU; 0.5 = two workers share a GPU.
    gpus_per_worker: float
    cpus_per_worker: float
    # Workers when no GPU is visible (a CPU-only Ray cluster).
    cpu_workers: int
    max_retries: int


@dataclass(frozen=True)
class TrainConfig:
    seeds: list[int]
    lr: float
    weight_decay: float
    grad_clip: float
    epochs: int
    batch_size: int
    # The new linear head: `random` is PyTorch's default initialisation (the paper's); `zero`
    # starts every run from the same head, so a run's first steps follow its data, not where a
    # random head happened to point (with a dozen steps that decided whether a run learnt).
    head_init: Literal["random", "zero"]
    # The head's learning rate as a multiple of the encoder's (lr): 1 is the paper's.
    head_lr_scale: float
    # `finetune`: every weight trains, the CNN included (the paper's). `frozen`: the encoder's
    # statistics-pooled features (mean and SD over frames) are computed once per clip and a run
    # trains only its head on them, standardised, one full-batch step an epoch (speaker: a
    # linear projection, the verification embedding, under a speaker-ID classifier).
    encoder: Literal["finetune", "frozen"]
    precision: Literal["fp32", "fp16", "bf16"]
    device: str  # auto: the first GPU when there is one, else cpu
    threads: int | None  # torch CPU threads; null: torch's default
    executor: Literal["inline", "ray"]
    ray: RayConfig
    checkpoints: Literal["none", "self", "all"]
    # Fine-tuned runs trained at once as one fused model (train/fused.py): an integer K >= 1, or
    # `auto` (K from the device's free memory and a per-run estimate; 1 on CPU). A run's result
    # does not depend on K, so K is not in the run hash: a grid resumed at another K keeps its
    # finished runs.
    fuse: int | Literal["auto"]


@dataclass(frozen=True)
class ContrastConfig:
    """One contrast: second − first of the headline diagnostics, with the interval of the
    difference (the contrast stage)."""

    first: str
    second: str
    # The task the hypothesis puts nearer the language-agnostic ideal (the paper: gender), or
    # null: the report names whichever the interval shows, and holds it against no hypothesis.
    expected_nearer: str | None


@dataclass(frozen=True)
class AnalysisConfig:
    # Grouping for intra_family_pos and the heatmaps: `genus` is close to the reference's
    # grouping (Indo-European split by branch); `family` is Glottolog's top level.
    family_level: Literal["family", "genus"]
    # The reduced heatmap's languages (those present are drawn).
    highlight_languages: list[str]
    # Uncertainty: Benjamini-Hochberg false discovery rate for the per-cell tests, bootstrap
    # resamples over seeds and the interval's level, family-label permutations.
    fdr: float
    bootstrap: int
    ci_level: float
    permutations: int
    stats_seed: int
    # Pair runs by seed (tests, bootstrap, self-gain SE) where every cell has the same seeds:
    # one seed's runs share its head initialisation and data order (analysis/stats.py).
    pair_seeds: bool
    # Donor rankings: the share of bootstrap replicates in which a donor is among its target's
    # best top_k (analysis/donors.py).
    top_k: int
    # Embedding probes (geometry and linear CKA): at most this many evaluation clips per
    # language, chosen once by data.selection_seed and embedded by every fine-tuned model;
    # 0 turns the probes off. The grid depends on it: changing it retrains.
    probe_clips: int
    # Entropic regularisation of the Sinkhorn distance, as a fraction of the median cost.
    sinkhorn_reg: float
    # Pairs of tasks compared by name (the paper's: speaker-gender).
    contrasts: dict[str, ContrastConfig]


@dataclass(frozen=True)
class CurveConfig:
    """Learning curves of base runs over N, and the paper's dynamic interval (§2.2)."""

    enabled: bool
    # Per task, the training sizes (same unit as tasks.<task>.N); nested: the clips of a
    # smaller N are a subset of those of a larger one.
    N_grid: dict[str, list[int]]
    languages: list[str] | None  # null: every language of data.languages
    seeds: list[int]
    # The interval score min(Δ/(τ·P(N)), Δ/(z·SE), (Δ/ln 2)/ε), and the smoothing over log N.
    tau: float
    z: float
    eps: float
    bandwidth: float


@dataclass(frozen=True)
class CalibrationVariant:
    """One corpus of the calibration experiment: the demo corpus with these changes."""

    family_trait_strength: float | None = None  # null: demo.family_trait_strength
    languages: list[str] | None = None  # null: data.languages
    seed: int | None = None  # the corpus's seed; null: demo.seed
    # A held-out corpus is never used to choose a param; the report keeps it apart.
    held_out: bool = False
    # Every language's speakers dealt the same mix of voices, nothing planted
    # (demo.null_control): languages that differ only in their labels, every true cell 1.
    exchangeable: bool = False


@dataclass(frozen=True)
class CalibrationConfig:
    """The calibration experiment (calibration/dvc.yaml): the demo pipeline on several corpora
    whose planted structure is known, to show that the CLTM measures it (and nothing else)."""

    variants: dict[str, CalibrationVariant]
    seeds: list[int] | None  # every task's seeds in the calibration; null: each task's


@dataclass(frozen=True)
class Config:
    data: DataConfig
    # Each task's block, validated as its module's Settings (tasks/base.py), in params order.
    tasks: dict[str, TaskConfig]
    train: TrainConfig
    model: ModelConfig
    pretrain: PretrainConfig
    analysis: AnalysisConfig
    demo: DemoConfig
    curve: CurveConfig

    @property
    def corpus_root(self) -> Path:
        return Path(self.data.commonvoice.root)

    def task(self, name: str) -> Task:
        """The code of task `name` (its block's `module`)."""
        if name not in self.tasks:
            raise CltmError(f"no task {name!r} in the params (tasks: {', '.join(self.tasks)}); "
                            "a task is a block under `tasks:` naming its `module`")
        return load(self.tasks[name].module)

    def seeds_of(self, task: str) -> list[int]:
        """The seeds of `task`'s grid: `tasks.<task>.seeds` where set, else `train.seeds`."""
        own = self.tasks[task].seeds
        return list(own) if own is not None else list(self.train.seeds)

    def draws_of(self, task: str) -> list[int] | None:
        """The training seeds that draw their own D and D' (data.selection: per_seed), else
        None: one draw for every seed."""
        return self.seeds_of(task) if self.data.selection == "per_seed" else None


#: The strongest planting: at 3 the family trait's resonances reach ±45 dB and the gender warp
#: ±3 × demo.gender_shift_semitones, past which the corpus stops sounding like speech.
MAX_STRENGTH = 3.0


def load_config(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Read a params file and return the validated config; raise CltmError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CltmError(
            f"params file not found: {path}. Run from the repository root, or pass --params "
            "PATH (configs/paper.yaml holds the paper's protocol)."
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CltmError(f"{path} is not valid YAML: {exc}") from exc
    return config_from_dict(raw or {}, source=str(path))


def config_from_dict(raw: Any, source: str = "params") -> Config:
    config = _build(Config, raw, prefix="", source=source)
    _check_values(config, source)
    return config


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise CltmError(f"{source}: {where} must be a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CltmError(
            f"{source}: unknown key {prefix}{unknown[0]!s}"
            f"{' (and ' + ', '.join(map(str, unknown[1:])) + ')' if unknown[1:] else ''}; "
            f"allowed keys under {where}: {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            missing = dataclasses.MISSING
            if f.default is missing and f.default_factory is missing:
                raise CltmError(
                    f"{source}: missing key {key} ({_expected(hints[name])}). A params file "
                    "names every key: params.yaml (the demo) and configs/paper.yaml (the "
                    "paper's protocol) are complete examples")
            continue
        values[name] = _convert(hints[name], raw[name], key, source)
    return cls(**values)


def _tasks(raw: Any, key: str, source: str) -> dict[str, TaskConfig]:
    """The `tasks:` blocks, each built as the Settings of the task module it names."""
    if not isinstance(raw, dict) or not raw:
        raise CltmError(f"{source}: {key} must be a mapping of task names to their blocks, "
                        f"got {_describe(raw)}")
    out = {}
    for name, block in raw.items():
        where = f"{key}.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            raise CltmError(f"{source}: {where}: a task's name is a folder and a stage name: "
                            "letters, digits, _ and -")
        module = block.get("module") if isinstance(block, dict) else None
        if not isinstance(module, str):
            raise CltmError(f"{source}: {where}.module must name the task's code, an "
                            "importable module such as cltm.tasks.gender")
        try:
            task = load(module)
        except CltmError as exc:
            raise CltmError(f"{source}: {where}.module: {exc}") from None
        out[name] = _build(task.Settings, block, prefix=f"{where}.", source=source)
    return out


#: Exponent floats that YAML 1.1 leaves as strings: 1e-3, -2E+4, 5e6.
_YAML11_FLOAT = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+")


def _convert(hint: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=f"{key}.", source=source)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for alternative in inner[:-1]:
            try:
                return _convert(alternative, value, key, source)
            except CltmError:
                continue
        try:
            return _convert(inner[-1], value, key, source)
        except CltmError:
            if len(inner) == 1:
                raise
            raise CltmError(f"{source}: {key} must be {_expected(hint)}, "
                            f"got {_describe(value)}") from None
    if origin is Literal:
        if value not in args:
            raise CltmError(f"{source}: {key} must be one of {', '.join(map(repr, args))}, "
                            f"got {value!r}")
        return value
    if origin is dict and args[1:] == (TaskConfig,):
        return _tasks(value, key, source)
    if origin is dict:
        if not isinstance(value, dict):
            raise CltmError(f"{source}: {key} must be a mapping, got {_describe(value)}")
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return {k: _build(args[1], v or {}, prefix=f"{key}.{k}.", source=source)
                    for k, v in value.items()}
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise CltmError(f"{source}: {key} must be {_expected(hint)}, got {_describe(value)}")
        return [_convert(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if hint is float and isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        # PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string; it is a number.
        return float(value)
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise CltmError(f"{source}: {key} must be {_expected(hint)}, got {_describe(value)}")
    return float(value) if hint is float else value


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        text = " or ".join(_expected(a) for a in inner)
        return f"{text} or null" if type(None) in args else text
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is dict:
        return "a mapping"
    if origin is list:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], _expected(args[0]))}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[hint]


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _check_values(c: Config, source: str) -> None:
    """Checks across keys and of value ranges: what no type annotation can say."""

    def fail(msg: str) -> None:
        raise CltmError(f"{source}: {msg}")

    langs = c.data.languages
    if len(langs) < 2:
        fail("data.languages needs at least 2 locales (a CLTM compares languages)")
    dupes = sorted({x for x in langs if langs.count(x) > 1})
    if dupes:
        fail(f"data.languages lists {', '.join(dupes)} more than once")
    if c.data.selection_pool == "shared" and c.data.selection != "per_seed":
        fail("data.selection_pool: shared deals D and D' anew for every seed, so that D'_i and "
             "D_j differ only by the draw: set data.selection: per_seed")
    problem = _seeds_problem(c.train.seeds)
    if problem:
        fail(f"train.seeds {problem}")
    for name, t in c.tasks.items():
        task = c.task(name)
        problem = task.problem(name, t)
        if problem:
            fail(problem)
        problem = _seeds_problem(t.seeds) if t.seeds is not None else None
        if problem:
            fail(f"tasks.{name}.seeds {problem} (null: train.seeds)")
        if t.clips_per_speaker < 1:
            fail(f"tasks.{name}.clips_per_speaker must be positive")
        if t.head_lr_scale is not None and not t.head_lr_scale > 0:
            fail(f"tasks.{name}.head_lr_scale must be positive (or null: train.head_lr_scale)")
        if (t.lr is not None and not t.lr > 0) or (t.epochs is not None and t.epochs < 1):
            fail(f"tasks.{name}.lr and tasks.{name}.epochs must be positive (or null: train's)")
        if t.N == "auto":
            if not c.curve.enabled:
                fail(f"tasks.{name}.N is auto, which takes the N that the curve stage chooses, "
                     "but curve.enabled is false: set curve.enabled: true (and "
                     f"curve.N_grid.{name}) or give tasks.{name}.N a number")
            continue
        problem = task.n_problem(name, t, t.N)
        if problem:
            fail(f"tasks.{name}.N ({t.N}) {problem}")
    lo, hi = c.data.min_duration_s, c.data.max_duration_s
    if lo is not None and hi is not None and lo >= hi:
        fail(f"data.min_duration_s ({lo}) must be below data.max_duration_s ({hi})")
    for key, overrides in (("model.random_init", c.model.random_init),
                           ("pretrain.architecture", c.pretrain.architecture)):
        if overrides is None:
            continue  # model.random_init: null loads name_or_path, whose config names its type
        if "model_type" not in overrides:
            fail(f"{key} needs model_type, the encoder family it overrides the config of: one "
                 f"of {', '.join(ENCODER_TYPES)}")
        model_type = overrides["model_type"]
        if model_type not in ENCODER_TYPES:
            fail(f"{key}.model_type is {model_type!r}; the pipeline supports the speech encoders "
                 f"of the wav2vec 2.0 family: {', '.join(ENCODER_TYPES)}")
    p = c.pretrain
    if p.enabled:
        if c.model.random_init is not None:
            fail("with pretrain.enabled, fine-tuning loads the pretrained encoder: set "
                 "model.random_init: null and model.name_or_path to the pretrain stage's output")
        if p.epochs < 1 or p.clusters < 2 or p.batch_size < 1 or p.lr <= 0:
            fail("pretrain.epochs, batch_size and lr must be positive and clusters at least 2")
        if not 0.5 <= p.crop_seconds <= 10:
            fail("pretrain.crop_seconds must lie in [0.5, 10]")
    _check_curve(c, fail)
    a = c.analysis
    if a.probe_clips < 0 or a.sinkhorn_reg <= 0:
        fail("analysis.probe_clips must be >= 0 (0 turns probes off) and "
             "analysis.sinkhorn_reg positive")
    if not 0 < a.fdr < 1 or not 0 < a.ci_level < 1:
        fail("analysis.fdr and analysis.ci_level must lie strictly between 0 and 1")
    if a.bootstrap < 0 or a.permutations < 0:
        fail("analysis.bootstrap and analysis.permutations must be >= 0 (0 turns them off)")
    for name, pair in a.contrasts.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            fail(f"analysis.contrasts: {name!r} is not a usable name (letters, digits, _ -)")
        unknown = [t for t in (pair.first, pair.second) if t not in c.tasks]
        if unknown or pair.first == pair.second:
            fail(f"analysis.contrasts.{name} compares two different tasks of `tasks:` "
                 f"({', '.join(c.tasks)}); got {pair.first} and {pair.second}")
        if pair.expected_nearer not in (None, pair.first, pair.second):
            fail(f"analysis.contrasts.{name}.expected_nearer is one of the pair "
                 f"({pair.first}, {pair.second}) or null")
    if a.top_k < 1:
        fail("analysis.top_k must be at least 1 (the donors counted as a target's best)")
    t = c.train
    if not t.head_lr_scale > 0:
        fail("train.head_lr_scale must be positive (1: the head learns at train.lr)")
    if t.lr <= 0 or t.epochs < 1 or t.batch_size < 1 or t.grad_clip <= 0 or t.weight_decay < 0:
        fail("train.lr, train.epochs, train.batch_size and train.grad_clip must be positive and "
             "train.weight_decay non-negative")
    if t.fuse != "auto" and t.fuse < 1:
        fail(f"train.fuse must be an integer >= 1 or auto, got {t.fuse!r}")
    if not (t.device in ("auto", "cpu", "cuda", "mps") or t.device.startswith("cuda:")):
        fail(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {t.device!r}")
    if t.ray.gpus_per_worker < 0 or t.ray.cpu_workers < 1 or t.ray.max_retries < 0:
        fail("train.ray.gpus_per_worker must be >= 0, cpu_workers >= 1, max_retries >= 0")
    if c.data.workers < 1:
        fail("data.workers must be at least 1")
    # The demo's own settings (voices, speaker counts) are the demo-corpus stage's to check:
    # checked here, they would pull the corpus generator into every stage's code deps.
    if c.data.source == "commonvoice" and not Path(c.data.commonvoice.root).is_dir():
        fail(f"data.commonvoice.root: {c.data.commonvoice.root} is not a directory. Point it "
             "at an unpacked Common Voice release (the folder that holds one folder per "
             "locale, e.g. cv-corpus-22.0-2025-06-20/); download it from "
             "https://commonvoice.mozilla.org/datasets")


def load_calibration(path: str | Path) -> CalibrationConfig:
    """The calibration's own params file (calibration/params.yaml), validated."""
    path = Path(path)
    if not path.is_file():
        raise CltmError(f"calibration params file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    cal = _build(CalibrationConfig, raw, prefix="", source=str(path))

    def fail(msg: str) -> None:
        raise CltmError(f"{path}: {msg}")

    _check_calibration(cal, fail)
    return cal


def variant_params(raw: dict[str, Any], cal: CalibrationConfig, name: str, *, corpus: str,
                   encoder: str) -> dict[str, Any]:
    """The params of calibration variant `name`: the demo's params `raw` with the variant's
    changes, its corpus at `corpus` and its pretrained encoder at `encoder` (paths that the
    calibration's dvc.yaml gives), every task on the calibration's seeds and no embedding
    probes (geometry and gaps are not part of the calibration). Validated before returned."""
    if name not in cal.variants:
        raise CltmError(f"no calibration variant {name!r}; the calibration's params have "
                        f"{', '.join(cal.variants) or 'none'}")
    base = config_from_dict(raw)
    if base.data.source != "demo" or not base.pretrain.enabled:
        raise CltmError("the calibration runs the demo pipeline on demo corpora: its base params "
                        "need data.source: demo and pretrain.enabled: true (params.yaml as "
                        "shipped)")
    v = cal.variants[name]
    p = copy.deepcopy(raw)
    p["data"]["commonvoice"]["root"] = corpus
    p["model"]["name_or_path"] = encoder
    if v.family_trait_strength is not None:
        p["demo"]["family_trait_strength"] = v.family_trait_strength
    if v.languages is not None:
        p["data"]["languages"] = list(v.languages)
    if v.seed is not None:
        p["demo"]["seed"] = v.seed
    if v.exchangeable:
        # One voice mix for every language, and D'_i and D_j dealt from one pool of speakers:
        # a language's finite set of speakers is then no property of it either.
        p["demo"]["null_control"] = True
        p["data"]["selection_pool"] = "shared"
    if cal.seeds is not None:
        for block in p["tasks"].values():
            block["seeds"] = list(cal.seeds)
    p["analysis"]["probe_clips"] = 0
    config_from_dict(p, source=f"calibration variant {name}")
    return p


def variant_strength(cal: CalibrationConfig, name: str, base_strength: float) -> float:
    """The planted strength of variant `name` (0 for the exchangeable null control)."""
    v = cal.variants[name]
    if v.exchangeable:
        return 0.0  # nothing is planted in a null-control corpus, whatever the strength
    return base_strength if v.family_trait_strength is None else v.family_trait_strength


def _check_calibration(cal: CalibrationConfig, fail: typing.Callable[[str], None]) -> None:
    if cal.seeds is not None:
        problem = _seeds_problem(cal.seeds)
        if problem:
            fail(f"calibration.seeds {problem} (null: each task's seeds)")
    for name, v in cal.variants.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            fail(f"calibration.variants: {name!r} is not a usable name (letters, digits, _ -)")
        strength = v.family_trait_strength
        if strength is not None and not 0.0 <= strength <= MAX_STRENGTH:
            fail(f"calibration.variants.{name}.family_trait_strength must lie in "
                 f"[0, {MAX_STRENGTH:g}]")
        if v.languages is not None and len(set(v.languages)) < 2:
            fail(f"calibration.variants.{name}.languages needs at least 2 languages")


def _seeds_problem(seeds: list[int]) -> str | None:
    """Why a list of seeds cannot be a set of runs, or None when it can."""
    if not seeds:
        return "must list at least one seed"
    if len(set(seeds)) != len(seeds):
        return "has repeated seeds: each seed must be a distinct run"
    return None


def _check_curve(c: Config, fail: typing.Callable[[str], None]) -> None:
    cv = c.curve
    unknown = sorted(set(cv.N_grid) - set(c.tasks))
    if unknown:
        fail(f"curve.N_grid has unknown task(s) {', '.join(unknown)}; allowed: "
             f"{', '.join(c.tasks)}")
    if not cv.enabled:
        return  # an unused grid may not fit other task settings; it is checked when used
    for task, grid in cv.N_grid.items():
        for N in grid:
            problem = c.task(task).n_problem(task, c.tasks[task], N)
            if problem:
                fail(f"curve.N_grid.{task}: N ({N}) {problem}")
        if len(set(grid)) != len(grid):
            fail(f"curve.N_grid.{task} repeats a value")
    for task in c.tasks:
        grid = cv.N_grid.get(task, [])
        if not any(2 * n in grid for n in grid):
            fail(f"curve.N_grid.{task} must hold at least one N together with 2N (the interval "
                 f"score compares P(N) with P(2N)); got {grid}")
    if cv.languages is not None:
        extra = sorted(set(cv.languages) - set(c.data.languages))
        if extra or not cv.languages:
            fail(f"curve.languages must be a non-empty subset of data.languages; not in "
                 f"data.languages: {', '.join(extra) or '(empty list)'}")
    problem = _seeds_problem(cv.seeds)
    if problem:
        fail(f"curve.seeds {problem}")
    if min(cv.tau, cv.z, cv.eps, cv.bandwidth) <= 0:
        fail("curve.tau, curve.z, curve.eps and curve.bandwidth must be positive")
