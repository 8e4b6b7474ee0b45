"""The calibration experiment: the demo pipeline on corpora whose planted structure is known.

A CLTM is a measurement only if it finds structure that is there and invents none that is not.
Each variant of `calibration.variants` is the demo corpus with another planting strength, other
languages or another seed; `run_variant` runs the pipeline on it (corpus, pretraining, subsets,
grids, CLTMs) in `calibration/work/<variant>/`, a directory of its own laid out like the
repository, with the params of the repository and the variant's changes. The stages are the
pipeline's own `cltm` subcommands, so the calibration measures exactly what `dvc repro` runs.
`analysis/calibration.py` then puts the variants side by side.

Interrupted, a variant resumes: its run stores persist, and the corpus and the pretrained
encoder are kept while the params and code they come from are unchanged.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cltm.config import Config, load_config
from cltm.errors import CltmError

log = logging.getLogger(__name__)

TASKS = ("gender", "speaker")
#: Where a variant works, and the metrics it leaves for the summary, under calibration.out.
WORK, METRICS = "work", "metrics"
#: What the variant's corpus and pretrained encoder come from (beside their params).
_CORPUS_CODE = ("data/demo.py", "data/espeak.py")
_PRETRAIN_CODE = ("train/pretrain.py",)


def variant_params(raw: dict[str, Any], config: Config, name: str) -> dict[str, Any]:
    """The repository's params with variant `name`'s changes: the demo corpus with its own
    strength, languages and seed, every task on the calibration's seeds, no embedding probes
    (geometry and gaps are not part of the calibration)."""
    if name not in config.calibration.variants:
        raise CltmError(f"no calibration variant {name!r}; calibration.variants has "
                        f"{', '.join(config.calibration.variants) or 'none'}")
    if config.data.source != "demo":
        raise CltmError("the calibration runs on demo corpora: set data.source: demo")
    v = config.calibration.variants[name]
    p = copy.deepcopy(raw)
    p.pop("calibration", None)
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
    if config.calibration.seeds is not None:
        for task in TASKS:
            p["tasks"][task]["seeds"] = list(config.calibration.seeds)
    p.setdefault("analysis", {})["probe_clips"] = 0
    return p


def _digest(*parts: Any) -> str:
    here = Path(__file__).parent
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for part in parts:
        if isinstance(part, tuple):
            for name in part:
                h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _inside(path: Path) -> Iterator[None]:
    here = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(here)


@contextlib.contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    """`key` set to `value` for the block only (the caller's environment is left as it was)."""
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


def _cltm(*args: str) -> None:
    from cltm.cli import main

    if main(["--params", "params.yaml", *args]) != 0:
        raise CltmError(f"calibration: `cltm {' '.join(args)}` failed (see the log above)")


def run_variant(config_path: Path, name: str, progress: bool = True) -> Path:
    """Run the pipeline on variant `name`; returns its work directory."""
    raw = yaml.safe_load(Path(config_path).read_text())
    config = load_config(config_path)
    params = variant_params(raw, config, name)
    work = (Path(config.calibration.out) / WORK / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    load_config(work / "params.yaml")  # the variant's params are checked like any others
    steps_file = work / "steps.json"
    steps = json.loads(steps_file.read_text()) if steps_file.is_file() else {}
    flag = [] if progress else ["--no-progress"]
    keys = {
        "corpus": _digest(params["data"]["languages"], params["demo"], _CORPUS_CODE),
        "pretrain": None,
    }
    keys["pretrain"] = _digest(keys["corpus"], params["pretrain"], _PRETRAIN_CODE)
    started = time.monotonic()
    # One MLflow store for the whole repository, not one per variant.
    store = os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd().resolve()}/mlflow.db")

    def kept_or_run(step: str, command: str) -> None:
        if steps.get(step) == keys[step]:
            log.info("calibration %s: %s unchanged, kept", name, step)
            return
        _cltm(*flag, command)
        steps[step] = keys[step]
        steps_file.write_text(json.dumps(steps, indent=2) + "\n")

    with _inside(work), _environ("MLFLOW_TRACKING_URI", store):
        kept_or_run("corpus", "demo-corpus")
        _cltm(*flag, "metadata")  # the TSVs, read by every stage after the corpus (seconds)
        kept_or_run("pretrain", "pretrain")
        for task in TASKS:
            if config.curve.enabled:
                _cltm(*flag, "curve", "--task", task)
            _cltm(*flag, "subsets", "--task", task)
            _cltm(*flag, "grid", "--task", task)
            _cltm(*flag, "cltm", "--task", task)
    log.info("calibration %s: done in %.1f min", name, (time.monotonic() - started) / 60)
    return work
