"""The packed audio file: every selected clip once, 16 kHz mono 16-bit, memory-mapped by workers.

The pack is `audio.pcm` (raw little-endian int16) beside `audio.json`, which holds the format and
each clip's offset and length. Raw PCM keeps appending trivial, so a clip that fails to decode can
be replaced without rewriting what was already written. Numpy only: the GPU workers read packs on
machines that have no audio decoders installed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
PCM_NAME = "audio.pcm"
INDEX_NAME = "audio.json"
_INT16_SCALE = 32767.0


def to_int16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * _INT16_SCALE).astype("<i2")


@dataclass(frozen=True)
class Slot:
    offset: int
    n_samples: int


class PackWriter:
    """Appends clips to `audio.pcm`; `finish` writes the index of the clips that were kept."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.out_dir / PCM_NAME, "wb")
        self._n = 0
        self.slots: dict[str, Slot] = {}

    def append(self, clip: str, samples: np.ndarray) -> None:
        samples = np.ascontiguousarray(samples, dtype="<i2")
        self._fh.write(samples.tobytes())
        self.slots[clip] = Slot(self._n, int(samples.size))
        self._n += int(samples.size)

    def finish(self, keep: Sequence[str]) -> dict[str, Slot]:
        """Close the pack holding exactly the clips in `keep`, in that order."""
        self._fh.close()
        order = [self.slots[c] for c in keep]
        contiguous = sum(s.n_samples for s in order) == self._n and all(
            a.offset + a.n_samples == b.offset for a, b in itertools.pairwise(order)
        )
        if not contiguous:
            # Replacements after a decode failure (or a speaker swap) left unused or out-of-order
            # clips: rewrite once so the pack holds the manifest's clips and nothing else.
            self._compact(keep)
        index = {c: self.slots[c] for c in keep}
        meta = {
            "format": "pcm_s16le",
            "sample_rate": SAMPLE_RATE,
            "channels": 1,
            "n_samples": sum(s.n_samples for s in index.values()),
            "clips": {c: [s.offset, s.n_samples] for c, s in index.items()},
        }
        (self.out_dir / INDEX_NAME).write_text(json.dumps(meta, indent=0))
        return index

    def _compact(self, keep: Sequence[str]) -> None:
        src = self.out_dir / PCM_NAME
        tmp = self.out_dir / (PCM_NAME + ".tmp")
        old = np.memmap(src, dtype="<i2", mode="r") if self._n else np.zeros(0, "<i2")
        new: dict[str, Slot] = {}
        n = 0
        with open(tmp, "wb") as fh:
            for c in keep:
                s = self.slots[c]
                fh.write(np.asarray(old[s.offset : s.offset + s.n_samples]).tobytes())
                new[c] = Slot(n, s.n_samples)
                n += s.n_samples
        del old
        tmp.replace(src)
        self.slots, self._n = new, n


class PackedAudio:
    """Read-only, memory-mapped access to a pack written by PackWriter."""

    def __init__(self, directory: str | Path) -> None:
        directory = Path(directory)
        meta = json.loads((directory / INDEX_NAME).read_text())
        if meta.get("format") != "pcm_s16le" or meta.get("sample_rate") != SAMPLE_RATE:
            raise ValueError(f"{directory / INDEX_NAME}: unsupported pack format {meta!r:.80}")
        self.sample_rate = SAMPLE_RATE
        self.index = {c: Slot(*v) for c, v in meta["clips"].items()}
        n = int(meta["n_samples"])
        self._pcm = np.memmap(directory / PCM_NAME, dtype="<i2", mode="r", shape=(n,)) if n else (
            np.zeros(0, "<i2"))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, clip: str) -> bool:
        return clip in self.index

    def __getitem__(self, clip: str) -> np.ndarray:
        """The clip as float32 in [-1, 1] at 16 kHz."""
        s = self.index[clip]
        return self._pcm[s.offset : s.offset + s.n_samples].astype(np.float32) / _INT16_SCALE

    def seconds(self, clip: str) -> float:
        return self.index[clip].n_samples / SAMPLE_RATE
