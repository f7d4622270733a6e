"""What every benchmark prints about the machine it ran on: the CPU model and its relevant flags.

Benchmarks are run as scripts (``python benchmarks/X.py``), so this folder is on ``sys.path``
and they import it as ``machine``.
"""

from __future__ import annotations

import platform
from pathlib import Path

# the instruction sets that change which kernels our runtimes pick
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def _cpuinfo(key: str) -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform module knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> str:
    """The flags of :data:`FLAGS_OF_INTEREST` this CPU has, space-separated."""
    flags = set(_cpuinfo("flags").split())
    return " ".join(f for f in FLAGS_OF_INTEREST if f in flags)
