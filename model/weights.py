"""Loading weights into the project's own modules.

Formats:
  * GGUF files for Llama-architecture decoders (dequantised through the `gguf` package: F32, F16, BF16,
    Q8_0, Q4_0, Q4_1, K-quants, ...). llama.cpp stores the rows of Q and K permuted for its interleaved-pair
    RoPE; we undo that permutation so one half-split RoPE serves every format.
  * Hugging Face folders: config.json + model.safetensors (or sharded, with model.safetensors.index.json),
    for BERT encoders and Llama / Mistral / Qwen2 decoders.
  * The project's own checkpoint folder: config.json ({"format": "assistant-decoder", ...}) +
    model.safetensors (our parameter names) + tokenizer.json / tokenizer_config.json.

Every problem with a file raises `CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.bert import BertModel
from model.config import DecoderConfig, EncoderConfig
from model.decoder import Decoder
from model.errors import CheckpointError
from model.runtime import resolve_device, resolve_dtype
from model.sources import cache_dir, file_sha256, folder_bytes, format_mb, heartbeat, say
from model.tokenizer import Tokenizer

OWN_FORMAT = "assistant-decoder"
OWN_FORMAT_VERSION = 1
SUPPORTED_DECODER_TYPES = ("llama", "mistral", "qwen2")


@dataclass
class LoadedDecoder:
    """A decoder with everything needed to run it."""

    model: Decoder
    tokenizer: Tokenizer
    config: DecoderConfig
    identity: str  # names the base weights, e.g. "SmolLM2-135M-Instruct.Q4_1.gguf@sha256:b179c9523d0e6a0f"


# ---------------------------------------------------------------------------------------------------------------
# generic helpers
# ---------------------------------------------------------------------------------------------------------------
def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path,
                ignore_missing: tuple[str, ...] = ()) -> None:
    """Copy `state` into `model`, with a clear error for missing, unexpected or mis-shaped tensors."""
    own = model.state_dict()
    # Tied heads share storage: only the embedding needs to be present.
    expected = {k for k in own if not k.endswith(ignore_missing)}
    missing = sorted(expected - state.keys())
    if missing:
        raise CheckpointError(f"{source}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for name, tensor in state.items():
        if name not in own:
            continue
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the model config needs "
                f"{tuple(own[name].shape)}; the file does not match its config"
            )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's model.safetensors, or of its shards listed in model.safetensors.index.json."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = [folder / "model.safetensors"]
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [folder / name for name in sorted(set(weight_map.values()))]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.exists():
            raise CheckpointError(f"{file}: not found (only safetensors weights are supported)")
        try:
            state.update(load_file(str(file)))
        except Exception as exc:
            raise CheckpointError(f"{file}: could not be read as safetensors ({exc}); the file may be "
                                  "truncated or corrupt, download it again") from exc
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def _finish(model: nn.Module, device, dtype) -> nn.Module:
    device = resolve_device(device)
    return model.to(device=device, dtype=resolve_dtype(dtype, device)).eval()


# ---------------------------------------------------------------------------------------------------------------
# encoder (BERT)
# ---------------------------------------------------------------------------------------------------------------
def _bert_state_from_hf(hf: dict[str, torch.Tensor], config: EncoderConfig) -> dict[str, torch.Tensor]:
    """Map Hugging Face BertModel names to ours (q, k, v fused into one qkv matrix)."""
    hf = {k.removeprefix("bert."): v for k, v in hf.items()}
    out = {
        "embeddings.word.weight": hf.get("embeddings.word_embeddings.weight"),
        "embeddings.position.weight": hf.get("embeddings.position_embeddings.weight"),
        "embeddings.token_type.weight": hf.get("embeddings.token_type_embeddings.weight"),
        "embeddings.norm.weight": hf.get("embeddings.LayerNorm.weight"),
        "embeddings.norm.bias": hf.get("embeddings.LayerNorm.bias"),
    }
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}."
        parts = [hf.get(f"{p}attention.self.{n}.weight") for n in ("query", "key", "value")]
        biases = [hf.get(f"{p}attention.self.{n}.bias") for n in ("query", "key", "value")]
        q = f"layers.{i}."
        out[q + "qkv.weight"] = torch.cat(parts) if all(t is not None for t in parts) else None
        out[q + "qkv.bias"] = torch.cat(biases) if all(t is not None for t in biases) else None
        for ours, theirs in [("attn_out", "attention.output.dense"), ("attn_norm", "attention.output.LayerNorm"),
                             ("mlp_in", "intermediate.dense"), ("mlp_out", "output.dense"),
                             ("mlp_norm", "output.LayerNorm")]:
            out[f"{q}{ours}.weight"] = hf.get(f"{p}{theirs}.weight")
            out[f"{q}{ours}.bias"] = hf.get(f"{p}{theirs}.bias")
    return {k: v for k, v in out.items() if v is not None}


def load_encoder_model(folder: str | Path, device=None, dtype=None) -> tuple[BertModel, Tokenizer, EncoderConfig]:
    """Load a BERT-family sentence-embedding model from a Hugging Face / sentence-transformers folder."""
    folder = Path(folder)
    hf_config = _read_json(folder / "config.json")
    if hf_config.get("model_type") != "bert":
        raise CheckpointError(f"{folder / 'config.json'}: model_type {hf_config.get('model_type')!r} is not a "
                              "BERT encoder; pass a BERT-family sentence-embedding model")
    max_len = None
    st_config = folder / "sentence_bert_config.json"
    if st_config.exists():
        max_len = _read_json(st_config).get("max_seq_length")
    pooling = folder / "1_Pooling" / "config.json"
    if pooling.exists() and not _read_json(pooling).get("pooling_mode_mean_tokens", True):
        raise CheckpointError(f"{pooling}: this model uses a pooling other than mean pooling, "
                              "which this encoder does not implement")
    config = EncoderConfig.from_hf(hf_config, max_seq_length=max_len)
    model = BertModel(config)
    _load_state(model, _bert_state_from_hf(_read_safetensors(folder), config), folder)
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
    return _finish(model, device, dtype), tokenizer, config


# ---------------------------------------------------------------------------------------------------------------
# decoder: Hugging Face folders
# ---------------------------------------------------------------------------------------------------------------
def _llama_state_from_hf(hf: dict[str, torch.Tensor], config: DecoderConfig) -> dict[str, torch.Tensor]:
    """Map Hugging Face Llama / Mistral / Qwen2 names to ours."""
    out = {"tok_embeddings.weight": hf.get("model.embed_tokens.weight"), "norm.weight": hf.get("model.norm.weight")}
    if not config.tie_embeddings:
        out["output.weight"] = hf.get("lm_head.weight")
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
             "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
             "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    for i in range(config.n_layers):
        for ours, theirs in names.items():
            out[f"layers.{i}.{ours}.weight"] = hf.get(f"model.layers.{i}.{theirs}.weight")
        if config.qkv_bias:
            for ours, theirs in [("wq", "q_proj"), ("wk", "k_proj"), ("wv", "v_proj")]:
                out[f"layers.{i}.attention.{ours}.bias"] = hf.get(f"model.layers.{i}.self_attn.{theirs}.bias")
    return {k: v for k, v in out.items() if v is not None}


def _load_hf_decoder(folder: Path) -> tuple[Decoder, Tokenizer, DecoderConfig]:
    hf_config = _read_json(folder / "config.json")
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_DECODER_TYPES:
        raise CheckpointError(f"{folder / 'config.json'}: architecture {model_type!r} is not supported; "
                              f"supported decoders: {', '.join(SUPPORTED_DECODER_TYPES)}")
    config = DecoderConfig.from_hf(hf_config)
    model = Decoder(config)
    _load_state(model, _llama_state_from_hf(_read_safetensors(folder), config), folder, ignore_missing=("output.weight",))
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json")
    extra_eos = hf_config.get("eos_token_id")
    if isinstance(extra_eos, int):
        extra_eos = [extra_eos]
    for idx in extra_eos or []:
        token = tokenizer.hf.id_to_token(idx)
        if token and token not in tokenizer.eos_tokens:
            tokenizer.eos_tokens = (*tokenizer.eos_tokens, token)
            tokenizer.__dict__.pop("eos_token_ids", None)
    return model, tokenizer, config


# ---------------------------------------------------------------------------------------------------------------
# decoder: GGUF
# ---------------------------------------------------------------------------------------------------------------
def _gguf_field(field) -> Any:
    try:
        return field.contents()
    except Exception:  # older gguf versions: decode by hand
        if len(field.types) == 1 and field.types[0].name == "STRING":
            return bytes(field.parts[-1]).decode("utf-8")
        values = [field.parts[i] for i in field.data]
        return values[0].item() if len(values) == 1 else [v.item() for v in values]


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and dequantised float32 tensors (numpy, in PyTorch's [out, in] layout) of a GGUF file."""
    meta, raw = read_gguf_raw(path)
    return meta, {name: _dequantise(name, *entry, source=Path(path)) for name, entry in raw.items()}


def read_gguf_raw(path: str | Path) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, int, tuple[int, ...]]]]:
    """Metadata and the tensors as stored: {name: (raw blocks, GGML quantisation type, shape [out, in])}."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: could not be read as a GGUF file ({exc}); it may be truncated or not a "
                              "GGUF file at all: download it again") from exc
    meta = {name: _gguf_field(field) for name, field in reader.fields.items()}
    raw = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))  # GGUF lists dims innermost first
        raw[tensor.name] = (tensor.data, int(tensor.tensor_type), shape)
    return meta, raw


def _dequantise_fast(data: np.ndarray, kind: Any) -> np.ndarray | None:
    """Q4_1 and Q8_0 (the default generator's types) in one vectorised pass; None for other types.
    Q4_1 block: fp16 d, fp16 m, 16 bytes of nibbles (low nibbles are values 0-15, high ones 16-31): q * d + m.
    Q8_0 block: fp16 d, 32 int8: q * d."""
    import gguf

    raw = np.ascontiguousarray(data).view(np.uint8)
    if kind == gguf.GGMLQuantizationType.Q4_1:
        blocks = raw.reshape(-1, 20)                                        # [n_blocks, 20 bytes]
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)       # [n_blocks, 1]
        m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = blocks[:, 4:]                                                  # [n_blocks, 16]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # [n_blocks, 32]
        return (q * d + m).reshape(-1)
    if kind == gguf.GGMLQuantizationType.Q8_0:
        blocks = raw.reshape(-1, 34)
        d = blocks[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = blocks[:, 2:].copy().view(np.int8).astype(np.float32)          # [n_blocks, 32]
        return (q * d).reshape(-1)
    return None


def _dequantise(name: str, data: np.ndarray, qtype: int, shape: tuple[int, ...], source: Path) -> np.ndarray:
    import gguf

    kind = gguf.GGMLQuantizationType(qtype)
    fast = _dequantise_fast(data, kind)
    if fast is not None:
        return fast.reshape(shape)
    try:
        values = gguf.quants.dequantize(data, kind)
    except NotImplementedError as exc:
        raise CheckpointError(f"{source}: tensor {name} uses quantisation {kind.name}, "
                              f"which the gguf package cannot dequantise ({exc})") from exc
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _unpermute_rope(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs -> half-split pairs). w: [n_heads*hd, ...]."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _decoder_config_from_gguf(meta: dict[str, Any], path: Path) -> DecoderConfig:
    arch = meta.get("general.architecture")
    if arch not in ("llama", "qwen2", "mistral"):
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported (supported: llama, qwen2)")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {arch}.{key}")
        return value

    n_heads = int(get("attention.head_count"))
    vocab = meta.get(f"{arch}.vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
    return DecoderConfig(
        vocab_size=int(vocab),
        dim=int(get("embedding_length")),
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", n_heads)),
        ffn_dim=int(get("feed_forward_length")),
        rope_base=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        max_seq_len=int(get("context_length", 2048)),
        tie_embeddings=True,  # decided below from the presence of output.weight
        qkv_bias=arch == "qwen2",
    )


def _llama_state_from_gguf(tensors: dict[str, np.ndarray], config: DecoderConfig) -> dict[str, torch.Tensor]:
    """Map GGUF names to ours, un-permuting Q/K (llama arch only: qwen2 files are not permuted)."""
    out: dict[str, np.ndarray | None] = {
        "tok_embeddings.weight": tensors.get("token_embd.weight"),
        "norm.weight": tensors.get("output_norm.weight"),
    }
    if not config.tie_embeddings:
        out["output.weight"] = tensors.get("output.weight")
    names = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
             "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up",
             "feed_forward.w2": "ffn_down", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
    for i in range(config.n_layers):
        for ours, theirs in names.items():
            out[f"layers.{i}.{ours}.weight"] = tensors.get(f"blk.{i}.{theirs}.weight")
        if config.qkv_bias:
            for ours, theirs in [("wq", "attn_q"), ("wk", "attn_k"), ("wv", "attn_v")]:
                out[f"layers.{i}.attention.{ours}.bias"] = tensors.get(f"blk.{i}.{theirs}.bias")
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, copy=True)) for k, v in out.items() if v is not None}


def _load_gguf_decoder(path: Path, arch_permuted: bool = True, read: tuple | None = None
                       ) -> tuple[Decoder, Tokenizer, DecoderConfig]:
    """`read`: what `read_gguf_raw(path)` returned, when the caller has it already."""
    meta, raw = read or read_gguf_raw(path)
    tensors = {name: _dequantise(name, *entry, source=path) for name, entry in raw.items()}
    config = _decoder_config_from_gguf(meta, path)
    config.tie_embeddings = "output.weight" not in tensors
    model = _decoder_from_gguf_tensors(tensors, config, meta.get("general.architecture") == "llama" and arch_permuted,
                                       path)
    return model, Tokenizer.from_gguf_metadata(meta), config


def _decoder_from_gguf_tensors(tensors: dict[str, np.ndarray], config: DecoderConfig, permuted: bool,
                               source: Path) -> Decoder:
    if permuted:
        for i in range(config.n_layers):
            for key, heads in ((f"blk.{i}.attn_q.weight", config.n_heads), (f"blk.{i}.attn_k.weight", config.n_kv_heads)):
                if key in tensors:
                    tensors[key] = _unpermute_rope(tensors[key], heads)
    model = Decoder(config)
    _load_state(model, _llama_state_from_gguf(tensors, config), source, ignore_missing=("output.weight",))
    return model


# The converted copy of a GGUF file keeps the tensors in their quantised form (about the size of the GGUF
# itself; a float32 copy would be ~5x that) with the parsed config and tokenizer: what is slow in a GGUF is
# parsing the metadata (the vocabulary strings), not dequantising the blocks.
GGUF_CACHE_FORMAT = "assistant-gguf-cache"
GGUF_CACHE_VERSION = 1


def _save_gguf_cache(folder: Path, read: tuple, config: DecoderConfig, tokenizer: Tokenizer, identity: str,
                     stamp: dict[str, Any]) -> None:
    """Write the quantised copy of a GGUF file (`read` = read_gguf_raw(path)), atomically: temp folder, then
    rename."""
    from safetensors.numpy import save_file

    meta, raw = read
    with _atomic_folder(folder) as tmp:
        save_file({name: np.ascontiguousarray(data) for name, (data, _, _) in raw.items()},
                  str(tmp / "tensors.safetensors"))
        tokenizer.save(tmp)
        info = {"format": GGUF_CACHE_FORMAT, "version": GGUF_CACHE_VERSION, "config": config.to_dict(),
                "identity": identity, "permuted": meta.get("general.architecture") == "llama",
                "tensors": {name: [qtype, list(shape)] for name, (_, qtype, shape) in raw.items()}, **stamp}
        (tmp / "config.json").write_text(json.dumps(info), encoding="utf-8")


@contextmanager
def _atomic_folder(folder: Path):
    """Yield a temporary sibling folder to fill; on success it replaces `folder`, on failure it is removed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        tmp.chmod(0o755)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_gguf_cache(folder: Path) -> tuple[Decoder, Tokenizer, DecoderConfig, str]:
    from safetensors.numpy import load_file

    info = _read_json(folder / "config.json")
    file = folder / "tensors.safetensors"
    try:
        stored = load_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"{file}: could not be read ({exc}); the cache may be truncated") from exc
    tensors = {name: _dequantise(name, stored[name], qtype, tuple(shape), source=file)
               for name, (qtype, shape) in info["tensors"].items()}
    config = DecoderConfig.from_dict(info["config"])
    model = _decoder_from_gguf_tensors(tensors, config, bool(info.get("permuted")), file)
    return model, Tokenizer.load(folder), config, info.get("identity") or folder.name


# ---------------------------------------------------------------------------------------------------------------
# decoder: own format (also the converted-GGUF cache)
# ---------------------------------------------------------------------------------------------------------------
def save_checkpoint(folder: str | Path, model: Decoder, tokenizer: Tokenizer, identity: str = "",
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a decoder in the project's own format, atomically (temp folder, then rename)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    with _atomic_folder(folder) as tmp:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        if model.config.tie_embeddings:
            state.pop("output.weight", None)
        save_file(state, str(tmp / "model.safetensors"))
        tokenizer.save(tmp)
        meta = {"format": OWN_FORMAT, "version": OWN_FORMAT_VERSION, "config": model.config.to_dict(),
                "identity": identity, **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return folder


def _load_own(folder: Path) -> tuple[Decoder, Tokenizer, DecoderConfig, str]:
    from safetensors.torch import load_file

    meta = _read_json(folder / "config.json")
    config = DecoderConfig.from_dict(meta["config"])
    model = Decoder(config)
    file = folder / "model.safetensors"
    try:
        state = load_file(str(file))
    except Exception as exc:
        raise CheckpointError(f"{file}: could not be read ({exc}); the checkpoint may be truncated") from exc
    _load_state(model, state, file, ignore_missing=("output.weight",))
    return model, Tokenizer.load(folder), config, meta.get("identity") or folder.name


def _converted_cache_dir(path: Path, suffix: str = ".qconverted") -> Path:
    """Where the converted copy of a GGUF file lives: beside it (or in the cache dir if that is read-only).
    `.qconverted` holds the quantised copy; `.converted` was the float32 copy of earlier versions."""
    beside = path.with_name(path.name + suffix)
    if os.access(path.parent, os.W_OK):
        return beside
    return cache_dir() / "converted" / (path.name + suffix)


def gguf_identity(path: Path, sha256: str | None = None) -> str:
    return f"{path.name}@sha256:{(sha256 or file_sha256(path))[:16]}"


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------
def load_decoder(path: str | Path, device=None, dtype=None, use_converted_cache: bool = True) -> LoadedDecoder:
    """Load a decoder from a .gguf file, a Hugging Face folder or a project checkpoint folder.

    A GGUF file is parsed and dequantised once (~6 s for SmolLM2-135M); the result is cached as a project
    copy next to it (`<file>.qconverted/`: the quantised blocks, config and tokenizer, keyed by the file's size
    and mtime) and later loads read that.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.exists():
            raise CheckpointError(f"{path}: a model folder needs a config.json (Hugging Face or project format)")
        if _read_json(config_path).get("format") == OWN_FORMAT:
            model, tokenizer, config, identity = _load_own(path)
        else:
            model, tokenizer, config = _load_hf_decoder(path)
            identity = f"{path.name}@{hashlib.sha256(config_path.read_bytes()).hexdigest()[:16]}"
    elif path.suffix.lower() == ".gguf":
        stat = path.stat()
        stamp = {"source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}
        cached = _converted_cache_dir(path)
        loaded = None
        if use_converted_cache and (cached / "config.json").exists():
            meta = _read_json(cached / "config.json")
            current = meta.get("format") == GGUF_CACHE_FORMAT and meta.get("version") == GGUF_CACHE_VERSION
            if current and all(meta.get(k) == v for k, v in stamp.items()):
                try:
                    loaded = _load_gguf_cache(cached)
                except (CheckpointError, KeyError, ValueError):
                    loaded = None  # a broken cache is rebuilt from the GGUF
        if loaded is None:
            started = time.perf_counter()
            first = not (cached / "config.json").exists()
            if use_converted_cache and first:
                say(f"converting {path.name} ({format_mb(path.stat().st_size)}) for fast loading (first run only)...")
            with heartbeat("converting") if use_converted_cache and first else nullcontext():
                read = read_gguf_raw(path)
                model, tokenizer, config = _load_gguf_decoder(path, read=read)
            identity = gguf_identity(path)
            if use_converted_cache:
                try:
                    _save_gguf_cache(cached, read, config, tokenizer, identity, stamp)
                    shutil.rmtree(_converted_cache_dir(path, ".converted"), ignore_errors=True)  # old float32 copy
                    if first:
                        say(f"converted in {time.perf_counter() - started:.1f} s; cached at {cached} "
                            f"({format_mb(folder_bytes(cached))})")
                except OSError:
                    pass  # caching is an optimisation; a read-only disk must not stop loading
        else:
            model, tokenizer, config, identity = loaded
    else:
        raise CheckpointError(f"{path}: unknown model file type; pass a .gguf file or a model folder")
    model = _finish(model, device, dtype)
    return LoadedDecoder(model=model, tokenizer=tokenizer, config=config, identity=identity)
