"""The CPU kernels every stage runs, pinned, so that a result is the same bytes on any x86-64
CPU with AVX2 (docs/findings.md, "Issue 39: where the pretrained encoder diverges").

Left to choose, ATen takes its AVX-512 kernels where the CPU has them (attention, and from it
every gradient, then differ from the AVX2 ones at the first training step), and MKL takes a GEMM
branch by CPU model and vendor (the first convolution already differs). MKL's COMPATIBLE branch
is the one it documents as giving the same results on Intel and other CPUs. Both settings are
read once, when torch loads: `pin` must run before the first `import torch`, which is why the
CLI calls it first thing (its subprocesses and Ray's local workers inherit the environment). A
CPU without AVX2 falls back to ATen's default kernels, and its numbers differ.
"""

from __future__ import annotations

import os

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}


def pin() -> None:
    """Set PINNED in this process's environment (for torch, when it loads, and its children)."""
    os.environ.update(PINNED)


def unpinned_reason() -> str | None:
    """Why this process's torch does not run the pinned kernels (None: it does). Imports
    torch."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY") != PINNED["ATEN_CPU_CAPABILITY"]:
        return "the kernels were not pinned before torch loaded (cltm.kernels.pin)"
    if capability != PINNED["ATEN_CPU_CAPABILITY"].upper():
        return (f"this CPU runs torch's {capability} kernels, not AVX2: its numbers differ from "
                "those every AVX2 CPU computes")
    return None
