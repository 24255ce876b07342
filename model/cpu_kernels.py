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
import functools
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
ENCODER16_SOURCE = Path(__file__).resolve().parent / "csrc" / "encoder_int16.c"  # its int16 mode (fused linears)
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
_encoder16_lib: ctypes.CDLL | None = None
_encoder16_status: str | None = None  # and for its int16 library


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


# ---- the encoder's int16 mode (model/csrc/encoder_int16.c, used by model.encoder_quant's Int16 classes) ----

ENCODER16_SIMD = {1: "AVX2", 0: "portable C"}
ENCODER16_PANEL = 16  # output columns per packed int16 weight panel (model.encoder_quant.pack_weight_int16)


def _load_encoder16() -> None:
    global _encoder16_lib, _encoder16_status
    lib, how = _open_or_why(ENCODER16_SOURCE, "native encoder int16 kernels", "the encoder stays in float")
    if lib is None:
        _encoder16_status = how
        return
    if lib.e16_panel() != ENCODER16_PANEL:
        _encoder16_status = f"off: {ENCODER16_SOURCE.name} uses panels of {lib.e16_panel()}, not {ENCODER16_PANEL}"
        return
    i64, cint, ptr, flt = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_float
    lib.e16_quantize_rows.argtypes = [ptr, i64, i64, i64, cint, ptr, ptr, cint]
    lib.e16_quantize_rows.restype = None
    lib.e16_linear.argtypes = [ptr, ptr, i64, i64, ptr, i64, ptr, ptr, cint, ptr, ptr, ptr, flt, ptr, ptr, ptr,
                               i64, cint, i64, i64, ptr, cint]
    lib.e16_gemm_s32.argtypes = [ptr, i64, i64, ptr, i64, ptr, cint]
    lib.e16_linear.restype = lib.e16_gemm_s32.restype = cint
    lib.e16_rows.argtypes = [ptr, i64, i64, cint, ptr, ptr, ptr, flt, ptr, ptr, i64, cint, cint]
    lib.e16_rows.restype = None
    lib.e16_pack_weight.argtypes = [ptr, i64, i64, i64, cint, ptr, ptr, cint]
    lib.e16_pack_weight.restype = None
    lib.e16_attention.argtypes = [ptr, i64, i64, i64, i64, ptr, ptr, ptr, cint]
    lib.e16_attention.restype = cint
    _encoder16_status = f"on ({ENCODER16_SIMD.get(lib.e16_simd(), '?')}; {how})"
    _encoder16_lib = lib


def encoder16_library() -> ctypes.CDLL | None:
    """The encoder's int16 kernel library, built on first use; None when unavailable (`encoder16_status()`)."""
    if _encoder16_status is None:
        with _lock:
            if _encoder16_status is None:
                _load_encoder16()
    return _encoder16_lib


def encoder16_available() -> bool:
    """Whether the encoder's native int16 kernels can be used in this process."""
    return encoder16_library() is not None


def encoder16_simd() -> str | None:
    """Which SIMD path the int16 kernels were built with ("AVX2", "portable C"), None when unavailable."""
    lib = encoder16_library()
    return None if lib is None else ENCODER16_SIMD.get(lib.e16_simd(), "?")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def encoder16_status() -> str:
    """One line: the encoder's int16 kernels on (which SIMD path, cached or built) or off (and why)."""
    encoder16_library()
    return _encoder16_status or "unknown"


def _encoder16_or_raise() -> ctypes.CDLL:
    lib = encoder16_library()
    if lib is None:
        raise RuntimeError(f"native encoder int16 kernels are {encoder16_status()}")
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def int16_quantize_rows(rows: torch.Tensor, padded_k: int, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [M, K] float32 contiguous -> (q [M, padded_k] int16 = rint(x * levels / max|x|), zeros past K;
    scales [M] = max|x| / levels)."""
    lib = _encoder16_or_raise()
    m, k = rows.shape
    q = torch.empty((m, padded_k), dtype=torch.int16)
    scales = torch.empty(m, dtype=torch.float32)
    lib.e16_quantize_rows(rows.data_ptr(), m, k, padded_k, levels, q.data_ptr(), scales.data_ptr(),
                          torch.get_num_threads())
    return q, scales


def int16_pack_weight(weight: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [N, K] float32 -> (panels [ceil(N/16), Kp/2, 16, 2] int16 of rint(w / s) clamped to +-levels, zeros
    past N and K (Kp = K rounded up to 2); scales s [N] = max(max|w|, 1e-12) / levels): one pass in C."""
    lib = _encoder16_or_raise()
    weight = weight.to(torch.float32, memory_format=torch.contiguous_format)
    n, k = weight.shape
    kp = -(-k // 2) * 2
    packed = torch.empty((-(-n // ENCODER16_PANEL), kp // 2, ENCODER16_PANEL, 2), dtype=torch.int16)
    scales = torch.empty(n, dtype=torch.float32)
    lib.e16_pack_weight(weight.data_ptr(), n, k, kp, levels, packed.data_ptr(), scales.data_ptr(),
                        torch.get_num_threads())
    return packed, scales


def int16_gemm_s32(a: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    """The exact int32 sums a @ qw^T -> [M, n]: a [M, Kp] int16, packed weight panels [n_panels, Kp/2, 16, 2]."""
    lib = _encoder16_or_raise()
    out = torch.empty((a.shape[0], n), dtype=torch.int32)
    if lib.e16_gemm_s32(a.data_ptr(), a.shape[0], a.shape[1], packed.data_ptr(), n, out.data_ptr(),
                        torch.get_num_threads()):
        raise RuntimeError(f"int16 GEMM failed for a {tuple(a.shape)} and {n} outputs")
    return out


def int16_linear(a: torch.Tensor, a_scales: torch.Tensor, packed: torch.Tensor, n: int, w_scales: torch.Tensor,
                 bias: torch.Tensor | None, *, gelu: bool = False, residual: torch.Tensor | None = None,
                 norm: tuple[torch.Tensor, torch.Tensor, float] | None = None, keep_float: bool = True,
                 quantize: tuple[int, int] | None = None, head_major: tuple[int, int] | None = None,
                 out: torch.Tensor | None = None, q_out: torch.Tensor | None = None,
                 scales_out: torch.Tensor | None = None, row_pos: torch.Tensor | None = None, batch: int | None = None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """One fused encoder linear: y = a_scales[m] * w_scales[n] * (a @ qw^T) + bias, then per row GELU (if
    `gelu`), + residual [M, n], LayerNorm (`norm` = (gamma, beta, eps)).

    Returns (y [M, n] float32 if `keep_float` else None, q [M, kp] int16, scales [M]) where `quantize` =
    (kp, levels) also quantises each finished row for the next product (else both None).
    `head_major` = (seq, head_dim): y comes back as [B, n / head_dim, seq, head_dim] (M = B * seq) instead, the
    layout `int16_attention` reads (no row epilogue allowed then). With `row_pos` [M] int64 (and `batch` = B),
    the rows are packed real tokens: row m goes to position row_pos[m] = b * seq + t of that layout (the padding
    positions are left as they were).
    `out`, `q_out`, `scales_out`: tensors of those shapes (contiguous, float32 / int16 / float32) to write into
    instead of new ones (a caller reusing its buffers; none may be an input)."""
    lib = _encoder16_or_raise()
    m = a.shape[0]
    seq, head_dim = head_major if head_major is not None else (0, 0)
    if row_pos is not None:
        if head_major is None or batch is None or row_pos.shape != (m,) or row_pos.dtype != torch.int64:
            raise ValueError("row_pos needs head_major, batch and one int64 position per row")
        if m and (int(row_pos.min()) < 0 or int(row_pos.max()) >= batch * seq):
            raise ValueError(f"row positions outside the [{batch}, {seq}] layout")
        row_pos = row_pos.contiguous()
    sequences = batch if row_pos is not None else (m // seq if seq else 0)
    shape = (sequences, n // head_dim, seq, head_dim) if head_major is not None else (m, n)
    if not keep_float and head_major is None:
        out = None
    elif out is None:
        out = torch.empty(shape, dtype=torch.float32)
    q = scales = None
    if quantize is not None:
        q = q_out if q_out is not None else torch.empty((m, quantize[0]), dtype=torch.int16)
        scales = scales_out if scales_out is not None else torch.empty(m, dtype=torch.float32)
    for t, want, dtype in ((out, shape, torch.float32), (q, (m, quantize[0]) if quantize else None, torch.int16),
                           (scales, (m,), torch.float32)):
        if t is not None and (tuple(t.shape) != want or t.dtype != dtype or not t.is_contiguous()):
            raise ValueError(f"an output buffer of shape {tuple(t.shape)} {t.dtype} where {want} {dtype} is needed")
    gamma, beta, eps = norm if norm is not None else (None, None, 0.0)
    rc = lib.e16_linear(a.data_ptr(), a_scales.data_ptr(), m, a.shape[1], packed.data_ptr(), n,
                        w_scales.data_ptr(), _ptr(bias), int(gelu), _ptr(residual), _ptr(gamma), _ptr(beta),
                        float(eps), _ptr(out), _ptr(q), _ptr(scales), quantize[0] if quantize else 0,
                        quantize[1] if quantize else 0, seq, head_dim, _ptr(row_pos), torch.get_num_threads())
    if rc:
        raise RuntimeError(f"int16 linear failed (code {rc}) for a {tuple(a.shape)} and {n} outputs")
    return out, q, scales


def int16_rows(y: torch.Tensor, *, gelu: bool = False, residual: torch.Tensor | None = None,
               norm: tuple[torch.Tensor, torch.Tensor, float] | None = None,
               quantize: tuple[int, int] | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`int16_linear`'s row epilogue alone, on y [M, N] float32 contiguous, in place; returns (q, scales) when
    `quantize` = (kp, levels), else (None, None)."""
    lib = _encoder16_or_raise()
    m, n = y.shape
    q = scales = None
    if quantize is not None:
        q = torch.empty((m, quantize[0]), dtype=torch.int16)
        scales = torch.empty(m, dtype=torch.float32)
    gamma, beta, eps = norm if norm is not None else (None, None, 0.0)
    lib.e16_rows(y.data_ptr(), m, n, int(gelu), _ptr(residual), _ptr(gamma), _ptr(beta), float(eps), _ptr(q),
                 _ptr(scales), quantize[0] if quantize else 0, quantize[1] if quantize else 0,
                 torch.get_num_threads())
    return q, scales


def int16_attention(qkv: torch.Tensor, lengths: torch.Tensor | None, out: torch.Tensor | None = None,
                    starts: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional multi-head attention in float32 from a head-major qkv [B, 3 * n_heads, T, hd] (q heads, then
    k, then v; `int16_linear(head_major=...)` writes it) and lengths [B] int32 real tokens per sequence (right
    padding; None = all T) -> [B*T, H] = softmax(q k^T / sqrt(hd)) v per head, heads side by side; query rows
    past a sequence's length are zeros. `out`: a float32 [B*T, H] tensor to write into (else a new one).
    `starts` [B] int64 (with `lengths`): packed rows instead: sequence b's tokens go to rows starts[b] ..
    starts[b] + lengths[b] - 1 of out [sum of lengths, H] (starts = the lengths' exclusive prefix sums).

    The products run in int16 (q, k per token, v per head dim, p per row quantised; exact int32 sums): within
    about 1e-3 of float attention on real models (cosine 0.99997 for MiniLM's embeddings)."""
    lib = _encoder16_or_raise()
    batch, groups, seq, head_dim = qkv.shape
    n_heads = groups // 3
    hidden = n_heads * head_dim
    if lengths is not None:
        lengths = lengths.to(torch.int32).contiguous()
    rows = batch * seq
    if starts is not None:
        if lengths is None or starts.shape != (batch,):
            raise ValueError("packed attention needs lengths and one start per sequence")
        starts = starts.to(torch.int64).contiguous()
        if bool((lengths < 0).any()) or bool((lengths > seq).any()):
            raise ValueError(f"lengths outside 0..{seq}")
        rows = int((starts + lengths).max()) if batch else 0
        if batch and int(starts.min()) < 0:
            raise ValueError("negative start rows")
    if out is None:
        out = torch.empty((rows, hidden), dtype=torch.float32)
    elif (out.shape[1:] != (hidden,) or out.shape[0] < rows or out.dtype != torch.float32
          or not out.is_contiguous() or (starts is None and out.shape[0] != rows)):
        raise ValueError(f"an output buffer of shape {tuple(out.shape)} where {(rows, hidden)} is needed")
    rc = lib.e16_attention(qkv.data_ptr(), batch, seq, hidden, n_heads, _ptr(lengths), _ptr(starts),
                           out.data_ptr(), torch.get_num_threads())
    if rc:
        raise RuntimeError(f"attention kernel failed (code {rc}) for qkv {tuple(qkv.shape)} and {n_heads} heads")
    return out
