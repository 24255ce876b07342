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
ENCODER_SOURCE = Path(__file__).resolve().parent / "csrc" / "encoder_int8.c"  # the encoder's int8 GEMM
BLOCK = 32  # activations and weights are quantised in blocks of 32 inputs
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"],
    ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c11"],  # compilers without -march=native
    ["-O3", "-shared", "-fPIC", "-std=c11"],  # and without OpenMP
)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status: str | None = None  # why the kernels are (not) in use, once loading was tried
_encoder_lib: ctypes.CDLL | None = None
_encoder_status: str | None = None  # the same for the encoder's int8 GEMM library


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


def _build(compiler: str, target: Path, source: Path = SOURCE) -> str:
    """Compile `source` into `target` (atomically); returns the flags used. Raises RuntimeError on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in FLAG_SETS:
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            proc = subprocess.run([compiler, *flags, "-o", str(out), str(source), "-lm"],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(out, target)  # another process building the same file at once is harmless
                return " ".join(flags)
            errors.append(proc.stderr.strip().splitlines()[-1:] or ["(no message)"])
    raise RuntimeError(f"{compiler} could not build {source.name}: {errors}")


def _disabled() -> bool:
    return os.environ.get("ASSISTANT_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off")


def _compile_and_open(source: Path) -> tuple[ctypes.CDLL, str]:
    """Build `source` (or reuse the cached build for this source, CPU, compiler and torch) and open it with
    ctypes; returns the library and how it came ("cached" / "built with FLAGS"). Raises OSError,
    RuntimeError or SubprocessError when it cannot, and LookupError when there is no compiler."""
    compiler = _compiler()
    if compiler is None:
        raise LookupError("no C compiler found (install gcc or set CC)")
    text = source.read_bytes()
    key = hashlib.sha256(text + _cpu_fingerprint().encode() + compiler.encode() + torch.__version__.encode())
    target = cache_dir() / "kernels" / f"{source.stem}-{key.hexdigest()[:16]}.so"
    how = "cached"
    if not target.is_file():
        how = "built with " + _build(compiler, target, source)
    return ctypes.CDLL(str(target)), f"{how}; {target}"


def _open_or_why(source: Path, what: str, otherwise: str) -> tuple[ctypes.CDLL | None, str]:
    """(the library built from `source`, how it came) or (None, the status line saying why not and what runs
    instead: `otherwise`); a build or load failure is also logged as a warning naming `what`."""
    if _disabled():
        return None, "off (ASSISTANT_CPU_KERNELS=0)"
    try:
        return _compile_and_open(source)
    except LookupError as exc:
        return None, f"off: {exc}; {otherwise}"
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("%s unavailable: %s", what, exc)
        return None, f"off: {exc}; {otherwise}"


def _load() -> ctypes.CDLL | None:
    global _lib, _status
    lib, how = _open_or_why(SOURCE, "native CPU kernels", "decoding uses torch's kernels")
    if lib is None:
        _status = how
        return None
    if lib.qm_block_size() != BLOCK:  # the Python side lays out scales for this block size
        _status = f"off: {SOURCE.name} uses blocks of {lib.qm_block_size()}, not {BLOCK}"
        return None
    i64, cint, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.qm_q4_matmul.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, ptr, cint]
    lib.qm_q8_matmul.argtypes = [ptr, i64, i64, ptr, ptr, i64, ptr, cint]
    lib.qm_decode_layers.argtypes = [ptr, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, i64, cint, cint]
    lib.qm_q4_matmul.restype = lib.qm_q8_matmul.restype = lib.qm_decode_layers.restype = cint
    simd = ("AVX2 + F16C" if lib.qm_has_f16c() else "AVX2") if lib.qm_has_avx2() else "portable C"
    _status = f"on ({simd}; {how})"
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


# ---- the encoder's int8 x int8 -> int32 GEMM (model/csrc/encoder_int8.c, used by model.encoder_quant) ----

ENCODER_SIMD = {3: "AVX512-VNNI", 2: "AVX-VNNI", 1: "AVX2", 0: "portable C"}
ENCODER_PANEL = 64  # output columns per packed weight panel (model.encoder_quant.pack_weight's layout)


def _load_encoder() -> None:
    global _encoder_lib, _encoder_status
    lib, how = _open_or_why(ENCODER_SOURCE, "native encoder kernels", "the encoder stays in float")
    if lib is None:
        _encoder_status = how
        return
    if lib.ei_panel() != ENCODER_PANEL:  # the Python side packs weights in panels of this width
        _encoder_status = f"off: {ENCODER_SOURCE.name} uses panels of {lib.ei_panel()}, not {ENCODER_PANEL}"
        return
    i64, cint, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.ei_quantize_rows.argtypes = [ptr, i64, i64, i64, ptr, ptr, cint]
    lib.ei_quantize_rows.restype = None
    lib.ei_gemm_s32.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, cint]
    lib.ei_gemm_f32.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, cint]
    lib.ei_gemm_s32.restype = lib.ei_gemm_f32.restype = cint
    _encoder_status = f"on ({ENCODER_SIMD.get(lib.ei_simd(), '?')}; {how})"
    _encoder_lib = lib


def encoder_library() -> ctypes.CDLL | None:
    """The encoder's int8 GEMM library, built on first use; None when unavailable (see `encoder_status()`)."""
    if _encoder_status is None:
        with _lock:
            if _encoder_status is None:
                _load_encoder()
    return _encoder_lib


def encoder_available() -> bool:
    """Whether the encoder's native int8 kernels can be used in this process."""
    return encoder_library() is not None


def encoder_status() -> str:
    """One line: the encoder kernels on (which SIMD path, cached or built) or off (and why)."""
    encoder_library()
    return _encoder_status or "unknown"


def _encoder_or_raise() -> ctypes.CDLL:
    lib = encoder_library()
    if lib is None:
        raise RuntimeError(f"native encoder kernels are {encoder_status()}")
    return lib


def quantize_rows_u8(rows: torch.Tensor, padded_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [M, K] float32 contiguous -> (u8 [M, padded_k] = round(x / s) + 128, scales [M] = max|x| / 127)."""
    lib = _encoder_or_raise()
    m, k = rows.shape
    q = torch.empty((m, padded_k), dtype=torch.uint8)
    scales = torch.empty(m, dtype=torch.float32)
    lib.ei_quantize_rows(rows.data_ptr(), m, k, padded_k, q.data_ptr(), scales.data_ptr(), torch.get_num_threads())
    return q, scales


def int8_gemm_s32(a_u8: torch.Tensor, packed: torch.Tensor, n: int, comp: torch.Tensor) -> torch.Tensor:
    """The exact int32 sums (a_u8 - 128) @ qw^T -> [M, n]: a_u8 [M, Kp] uint8, packed weight panels
    [n_panels, Kp/4, 64, 4] int8, comp [n_panels*64] int32 = 128 * colsum(qw)."""
    lib = _encoder_or_raise()
    out = torch.empty((a_u8.shape[0], n), dtype=torch.int32)
    if lib.ei_gemm_s32(a_u8.data_ptr(), a_u8.shape[0], a_u8.shape[1], packed.data_ptr(), n, comp.data_ptr(),
                       out.data_ptr(), torch.get_num_threads()):
        raise RuntimeError(f"int8 GEMM failed for a {tuple(a_u8.shape)} and {n} outputs")
    return out


def int8_gemm_f32(a_u8: torch.Tensor, a_scales: torch.Tensor, packed: torch.Tensor, n: int, comp: torch.Tensor,
                  w_scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """a_scales[m] * w_scales[n] * (the int32 sums) + bias[n] -> [M, n] float32 (w_scales, bias padded to the
    panels like comp)."""
    lib = _encoder_or_raise()
    out = torch.empty((a_u8.shape[0], n), dtype=torch.float32)
    if lib.ei_gemm_f32(a_u8.data_ptr(), a_u8.shape[0], a_u8.shape[1], packed.data_ptr(), n, comp.data_ptr(),
                       a_scales.data_ptr(), w_scales.data_ptr(), 0 if bias is None else bias.data_ptr(),
                       out.data_ptr(), torch.get_num_threads()):
        raise RuntimeError(f"int8 GEMM failed for a {tuple(a_u8.shape)} and {n} outputs")
    return out
