"""Device and dtype defaults: CUDA + bfloat16 when there is a GPU, else CPU + float32."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch


def default_device() -> torch.device:
    """The device models run on unless told otherwise (`ASSISTANT_DEVICE` overrides)."""
    name = os.environ.get("ASSISTANT_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere (`ASSISTANT_DTYPE` overrides: float32, bfloat16, float16)."""
    name = os.environ.get("ASSISTANT_DTYPE")
    if name:
        return resolve_dtype(name)
    device = torch.device(device) if device is not None else default_device()
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | None = None) -> torch.dtype:
    """Turn a dtype name ("float32", "bf16", ...) or None into a torch dtype."""
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {
        "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16,
    }
    try:
        return table[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)}") from None


def resolve_device(device: torch.device | str | None) -> torch.device:
    """Turn a device name or None into a torch device (None = the default device)."""
    return default_device() if device is None else torch.device(device)


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True where this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16, read from /proc/cpuinfo).

    There oneDNN runs a bfloat16 matmul about twice as fast as float32; on an AVX2-only CPU bfloat16 is
    emulated and slower than float32, so callers that pick bfloat16 for speed check this first."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False
