"""CUDA parity on tiny random models (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@torch.inference_mode()
def test_decoder_cuda_matches_cpu(tiny_decoder):
    tokens = torch.randint(3, tiny_decoder.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    want = tiny_decoder(tokens)
    gpu = tiny_decoder.to("cuda")
    got = gpu(tokens.cuda()).cpu()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    got_bf16 = gpu.to(torch.bfloat16)(tokens.cuda()).float().cpu()
    torch.testing.assert_close(got_bf16, want, atol=0.1, rtol=0.05)


def test_generator_cuda_greedy_matches_cpu(tiny_decoder, tiny_tokenizer):
    import copy

    from model.generate import Generator

    cpu = Generator(copy.deepcopy(tiny_decoder), tiny_tokenizer, device="cpu", compile=False)
    want = cpu.generate("The quick brown fox", max_new_tokens=12).token_ids
    for compile in (False, True):
        gen = Generator(copy.deepcopy(tiny_decoder).to("cuda"), tiny_tokenizer, device="cuda", compile=compile)
        assert gen.generate("The quick brown fox", max_new_tokens=12).token_ids == want, compile


@torch.inference_mode()
def test_encoder_cuda_matches_cpu():
    from model.config import EncoderConfig
    from model.bert import BertModel

    torch.manual_seed(0)
    model = BertModel(EncoderConfig.tiny()).eval()
    ids = torch.randint(5, 500, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    want = model(ids, mask)
    got = model.to("cuda")(ids.cuda(), mask.cuda()).cpu()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
