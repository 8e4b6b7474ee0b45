"""The `demo-corpus` stage: the eSpeak NG corpus in Common Voice layout (data.source: demo).

With data.source: commonvoice it only leaves a note, so that `dvc repro` spends no minutes
generating a corpus nobody reads. The demo's own checks (voices, speaker counts) run here and
only here: the other stages never import the corpus generator.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from cltm.config import Config

log = logging.getLogger(__name__)


def run(config: Config, out: Path, progress: bool) -> None:
    from cltm.data import demo

    if config.data.source != "demo":
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "README.txt").write_text(
            "Not generated: data.source is 'commonvoice', so the pipeline reads "
            f"{config.data.commonvoice.root}.\n")
        log.info("data.source is commonvoice: demo corpus skipped")
        return
    # demo.* are DemoSpec's fields by name, but for null_control (a key that says what it is)
    settings = dataclasses.asdict(config.demo)
    spec = demo.DemoSpec(languages=tuple(config.data.languages),
                         null=settings.pop("null_control"), **settings)
    demo.check_spec(spec)  # before anything is removed: a bad edit leaves the last corpus
    if out.exists():
        shutil.rmtree(out)  # the out is DVC's: an earlier corpus, or the note left above
    demo.write_demo_corpus(out, spec, workers=config.data.workers, progress=progress)
    log.info("demo corpus written to %s", out)
