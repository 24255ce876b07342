"""The training loop on tiny models: loss falls, answer-only loss, accumulation, exact resume."""

from __future__ import annotations

import math

import torch

from model.config import DecoderConfig
from model.decoder import Decoder
from model.lora import LoraConfig, apply_lora, lora_parameters
from model.train import IGNORE_INDEX, Example, TrainConfig, Trainer, collate, loss_sum, lr_at, train

VOCAB = 61


def tiny_decoder(seed: int = 0) -> Decoder:
    return Decoder(DecoderConfig.tiny(vocab_size=VOCAB)).init_weights(seed=seed)


def counting_examples(n: int, seed: int = 0) -> list[Example]:
    """Prompt: 4 random tokens; answer: the next 6 numbers counting up from the last prompt token (mod VOCAB)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, VOCAB, (4,), generator=gen).tolist()
        answer = [(prompt[-1] + i) % VOCAB for i in range(1, 7)]
        out.append(Example.prompt_answer(prompt, answer))
    return out


def quiet(**overrides) -> TrainConfig:
    base = dict(max_steps=8, batch_size=4, grad_accum=1, lr=3e-3, warmup_steps=2, eval_every=0, save_every=0,
                progress=False, device="cpu", seed=0)
    base.update(overrides)
    return TrainConfig(**base)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    config = quiet(max_steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(step, config) for step in range(100)]
    assert lrs[0] == 1e-4 and math.isclose(lrs[9], 1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert math.isclose(lr_at(100, config), 1e-4)


def test_loss_is_taken_on_answer_tokens_only():
    model = tiny_decoder()
    ex = Example.prompt_answer([5, 6, 7], [8, 9])
    assert ex.labels == [IGNORE_INDEX] * 3 + [8, 9] and ex.num_target_tokens == 2
    input_ids, labels = collate([ex, Example.prompt_answer([5], [8])], pad_id=0, max_seq_len=64)
    assert input_ids.shape == (2, 5) and labels[1].tolist() == [IGNORE_INDEX, 8] + [IGNORE_INDEX] * 3
    loss, count = loss_sum(model, input_ids, labels)
    assert count == 3
    logits = model(input_ids)  # [2, 5, V]: predictions at t score labels[t + 1]
    picked = [(0, 2, 8), (0, 3, 9), (1, 0, 8)]
    expected = sum(-torch.log_softmax(logits[b, t], -1)[y] for b, t, y in picked)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_tiny_model_learns_a_toy_task():
    model = tiny_decoder()
    data, held_out = counting_examples(256), counting_examples(32, seed=1)
    result = train(model, data, held_out, quiet(max_steps=60, batch_size=16, lr=1e-2, warmup_steps=5),
                   resume=False)
    first, last = result.train_loss[0][1], sum(loss for _, loss in result.train_loss[-5:]) / 5
    assert first > 3.5 and last < 0.5 * first
    assert result.eval_loss and result.eval_loss[-1][1] < 0.5 * first


def test_lora_training_moves_only_the_adapter():
    model = tiny_decoder()
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    result = train(model, counting_examples(64), None, quiet(max_steps=10, lr=1e-2), resume=False)
    assert result.train_loss[-1][1] < result.train_loss[0][1]
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert any(p.abs().sum() > 0 for p in lora_parameters(model) if p.shape[1] == 4)  # B moved off zero


def test_gradient_accumulation_matches_one_big_batch():
    data = counting_examples(32)
    big, small = tiny_decoder(), tiny_decoder()
    train(big, data, None, quiet(max_steps=3, batch_size=8, grad_accum=1), resume=False)
    train(small, data, None, quiet(max_steps=3, batch_size=2, grad_accum=4), resume=False)
    for (name, a), (_, b) in zip(big.named_parameters(), small.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_resumed_run_continues_the_same_schedule(tmp_path):
    """Stop at step 4 of 9, resume in a new process-like Trainer: same lrs, losses and final weights."""
    data, held_out = counting_examples(40), counting_examples(8, seed=1)
    config = quiet(max_steps=9, batch_size=3, grad_accum=2, warmup_steps=3, save_every=2, eval_every=3)

    def lora_model() -> Decoder:
        torch.manual_seed(0)
        model = tiny_decoder()
        apply_lora(model, LoraConfig(rank=4, alpha=8, dropout=0.2))  # dropout: RNG state must resume too
        return model

    whole = lora_model()
    uninterrupted = train(whole, data, held_out, config, out_dir=tmp_path / "whole", resume=False)

    first = Trainer(lora_model(), data, held_out, config, out_dir=tmp_path / "split")
    part1 = first.train(until_step=4)
    assert part1.step == 4 and (tmp_path / "split" / "checkpoint" / "state.pt").is_file()

    torch.manual_seed(123)  # the resumed process starts from a different RNG state and a fresh adapter init
    resumed_model = lora_model()
    second = Trainer(resumed_model, data, held_out, config, out_dir=tmp_path / "split")
    assert second.load_checkpoint() and second.step == 4
    part2 = second.train()

    assert part1.lrs + part2.lrs == uninterrupted.lrs
    assert part1.train_loss + part2.train_loss == uninterrupted.train_loss
    for (name, a), (_, b) in zip(whole.named_parameters(), resumed_model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
