"""The `pretrain` stage: HuBERT's first iteration on the demo corpus's training speakers.

With pretrain.enabled: false it only leaves a note and a summary saying so.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from cltm.config import Config
from cltm.errors import CltmError
from cltm.jsonfile import write_json

log = logging.getLogger(__name__)


def run(config: Config, corpus: Path, metadata: Path, out: Path, metrics: Path,
        progress: bool) -> None:
    p = config.pretrain
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if not p.enabled:
        (out / "README.txt").write_text(
            f"Not pretrained: pretrain.enabled is false; fine-tuning loads "
            f"{config.model.name_or_path}.\n")
        write_json({"enabled": False}, metrics)
        log.info("pretrain.enabled is false: nothing to pretrain")
        return
    if Path(config.model.name_or_path).resolve() != out.resolve():
        raise CltmError(f"pretrain.enabled is true but model.name_or_path "
                        f"({config.model.name_or_path}) is not the pretrained encoder {out}: "
                        f"set model.name_or_path: {out}, or pretrain.enabled: false")
    from cltm.train.pretrain import run_pretrain

    summary = run_pretrain(corpus, metadata, config.data.languages, out, p,
                           workers=config.data.workers, progress=progress)
    write_json({"enabled": True, **{k: v for k, v in summary.items()
                                    if k != "loss_per_epoch"}}, metrics)
