"""LoRA adapters on a tiny decoder: zero-init, merge/unmerge, gradients, save/load, base identity check."""

from __future__ import annotations

import json

import pytest
import torch

from model.config import DecoderConfig
from model.decoder import Decoder
from model.errors import CheckpointError
from model.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    load_adapter,
    lora_modules,
    lora_parameters,
    merge_lora,
    save_adapter,
    unmerge_lora,
)


def tiny_decoder(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig.tiny(vocab_size=97)).init_weights(seed=seed).eval()


def randomise_adapter(model: torch.nn.Module, seed: int = 1) -> None:
    """Give B non-zero values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(model).values():
            module.lora_b.copy_(torch.randn(module.lora_b.shape, generator=gen) * 0.1)


TOKENS = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(3))


def test_untrained_adapter_leaves_logits_unchanged():
    model = tiny_decoder()
    before = model(TOKENS)
    wrapped = apply_lora(model, LoraConfig(rank=4, alpha=8))
    # every attention and MLP projection of both layers, and not the head
    assert len(wrapped) == 2 * 7 and "output" not in wrapped
    assert isinstance(model.layers[1].feed_forward.w2, LoraLinear)
    torch.testing.assert_close(model(TOKENS), before, rtol=0, atol=0)


def test_adapter_changes_output_once_trained_and_merge_equals_unmerged():
    model = tiny_decoder()
    base_weight = model.layers[0].attention.wq.weight.detach().clone()
    base_logits = model(TOKENS)
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    randomise_adapter(model)
    unmerged = model(TOKENS)
    assert (unmerged - base_logits).abs().max() > 1e-3
    merge_lora(model)
    assert not torch.equal(model.layers[0].attention.wq.weight, base_weight)
    torch.testing.assert_close(model(TOKENS), unmerged, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model.layers[0].attention.wq.weight, base_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(TOKENS), unmerged, rtol=1e-5, atol=1e-5)


def test_only_adapter_parameters_get_gradients():
    model = tiny_decoder().train()
    apply_lora(model, LoraConfig(rank=2, alpha=4, dropout=0.1, targets=("wq", "wv")))
    randomise_adapter(model)  # with B = 0, A would get a zero gradient; make both non-trivial
    model(TOKENS).logsumexp(-1).mean().backward()
    trainable = {id(p) for p in lora_parameters(model)}
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (wq, wv) x (A, B)
    for name, param in model.named_parameters():
        if id(param) in trainable:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_layer_subset_only_adapts_those_blocks():
    model = tiny_decoder()
    wrapped = apply_lora(model, LoraConfig(rank=2, layers=(1,)))
    assert wrapped and all(name.startswith("layers.1.") for name in wrapped)


def test_save_load_round_trip(tmp_path):
    model = tiny_decoder()
    config = LoraConfig(rank=4, alpha=8, targets=("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    apply_lora(model, config)
    randomise_adapter(model)
    expected = model(TOKENS)
    save_adapter(tmp_path / "adapter", model, config, base_identity="tiny-0", metadata={"note": "test"})
    info = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert info["base_identity"] == "tiny-0" and info["lora"]["rank"] == 4

    fresh = tiny_decoder()
    loaded = load_adapter(fresh, tmp_path / "adapter", base_identity="tiny-0", merge=True)
    assert loaded == config
    assert all(m.merged for m in lora_modules(fresh).values())
    torch.testing.assert_close(fresh(TOKENS), expected, rtol=1e-5, atol=1e-5)

    unmerged = tiny_decoder()
    load_adapter(unmerged, tmp_path / "adapter", base_identity="tiny-0", merge=False)
    torch.testing.assert_close(unmerged(TOKENS), expected, rtol=1e-5, atol=1e-5)


def test_adapter_for_another_base_is_refused(tmp_path):
    model = tiny_decoder()
    config = LoraConfig(rank=2)
    apply_lora(model, config)
    save_adapter(tmp_path, model, config, base_identity="model-a.gguf@1234")
    with pytest.raises(CheckpointError, match="model-a.gguf@1234.*--no-adapter"):
        load_adapter(tiny_decoder(), tmp_path, base_identity="model-b.gguf@5678")


def test_missing_or_mismatched_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a LoRA adapter folder"):
        load_adapter(tiny_decoder(), tmp_path / "nothing", base_identity="x")
    model = tiny_decoder()
    config = LoraConfig(rank=2)
    apply_lora(model, config)
    save_adapter(tmp_path, model, config, base_identity="x")
    wider = Decoder(DecoderConfig.tiny(vocab_size=97, dim=48, n_heads=4, n_kv_heads=2))
    with pytest.raises(CheckpointError, match="shape"):
        load_adapter(wider, tmp_path, base_identity="x")


@pytest.mark.real
def test_shipped_adapter_fits_the_default_generator():
    """The adapter in assistant/data/adapter was trained on the default base and loads onto it (and changes it)."""
    from pathlib import Path

    from model.sources import resolve_generator
    from model.weights import load_decoder

    folder = Path(__file__).resolve().parents[1] / "assistant" / "data" / "adapter"
    loaded = load_decoder(resolve_generator(), device="cpu", dtype=torch.float32)
    tokens = torch.tensor([loaded.tokenizer.encode("Passages:\n\n[1] (Paris)\nParis is the capital of France.")])
    with torch.no_grad():
        base = loaded.model(tokens)
        config = load_adapter(loaded.model, folder, loaded.identity, merge=True)
        tuned = loaded.model(tokens)
    assert config.rank >= 1 and len(lora_modules(loaded.model)) > 0
    assert (tuned - base).abs().max() > 1e-2
