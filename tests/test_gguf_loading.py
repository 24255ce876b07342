"""GGUF and sharded-folder loading on tiny models, for every quantisation type the gguf package writes.

A tiny decoder is written as a llama-architecture GGUF the way llama.cpp's converter writes one (Q and K rows
permuted for interleaved RoPE, byte-level BPE vocabulary in the metadata), in F32/F16/BF16/Q8_0/Q4_0/Q4_1/
Q5_K/Q4_K/Q6_K; loading it back through `load_decoder` must give the model whose weights are the
(de)quantised originals: same logits as our own decoder holding those dequantised weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from model.config import DecoderConfig  # noqa: E402
from model.decoder import Decoder  # noqa: E402
from model.weights import load_decoder  # noqa: E402

Q = gguf.GGMLQuantizationType


def _permute_for_llama_cpp(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter permutation of Q/K rows (half-split pairs -> interleaved pairs)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, model: Decoder, tokenizer, qtype, raw: dict | None = None) -> None:
    """Write `model` as llama.cpp would; `raw` maps GGUF names to ready-made quantised blocks to store instead."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_base)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    vocab = tokenizer.hf.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    import json

    merges = json.loads(tokenizer.hf.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    names = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
             "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up",
             "feed_forward.w2": "ffn_down", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    raw = raw or {}
    tensors = {"token_embd.weight": state["tok_embeddings.weight"], "output_norm.weight": state["norm.weight"]}
    for i in range(cfg.n_layers):
        for ours, theirs in names.items():
            w = state[f"layers.{i}.{ours}.weight"]
            if theirs == "attn_q":
                w = _permute_for_llama_cpp(w, cfg.n_heads)
            elif theirs == "attn_k":
                w = _permute_for_llama_cpp(w, cfg.n_kv_heads)
            tensors[f"blk.{i}.{theirs}.weight"] = w
    for name, w in tensors.items():
        if name in raw:
            writer.add_tensor(name, raw[name], raw_shape=raw[name].shape, raw_dtype=qtype)
        elif w.ndim == 1 or qtype not in WRITABLE:  # norms stay float32, as llama.cpp keeps them
            writer.add_tensor(name, w)
        else:
            data = gguf.quants.quantize(w, qtype)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


WRITABLE = {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1}
# gguf's Python package reads K-quants but cannot write them: the tests make random valid blocks instead.
K_QUANTS = {Q.Q4_K: (144, [(0, 4)]), Q.Q5_K: (176, [(0, 4)]), Q.Q6_K: (210, [(208, 210)])}  # bytes, fp16 fields

QTYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16, "Q8_0": Q.Q8_0, "Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1,
          "Q4_K": Q.Q4_K, "Q5_K": Q.Q5_K, "Q6_K": Q.Q6_K}


def _random_k_quant_blocks(model: Decoder, qtype) -> tuple[dict, dict]:
    """Random K-quant blocks (with small, finite fp16 scales) for the matrices that need no RoPE permutation.

    Returns (GGUF name -> raw blocks, our parameter name -> their dequantised float32 values).
    """
    block_bytes, half_fields = K_QUANTS[qtype]
    rng = np.random.default_rng(0)
    targets = {"tok_embeddings.weight": "token_embd.weight"}
    for i in range(model.config.n_layers):
        for ours, theirs in [("attention.wv", "attn_v"), ("attention.wo", "attn_output"),
                             ("feed_forward.w1", "ffn_gate"), ("feed_forward.w3", "ffn_up"),
                             ("feed_forward.w2", "ffn_down")]:
            targets[f"layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
    raw, dequantised = {}, {}
    state = model.state_dict()
    for ours, theirs in targets.items():
        rows, cols = state[ours].shape
        blocks = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
        for start, end in half_fields:
            scales = rng.uniform(0.001, 0.01, size=(rows, cols // 256, (end - start) // 2)).astype(np.float16)
            blocks[..., start:end] = scales.view(np.uint8)
        data = blocks.reshape(rows, -1)
        raw[theirs] = data
        dequantised[ours] = gguf.quants.dequantize(data, qtype).reshape(rows, cols)
    return raw, dequantised


@pytest.fixture(scope="module")
def k_quant_model(tiny_tokenizer):
    """Width 256: K-quants work on super-blocks of 256 values, so every row must be a multiple of 256."""
    cfg = DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size, dim=256, n_heads=4, n_kv_heads=2, ffn_dim=512)
    return Decoder(cfg).init_weights(seed=3).eval()


@pytest.mark.parametrize("name", list(QTYPES))
def test_gguf_round_trip(tmp_path, tiny_tokenizer, k_quant_model, name):
    qtype = QTYPES[name]
    path = tmp_path / f"tiny-{name}.gguf"
    raw, dequantised = _random_k_quant_blocks(k_quant_model, qtype) if qtype in K_QUANTS else ({}, {})
    _write_gguf(path, k_quant_model, tiny_tokenizer, qtype, raw)
    loaded = load_decoder(path, device="cpu", dtype=torch.float32, use_converted_cache=False)
    assert loaded.config.n_kv_heads == 2 and loaded.config.tie_embeddings

    # The expected model: our decoder holding the quantise->dequantise round trip of each matrix.
    expected = Decoder(k_quant_model.config).eval()
    with torch.no_grad():
        for pname, param in k_quant_model.state_dict().items():
            if pname == "output.weight":
                continue
            w = param.numpy().astype(np.float32)
            if pname in dequantised:
                w = dequantised[pname]
            elif w.ndim == 2 and qtype in WRITABLE and qtype != Q.F32:
                w = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype).reshape(w.shape)
            expected.state_dict()[pname].copy_(torch.from_numpy(np.array(w)))
    tokens = torch.randint(0, k_quant_model.config.vocab_size, (2, 15))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), expected(tokens), rtol=1e-4, atol=1e-4)
    assert loaded.tokenizer.encode("café 🙂 0123") == tiny_tokenizer.encode("café 🙂 0123")
    assert loaded.tokenizer.eos_token_ids == (2,)


def test_gguf_converted_cache_is_reused_and_refreshed(tmp_path, tiny_tokenizer, tiny_decoder):
    import os

    path = tmp_path / "tiny.gguf"
    _write_gguf(path, tiny_decoder, tiny_tokenizer, Q.F32)
    first = load_decoder(path, device="cpu")
    cache = tmp_path / "tiny.gguf.qconverted"
    assert (cache / "tensors.safetensors").exists() and not (cache / "model.safetensors").exists()
    second = load_decoder(path, device="cpu")  # from the converted copy
    tokens = torch.randint(0, tiny_decoder.config.vocab_size, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(second.model(tokens), first.model(tokens))
    assert second.identity == first.identity
    # A changed source file is converted again, not served stale from the cache.
    _write_gguf(path, Decoder(tiny_decoder.config).init_weights(seed=9).eval(), tiny_tokenizer, Q.F32)
    os.utime(path, ns=(1, 1))
    third = load_decoder(path, device="cpu")
    with torch.no_grad():
        assert not torch.allclose(third.model(tokens), first.model(tokens))


def test_gguf_cache_keeps_the_quantised_blocks_and_loads_the_same_model(tmp_path, tiny_tokenizer, k_quant_model):
    """The converted copy stores tensors as quantised in the file (not float32): about the GGUF's size."""
    import os

    path = tmp_path / "tiny-q4k.gguf"
    raw, _ = _random_k_quant_blocks(k_quant_model, Q.Q4_K)
    _write_gguf(path, k_quant_model, tiny_tokenizer, Q.Q4_K, raw)
    fresh = load_decoder(path, device="cpu", dtype=torch.float32, use_converted_cache=False)
    load_decoder(path, device="cpu")  # writes the cache
    cache = tmp_path / "tiny-q4k.gguf.qconverted"
    tensors = os.path.getsize(cache / "tensors.safetensors")
    assert tensors < 1.1 * os.path.getsize(path)
    cached = load_decoder(path, device="cpu")
    tokens = torch.randint(0, k_quant_model.config.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(cached.model(tokens), fresh.model(tokens), rtol=0, atol=0)
    assert cached.tokenizer.encode("café 🙂 0123") == tiny_tokenizer.encode("café 🙂 0123")


def test_sharded_hf_folder(tmp_path, tiny_tokenizer):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   tie_word_embeddings=False)
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    tiny_tokenizer.save(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    loaded = load_decoder(tmp_path, device="cpu", dtype=torch.float32)
    tokens = torch.randint(0, cfg.vocab_size, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), ref(tokens).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("qtype", [Q.Q4_1, Q.Q8_0])
def test_fast_dequantisation_matches_the_gguf_package(qtype):
    from model.weights import _dequantise_fast

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    blocks = gguf.quants.quantize(w, qtype)
    np.testing.assert_array_equal(_dequantise_fast(blocks, qtype).reshape(w.shape),
                                  gguf.quants.dequantize(blocks, qtype).reshape(w.shape))
