"""Prompt tuning (model.prompt_tuning) on a tiny random decoder: the soft prompt changes the output, only it
trains, it round-trips through save/load, another base model's soft prompt is refused, and generation through
the cached prefill equals a no-cache forward over [soft prompt; prompt]."""

from __future__ import annotations

import json

import pytest
import torch

from model.config import DecoderConfig
from model.decoder import Decoder
from model.errors import CheckpointError
from model.generate import Generator
from model.prompt_tuning import (
    PromptTunedDecoder,
    PromptTuningConfig,
    SoftPrompt,
    SoftPromptTask,
    base_identity,
    insert_soft_prompt,
    load_soft_prompt,
    save_soft_prompt,
)
from model.sampling import SamplingParams
from model.train import Example, TrainConfig, Trainer

VOCAB = 97
TOKENS = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))


def tiny_decoder(seed: int = 0, vocab: int = VOCAB) -> Decoder:
    # std 0.3: sharp logits, so greedy choices have no near-ties between two exact computations
    return Decoder(DecoderConfig.tiny(vocab_size=vocab)).init_weights(std=0.3, seed=seed).eval()


def soft_prompt_for(decoder: Decoder, n: int = 5, seed: int = 1) -> SoftPrompt:
    return SoftPrompt.initialise(decoder, PromptTuningConfig(n_virtual_tokens=n, init="random"), seed=seed)


def test_soft_prompt_changes_the_output_and_equals_embeds_of_a_token_prompt() -> None:
    decoder = tiny_decoder()
    plain = decoder(TOKENS)  # [2, T, V]
    tuned = PromptTunedDecoder(decoder, soft_prompt_for(decoder))
    with torch.no_grad():
        out = tuned(TOKENS)  # [2, T, V]: the prompt's positions only
    assert out.shape == plain.shape
    assert (out - plain).abs().max() > 1e-2
    # a soft prompt that *is* the embeddings of some tokens gives what those tokens give as a text prefix
    prefix = torch.tensor([7, 11, 13, 17, 19])
    with torch.no_grad():
        tuned.soft_prompt.weight.copy_(decoder.tok_embeddings.weight[prefix])
        as_text = decoder(torch.cat([prefix.expand(2, -1), TOKENS], dim=1))[:, 5:]  # [2, T, V]
        torch.testing.assert_close(tuned(TOKENS), as_text, rtol=1e-5, atol=1e-5)


def test_inputs_embeds_of_the_tokens_equal_the_tokens() -> None:
    decoder = tiny_decoder()
    with torch.no_grad():
        embeds = decoder.tok_embeddings(TOKENS)  # [2, T, D]
        torch.testing.assert_close(decoder(None, inputs_embeds=embeds), decoder(TOKENS), rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        decoder(TOKENS, inputs_embeds=embeds)


def _examples(n: int = 6) -> list[Example]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, VOCAB, (7,), generator=gen).tolist()
        answer = torch.randint(3, VOCAB, (4,), generator=gen).tolist()
        out.append(Example.prompt_answer(prompt, answer))
    return out


def test_only_the_soft_prompt_trains_and_the_loss_falls(tmp_path) -> None:
    decoder = tiny_decoder()
    before = {name: p.detach().clone() for name, p in decoder.state_dict().items()}
    soft = soft_prompt_for(decoder)
    start = soft.weight.detach().clone()
    model = PromptTunedDecoder(decoder, soft)
    data = _examples()
    config = TrainConfig(max_steps=25, batch_size=3, lr=0.05, warmup_steps=1, eval_every=0, save_every=0,
                         progress=False, grad_clip=0.0)
    trainer = Trainer(model, data, data, config, out_dir=tmp_path, task=SoftPromptTask(0, 64))
    assert [name for name, _ in trainer.named_trainable] == ["soft_prompt.weight"]
    first = trainer.evaluate()
    # one step: gradients reach the soft prompt only
    trainer.train(until_step=1)
    for name, param in decoder.named_parameters():
        assert param.grad is None, f"{name} got a gradient"
    result = trainer.train()
    assert not torch.equal(soft.weight.detach(), start)
    for name, tensor in decoder.state_dict().items():
        assert torch.equal(tensor, before[name]), f"decoder weight {name} changed"
    assert result.eval_loss[-1][1] < first - 0.2


def test_task_loss_equals_the_plain_causal_loss_over_soft_prompt_logits() -> None:
    decoder = tiny_decoder()
    model = PromptTunedDecoder(decoder, soft_prompt_for(decoder))
    task = SoftPromptTask(0, 64)
    batch = task.collate(_examples(3))
    with torch.no_grad():
        loss, count = task.loss(model, batch)
        logits = model(batch[0])  # [B, T, V], head over every position
    targets = batch[1][:, 1:]
    selected = targets != -100
    reference = torch.nn.functional.cross_entropy(logits[:, :-1][selected], targets[selected], reduction="sum")
    assert count == int(selected.sum()) == task.count(batch)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_gives_identical_logits(tmp_path) -> None:
    decoder = tiny_decoder()
    soft = soft_prompt_for(decoder)
    config = PromptTuningConfig(n_virtual_tokens=5, init="random")
    folder = save_soft_prompt(tmp_path / "sp", soft, config, "tiny@1", decoder=decoder, metadata={"step": 3})
    info = json.loads((folder / "soft_prompt.json").read_text())
    assert info["num_parameters"] == 5 * decoder.config.dim and info["metadata"] == {"step": 3}
    loaded = load_soft_prompt(folder, "tiny@1", decoder)
    assert not loaded.weight.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(PromptTunedDecoder(decoder, loaded)(TOKENS),
                                   PromptTunedDecoder(decoder, soft)(TOKENS), rtol=0, atol=0)
    # a quantised copy of the same base weights is the same model
    assert base_identity("tiny@1+int4") == "tiny@1"
    load_soft_prompt(folder, "tiny@1+int4", decoder)


def test_a_soft_prompt_for_another_base_model_is_refused(tmp_path) -> None:
    decoder = tiny_decoder()
    folder = save_soft_prompt(tmp_path / "sp", soft_prompt_for(decoder), PromptTuningConfig(5, "random"),
                              "tiny@1", decoder=decoder)
    with pytest.raises(CheckpointError, match="trained on base weights 'tiny@1'"):
        load_soft_prompt(folder, "other@2", decoder)
    with pytest.raises(CheckpointError, match="trained on base weights"):  # an adapter changes the model
        load_soft_prompt(folder, "tiny@1+adapter:answers+int4", decoder)
    with pytest.raises(CheckpointError, match="another base model"):  # same name, other weights
        load_soft_prompt(folder, "tiny@1", tiny_decoder(seed=7))
    wide = Decoder(DecoderConfig.tiny(vocab_size=VOCAB, dim=64, n_heads=4, n_kv_heads=2)).init_weights(seed=0)
    with pytest.raises(CheckpointError, match="wide"):
        load_soft_prompt(folder, "tiny@1", wide)
    gen = Generator(tiny_decoder(seed=7), _Tok(), identity="other@2", device="cpu")
    with pytest.raises(CheckpointError, match="trained on base weights"):
        gen.load_soft_prompt(folder)
    (folder / "soft_prompt.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_soft_prompt(folder, "tiny@1", decoder)
    with pytest.raises(CheckpointError, match="not a soft-prompt folder"):
        load_soft_prompt(tmp_path / "missing", "tiny@1", decoder)


class _Tok:
    """The least a Generator needs from a tokenizer when prompts are token ids."""

    eos_token_ids = ()
    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=True) -> str:
        return " ".join(f"t{i}" for i in ids)


def _generator(decoder: Decoder) -> Generator:
    return Generator(decoder, _Tok(), identity="tiny@1", device="cpu")


def reference_greedy(decoder: Decoder, soft: SoftPrompt, prompt: list[int], steps: int) -> list[int]:
    """No cache: the whole [soft prompt; prompt; generated] through the network at every step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            embeds = insert_soft_prompt(decoder.tok_embeddings(torch.tensor([ids])), soft.weight)  # [1, P+T, D]
            ids.append(int(decoder(None, inputs_embeds=embeds)[0, -1].argmax()))
    return ids[len(prompt) :]


def test_cached_generation_equals_a_no_cache_forward() -> None:
    decoder = tiny_decoder(vocab=256)
    soft = soft_prompt_for(decoder, n=6)
    gen = _generator(decoder)
    prompt = torch.randint(3, 256, (13,), generator=torch.Generator().manual_seed(2)).tolist()
    result = gen.generate(prompt, max_new_tokens=12, soft_prompt=soft)
    expected = reference_greedy(decoder, soft, prompt, 12)
    assert result.token_ids == expected
    assert result.prompt_tokens == len(prompt)
    assert gen.generate(prompt, max_new_tokens=12).token_ids != expected  # the soft prompt mattered
    # beam search runs its own prefill: with 1 beam it is greedy decoding
    assert gen.generate(prompt, max_new_tokens=12, soft_prompt=soft, num_beams=1).token_ids == expected
    beams = gen.generate(prompt, max_new_tokens=12, soft_prompt=soft, num_beams=3)
    assert beams.token_ids and beams.token_ids != gen.generate(prompt, max_new_tokens=12, num_beams=3).token_ids


@pytest.mark.parametrize("quantize", [None, "int4"])
def test_soft_prompt_of_token_embeddings_generates_like_those_tokens(quantize) -> None:
    """Through the quantised model too: the soft prompt's prefill, then the native int4 decode kernels, give what
    the same tokens written as text give (the token path prefills through Decoder.prefill_segments)."""
    decoder = tiny_decoder(vocab=256)
    prefix = [40, 41, 42, 43, 44, 45]
    soft = SoftPrompt(len(prefix), decoder.config.dim)
    with torch.no_grad():
        soft.weight.copy_(decoder.tok_embeddings.weight[torch.tensor(prefix)])
    if quantize:
        from model.quant import quantize_decoder

        quantize_decoder(decoder, quantize)
    gen = _generator(decoder)
    prompt = torch.randint(3, 256, (13,), generator=torch.Generator().manual_seed(2)).tolist()
    as_text = gen.generate(prefix + prompt, max_new_tokens=12).token_ids
    assert gen.generate(prompt, max_new_tokens=12, soft_prompt=soft).token_ids == as_text


def test_batched_generation_equals_each_prompt_alone() -> None:
    decoder = tiny_decoder(vocab=256)
    soft = soft_prompt_for(decoder, n=4)
    gen = _generator(decoder)
    gen_ids = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 256, (n,), generator=gen_ids).tolist() for n in (5, 17, 11)]
    batched = gen.generate_batch(prompts, max_new_tokens=10, soft_prompt=soft)
    for prompt, result in zip(prompts, batched):
        assert result.token_ids == reference_greedy(decoder, soft, prompt, 10)
    # sampled: deterministic for a seed, and the batch gives each row a real sample
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=11, max_new_tokens=10)
    first = [r.token_ids for r in gen.generate_batch(prompts, params, soft_prompt=soft)]
    again = [r.token_ids for r in gen.generate_batch(prompts, params, soft_prompt=soft)]
    assert first == again and all(len(t) == 10 for t in first)


def test_soft_prompt_takes_context_slots() -> None:
    from model.errors import ContextOverflowError

    decoder = tiny_decoder()
    gen = _generator(decoder)
    soft = soft_prompt_for(decoder, n=8)
    prompt = [5] * (decoder.config.max_seq_len - 8)
    with pytest.raises(ContextOverflowError):
        gen.generate(prompt, max_new_tokens=4, soft_prompt=soft)
    result = gen.generate(prompt, max_new_tokens=4, soft_prompt=soft, truncate_left=True)
    assert result.prompt_tokens + 8 + 4 <= decoder.config.max_seq_len
