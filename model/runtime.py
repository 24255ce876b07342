"""Device and dtype defaults: CUDA + bfloat16 when there is a GPU, else CPU + float32."""

from __future__ import annotations

import os

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
