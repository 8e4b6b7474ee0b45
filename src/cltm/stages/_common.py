"""What several stages do to their outs: a fresh out folder. (No stage logic: stages/ modules
may import this one, never each other.)"""

from __future__ import annotations

import shutil
from pathlib import Path


def fresh_dir(path: Path, note: str | None = None) -> Path:
    """`path` emptied (or made), holding only README.txt with `note` where one is given."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    if note:
        (path / "README.txt").write_text(note + "\n")
    return path
