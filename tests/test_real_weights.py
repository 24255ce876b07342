"""Parity on the real default weights (these run in CI: they prove the product's models are right).

* our encoder vs sentence-transformers on the same all-MiniLM-L6-v2 folder
* our decoder on the SmolLM2-135M-Instruct GGUF vs transformers loading the same GGUF
* our GGUF tokenizer vs transformers' GGUF tokenizer, and the chat template
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.real

LONG = ("Transformers process tokens in parallel, and attention lets each position mix information from "
        "every other position. ") * 30  # ~600 tokens: longer than the encoder's 256-token window


def _varied_texts() -> list[str]:
    base = [
        "What is the capital of France?",
        "Paris is the capital and most populous city of France.",
        "", " ", "a", "1234567890", "3.14159 2.71828 1.41421",
        "café naïve résumé Zürich São Paulo", "漢字かな交じり文", "中文测试句子，包括标点。", "🙂👍🏽🚀 emoji only",
        "def f(x):\n    return x ** 2  # square\n", "SELECT * FROM users WHERE id = 42;",
        "   many    spaces   and\n\n\nnewlines\t\ttabs", "UPPER CASE SHOUTING TEXT",
        "LoRA adds low-rank matrices to frozen weights.", "Beam search keeps the k best partial hypotheses.",
        LONG, LONG[:1200], "word " * 300, "The quick brown fox jumps over the lazy dog.",
    ]
    topics = ["attention", "tokenisation", "quantisation", "retrieval", "fine-tuning", "scaling laws", "RLHF",
              "positional encoding", "decoding", "distillation", "embeddings", "context windows", "prompting",
              "evaluation", "hallucination"]
    for i, topic in enumerate(topics):
        base.append(f"A short note on {topic}: it matters for large language models ({i}).")
        base.append(f"Question {i}: how does {topic} affect the quality of answers? " * (1 + i % 4))
    return base[:50]


def test_encoder_matches_sentence_transformers(real_encoder):
    from sentence_transformers import SentenceTransformer

    from model.sources import resolve_encoder

    texts = _varied_texts()
    assert len(texts) == 50
    assert max(real_encoder.count_tokens(texts)) > 256
    reference = SentenceTransformer(str(resolve_encoder(None)), device="cpu")
    expected = reference.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    got = real_encoder.embed(texts, batch_size=16)
    assert got.shape == expected.shape == (50, 384)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * expected).sum(1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, f"lowest cosine {cosine.min():.6f} for {texts[int(cosine.argmin())][:60]!r}"


def test_encoder_order_and_batching_do_not_change_embeddings(real_encoder):
    texts = _varied_texts()[:12]
    one_batch = real_encoder.embed(texts, batch_size=64)
    small_batches = real_encoder.embed(texts, batch_size=3)
    reversed_order = real_encoder.embed(texts[::-1], batch_size=5)[::-1]
    np.testing.assert_allclose(small_batches, one_batch, atol=1e-5)
    np.testing.assert_allclose(reversed_order, one_batch, atol=1e-5)


def _prompt_ids(tokenizer, n: int) -> list[int]:
    text = ("The history of the transformer architecture begins with attention. Researchers found that "
            "replacing recurrence with self-attention made training parallel and fast. ") * 20
    ids = tokenizer.encode(text)
    assert len(ids) >= n
    return ids[:n]


def test_decoder_logits_match_transformers_gguf(real_decoder, hf_gguf_model):
    hf_model, _ = hf_gguf_model
    ids = torch.tensor([_prompt_ids(real_decoder.tokenizer, 200)])
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = real_decoder.model(ids)
    diff = (got - expected).abs().max().item()
    assert diff < 1e-3, f"max logit difference {diff}"


def test_greedy_continuation_matches_transformers_gguf(real_decoder, hf_gguf_model):
    from model.decoder import greedy_generate

    hf_model, _ = hf_gguf_model
    tok = real_decoder.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Explain what a transformer model is."}])
    ids = tok.encode(prompt)
    ours = greedy_generate(real_decoder.model, ids, 64)  # no EOS stop: compare all 64 tokens
    with torch.no_grad():
        # An explicit mask: the prompt holds <|im_end|> (id 2, also the pad id), which must not be masked.
        ref = hf_model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=2,
                                eos_token_id=None)
    assert ours == ref[0, len(ids):].tolist()


TOKENIZER_CASES = [
    "Hello world", "12345 and 3.14159, 2024-11-23", "café naïve résumé Ångström", "漢字かな交じり文 中文测试",
    "emoji 🙂👍🏽 🚀🚀 ok", "def f(x):\n    return x**2  # comment\n", "   lots   of   spaces\n\n\n\ttabs  \n",
    "<|im_start|>user\nhi<|im_end|>\n", "don't WE'LL I'M they've", "x" * 50 + " " + "ab" * 30,
    "Ünïcödé\u00a0non-breaking\u2009thin\u200bzero-width", "1,000,000 and 007",
]


def test_gguf_tokenizer_matches_transformers(real_decoder, hf_gguf_model):
    _, hf_tok = hf_gguf_model
    for text in TOKENIZER_CASES:
        ours = real_decoder.tokenizer.encode(text)
        assert ours == hf_tok.encode(text, add_special_tokens=False), text
        assert real_decoder.tokenizer.decode(ours, skip_special_tokens=False) == text


def test_gguf_tokenizer_follows_the_original_smollm_pretokenizer(real_decoder):
    """Where transformers disagrees (numeric characters such as ½ ¼ ²), we follow SmolLM2's own definition.

    SmolLM2's tokenizer.json declares Sequence([Digits(individual_digits=True), ByteLevel(...)]): every
    character of Unicode category N is split off on its own, so the space before "¼" is a token by itself.
    transformers has no `smollm` entry and uses GPT-2's regex, which glues " ¼" together.
    """
    tok = real_decoder.tokenizer.hf
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("½ ¼ x2")]
    assert pieces == ["Â½", "Ġ", "Â¼", "Ġx", "2"]
    ids = real_decoder.tokenizer.encode("½ ¼")
    assert [tok.id_to_token(i) for i in ids] == ["Â½", "Ġ", "Â¼"]


def test_chat_template_matches_transformers(real_decoder, hf_gguf_model):
    _, hf_tok = hf_gguf_model
    for messages in (
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is RAG?"}],
    ):
        expected = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert real_decoder.tokenizer.apply_chat_template(messages) == expected
    assert real_decoder.tokenizer.eos_token_ids == (2,)
    assert real_decoder.tokenizer.add_bos is False


def test_smoke_generate_answers_on_cpu():
    from model import chat

    assert "paris" in chat("What is the capital of France?", max_new_tokens=24).lower()


def test_shipped_adapter_keeps_its_effect_in_the_default_load():
    """Generator.load with the shipped adapter and the default quantize='auto' answers with a citation.

    Guards the interaction of adapter and quantisation (int4 on CPU by default): merged into int4 weights,
    the adapter's update was rounded away and the model fell back to the base model's uncited copy of the
    passage; kept as a low-rank side path it answers as the float32 adapter model does.
    """
    from pathlib import Path

    from assistant.prompts import PromptPassage, build_messages
    from model.generate import Generator

    adapter = Path(__file__).resolve().parents[1] / "assistant" / "data" / "adapter"
    if not (adapter / "adapter.safetensors").exists():
        pytest.skip("no adapter shipped")
    generator = Generator.load(None, adapter=adapter)
    assert generator.identity.endswith("+int4")
    messages = build_messages("On which island does the zorblat fruit grow?", [
        PromptPassage("The zorblat is a purple fruit that grows only on the island of Quenmora.", "The zorblat"),
        PromptPassage("Bananas grow in tropical regions of the world.", "Bananas"),
    ])
    text = generator.chat(messages, max_new_tokens=24).text
    assert "Quenmora" in text and "[1]" in text, text
    reference = Generator.load(None, adapter=adapter, quantize="none")  # float32, adapter merged
    assert reference.chat(messages, max_new_tokens=24).text == text
