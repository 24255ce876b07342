"""Native CPU kernels for decoding: int4 and int8 weight-only matrix products on int8-quantised activations.

The source is `model/csrc/qmatmul.c` (plain C, AVX2 + OpenMP when the CPU and compiler have them). It is
compiled once per machine, at first use, with the system C compiler (`cc -O3 -march=native -fopenmp`) into
the cache folder (`model.sources.cache_dir() / "kernels"`, default `~/.cache/assistant/kernels/`, about a
second), and
loaded with ctypes; the ctypes call releases the GIL. Nothing is needed at install time.

When there is no C compiler, the build fails, or `ASSISTANT_CPU_KERNELS=0`, `available()` is False and the
quantised layers keep their pure-torch paths (slower decoding, same model). `status()` says which and why.

Why: one decode step of the 135M default model is ~120 small matrix-vector products. torch's CPU int4 kernel
dequantises each weight to float and multiplies in float (compute-bound on AVX2); here each block of 32
weights meets 32 int8 activations in two integer multiply-add instructions, as llama.cpp does.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from model.sources import cache_dir

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "qmatmul.c"
BLOCK = 32  # activations and weights are quantised in blocks of 32 inputs
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"],
    ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11"],  # compilers without -march=native
    ["-O3", "-shared", "-fPIC", "-std=c11"],  # and without OpenMP
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = None  # why the kernels are (not) in use, once loading was tried


def _cpu_fingerprint() -> str:
    """What -march=native depends on: the CPU model and flags (a cache shared between machines stays safe)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(keep) or platform.processor()
    except OSError:
        return platform.machine() + platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(compiler: str, target: Path) -> str:
    """Compile SOURCE into `target` (atomically); returns the flags used. Raises RuntimeError on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            proc = subprocess.run([compiler, *flags, "-o", str(out), str(SOURCE), "-lm"],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(out, target)  # another process building the same file at once is harmless
                return " ".join(flags)
            errors.append(proc.stderr.strip().splitlines()[-1:] or ["(no message)"])
    raise RuntimeError(f"{compiler} could not build {SOURCE.name}: {errors}")


def _load() -> ctypes.CDLL | None:
    global _lib, _status
    if os.environ.get("ASSISTANT_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        _status = "off (ASSISTANT_CPU_KERNELS=0)"
        return None
    compiler = _compiler()
    if compiler is None:
        _status = "off: no C compiler found (install gcc or set CC); decoding uses torch's kernels"
        return None
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + _cpu_fingerprint().encode() + compiler.encode() + torch.__version__.encode())
    target = cache_dir() / "kernels" / f"qmatmul-{key.hexdigest()[:16]}.so"
    try:
        how = "cached"
        if not target.is_file():
            how = "built with " + _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        _status = f"off: {exc}; decoding uses torch's kernels"
        log.warning("native CPU kernels unavailable: %s", exc)
        return None
    if lib.qm_block_size() != BLOCK:  # the Python side lays out scales for this block size
        _status = f"off: {target.name} uses blocks of {lib.qm_block_size()}, not {BLOCK}"
        return None
    i64, cint, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.qm_q4_matmul.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, ptr, cint]
    lib.qm_q8_matmul.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr, cint]
    lib.qm_decode_layers.argtypes = [ptr, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, cint, cint]
    lib.qm_q4_matmul.restype = lib.qm_q8_matmul.restype = lib.qm_decode_layers.restype = cint
    simd = ("AVX2 + F16C" if lib.qm_has_f16c() else "AVX2") if lib.qm_has_avx2() else "portable C"
    _status = f"on ({simd}; {how}; {target})"
    _lib = lib
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None when unavailable (see `status()`)."""
    if _status is None:
        with _lock:
            if _status is None:
                _load()
    return _lib


def has_f16c() -> bool:
    """Whether the kernels can keep the KV cache in float16 (conversion instructions built in)."""
    lib = library()
    return lib is not None and bool(lib.qm_has_f16c())


def available() -> bool:
    """Whether the native CPU kernels can be used in this process."""
    return library() is not None


def status() -> str:
    """A one-line description: on (and how) or off (and why)."""
    library()
    return _status or "unknown"


def _float_rows(x: torch.Tensor, in_features: int) -> torch.Tensor:
    rows = x.reshape(-1, in_features)  # [M, K]
    if rows.dtype is not torch.float32 or not rows.is_contiguous():
        rows = rows.to(torch.float32, memory_format=torch.contiguous_format)
    return rows


def _library_or_raise() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError(f"native CPU kernels are {status()}")
    return lib


def q4_matmul(x: torch.Tensor, nibbles: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ W^T -> [M, N] float32 (M = rows of x), W [N, K] given as int4 groups of 32
    (model.quant.Int4Linear's buffers): nibbles [N, K/2] uint8, scales and mins [N, K/32] float32, all
    contiguous on CPU."""
    lib = _library_or_raise()
    n, k = nibbles.shape[0], nibbles.shape[1] * 2
    rows = _float_rows(x, k)
    out = torch.empty((rows.shape[0], n), dtype=torch.float32)
    if lib.qm_q4_matmul(rows.data_ptr(), rows.shape[0], k, nibbles.data_ptr(), scales.data_ptr(),
                        mins.data_ptr(), n, out.data_ptr(), torch.get_num_threads()):
        raise RuntimeError(f"int4 kernel failed for x {tuple(rows.shape)} and weight [{n}, {k}]")
    return out


def q8_matmul(x: torch.Tensor, weight: torch.Tensor, block_scales: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ W^T -> [M, N] float32, W = weight [N, K] int8 times block_scales [N, K/32] float32
    (one scale per block of 32 inputs; a per-channel scale is passed repeated)."""
    lib = _library_or_raise()
    n, k = weight.shape
    rows = _float_rows(x, k)
    out = torch.empty((rows.shape[0], n), dtype=torch.float32)
    if lib.qm_q8_matmul(rows.data_ptr(), rows.shape[0], k, weight.data_ptr(), block_scales.data_ptr(), n,
                        out.data_ptr(), torch.get_num_threads()):
        raise RuntimeError(f"int8 kernel failed for x {tuple(rows.shape)} and weight [{n}, {k}]")
    return out
