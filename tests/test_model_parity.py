"""Parity of our encoder and decoder with the reference implementations on tiny random configs.

The reference models (transformers' BertModel, LlamaForCausalLM, Qwen2ForCausalLM) are created with random
weights, saved as Hugging Face folders, and loaded through our own loader; outputs must match in float32.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from model.decoder import Decoder  # noqa: E402
from model.weights import load_decoder, load_encoder_model  # noqa: E402


def _write_bert_tokenizer(folder, vocab_size: int) -> None:
    """A WordPiece tokenizer.json whose vocabulary has [PAD]/[CLS]/[SEP] and filler tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for i in range(4, vocab_size):
        vocab[f"w{i}"] = i
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


def test_bert_matches_transformers(tmp_path):
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, hidden_act="gelu")
    torch.manual_seed(0)
    ref = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    ref.save_pretrained(tmp_path)
    _write_bert_tokenizer(tmp_path, 120)
    ours, _, _ = load_encoder_model(tmp_path, device="cpu", dtype=torch.float32)

    input_ids = torch.randint(4, 120, (3, 17))
    mask = torch.ones_like(input_ids)
    mask[1, 11:] = 0  # padded rows must not change the real tokens' states
    mask[2, 5:] = 0
    types = torch.zeros_like(input_ids)
    types[:, 8:] = 1
    with torch.no_grad():
        expected = ref(input_ids=input_ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(input_ids, mask, types)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-5, atol=1e-5)


DECODER_CASES = {
    "llama-gqa-tied": dict(kind="llama", n_kv=2, tied=True, bias=False),
    "llama-gqa-untied": dict(kind="llama", n_kv=2, tied=False, bias=False),
    "llama-mha-untied": dict(kind="llama", n_kv=4, tied=False, bias=False),
    "qwen2-qkv-bias": dict(kind="qwen2", n_kv=2, tied=True, bias=True),
}


def _reference_decoder(kind: str, n_kv: int, tied: bool, bias: bool):
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=n_kv, max_position_embeddings=128, rope_theta=10000.0,
                  tie_word_embeddings=tied, rms_norm_eps=1e-5)
    if kind == "llama":
        cfg = transformers.LlamaConfig(attention_bias=bias, **common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # random norms and biases too, so every parameter is exercised
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
    return model.eval()


def _save_with_tokenizer(model, folder) -> None:
    from model.tokenizer import train_bpe_tokenizer

    model.save_pretrained(folder)
    train_bpe_tokenizer(["hello world"] * 5, vocab_size=270).save(folder)


@pytest.mark.parametrize("case", DECODER_CASES, ids=list(DECODER_CASES))
def test_decoder_matches_transformers(tmp_path, case):
    ref = _reference_decoder(**DECODER_CASES[case])
    _save_with_tokenizer(ref, tmp_path)
    loaded = load_decoder(tmp_path, device="cpu", dtype=torch.float32)
    assert loaded.config.tie_embeddings == DECODER_CASES[case]["tied"]
    assert loaded.config.qkv_bias == DECODER_CASES[case]["bias"]
    tokens = torch.randint(0, 97, (2, 23))
    with torch.no_grad():
        expected = ref(tokens).logits
        got = loaded.model(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_kv_cache_decode_equals_full_forward(tiny_decoder):
    tokens = torch.randint(0, tiny_decoder.config.vocab_size, (2, 20))
    with torch.no_grad():
        full = tiny_decoder(tokens)  # [2, 20, V]
        tiny_decoder.setup_cache(2, 64)
        steps = [tiny_decoder(tokens[:, :7], torch.arange(7))]
        for t in range(7, 20):
            steps.append(tiny_decoder(tokens[:, t : t + 1], torch.tensor([t])))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_static_cache_attention_equals_prefix_attention(tiny_decoder):
    """The fixed-shape path (whole cache + mask, for compiled decode) gives the same logits as the eager one."""
    tokens = torch.randint(0, tiny_decoder.config.vocab_size, (1, 12))
    with torch.no_grad():
        tiny_decoder.setup_cache(1, 32)
        eager = [tiny_decoder(tokens[:, :5], torch.arange(5))]
        eager += [tiny_decoder(tokens[:, t : t + 1], torch.tensor([t])) for t in range(5, 12)]
        tiny_decoder.static_cache_attention = True
        tiny_decoder.setup_cache(1, 32)
        static = [tiny_decoder(tokens[:, :5], torch.arange(5))]
        static += [tiny_decoder(tokens[:, t : t + 1], torch.tensor([t])) for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(static, 1), torch.cat(eager, 1), rtol=1e-5, atol=1e-5)


def test_left_padded_batch_matches_unpadded_rows(tiny_decoder):
    """Rows of different lengths, left-padded and masked, give the logits each row gets alone."""
    short = torch.randint(0, tiny_decoder.config.vocab_size, (1, 6))
    long = torch.randint(0, tiny_decoder.config.vocab_size, (1, 10))
    batch = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1), long])  # [2, 10]
    pad_mask = torch.ones(2, 32, dtype=torch.bool)
    pad_mask[0, :4] = False
    with torch.no_grad():
        alone_short, alone_long = tiny_decoder(short), tiny_decoder(long)
        tiny_decoder.setup_cache(2, 32)
        got = tiny_decoder(batch, torch.arange(10), pad_mask=pad_mask)
    torch.testing.assert_close(got[0, 4:], alone_short[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], alone_long[0], rtol=1e-5, atol=1e-5)


def test_own_checkpoint_round_trip(tmp_path, tiny_decoder, tiny_tokenizer):
    from model.weights import save_checkpoint

    save_checkpoint(tmp_path / "ckpt", tiny_decoder, tiny_tokenizer, identity="tiny@test")
    loaded = load_decoder(tmp_path / "ckpt", device="cpu", dtype=torch.float32)
    assert loaded.identity == "tiny@test"
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["format"] == "assistant-decoder"
    tokens = torch.randint(0, tiny_decoder.config.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(tokens), tiny_decoder(tokens))
    assert loaded.tokenizer.encode("hello 🙂") == tiny_tokenizer.encode("hello 🙂")
    assert loaded.tokenizer.eos_token_ids == tiny_tokenizer.eos_token_ids


def test_decoder_is_a_plain_module():
    """No transformers class is involved in our decoder."""
    assert Decoder.__module__ == "model.decoder"
