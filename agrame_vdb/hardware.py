"""What the machine can do fast, detected rather than assumed.

bfloat16 encoding is about twice float32 on a CPU with bfloat16 instructions (AMX on
recent Xeons, AVX-512 BF16 on AMD Zen 4 and later Xeons) and much slower than float32
on one without them (emulated: a rerank took 97.8 ms against 16.2 ms in float32 on an
AMD EPYC without them). ``dtype="auto"`` picks bfloat16 only where it is fast.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_model", "fast_bfloat16"]

#: CPU feature flags (as /proc/cpuinfo names them) that make bfloat16 matrix products fast.
BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is none to read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none to read)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def fast_bfloat16(device: str) -> bool:
    """Whether bfloat16 arithmetic is fast on ``device`` ("cpu", "cuda", "cuda:N")."""
    if device.startswith("cuda"):
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "cpu":
        return any(flag in cpu_flags() for flag in BFLOAT16_FLAGS)
    return False
