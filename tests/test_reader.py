"""The evidence reader (model/reader.py): windows and offsets, span decoding, answerability on a tiny trained
model, sharing the embedder's weights without changing its embeddings, saving and loading, and the real weights."""

from __future__ import annotations

import random

import pytest
import torch

from model.config import EncoderConfig
from model.encoder import BertModel, Encoder
from model.errors import CheckpointError
from model.reader import (Reader, ReaderConfig, SpanExample, SpanReader, SpanTask, Window, WindowMaker,
                          decode_spans, span_targets)
from model.sources import resolve_encoder
from model.tokenizer import Tokenizer
from model.train import Trainer, TrainConfig


@pytest.fixture(scope="module")
def bert_tokenizer() -> Tokenizer:
    """The real MiniLM WordPiece tokenizer (uncased, accent-stripping, CJK split per character)."""
    return Tokenizer.from_file(resolve_encoder(None) / "tokenizer.json")


def tiny_encoder(tokenizer: Tokenizer, seed: int = 0) -> Encoder:
    torch.manual_seed(seed)
    config = EncoderConfig.tiny(vocab_size=tokenizer.vocab_size)
    config.max_position_embeddings = 512
    return Encoder(BertModel(config).eval(), tokenizer, name="tiny-bert")


PASSAGES = {
    "ascii": "LoRA was introduced by Edward Hu and colleagues in 2021. It trains two low-rank matrices.",
    "accents": "Le café de José Müller, à Saint-Étienne, ouvre en 1999 ; crème brûlée incluse.",
    "cjk": "東京は日本の首都です。人口は約1400万人。Tokyo is the capital.",
    "long": " ".join(f"Sentence number {i} talks about topic {i % 7} and nothing else." for i in range(120))
    + " The secret code is Zanzibar-42. " + " ".join(f"Filler {i}." for i in range(40)),
}


# ---------------------------------------------------------------------- windows and offsets
@pytest.mark.parametrize("name", sorted(PASSAGES))
def test_window_offsets_map_back_to_the_passage_text(bert_tokenizer, name):
    passage = PASSAGES[name]
    maker = WindowMaker(bert_tokenizer, ReaderConfig(window=64, stride=16))
    windows = maker.windows("Who made it?", [passage])
    if name == "long":
        assert len(windows) > 5  # a long passage is covered by several overlapping windows
    covered = set()
    for window in windows:
        assert len(window.input_ids) <= 64
        assert len(window.input_ids) == len(window.token_type_ids) == len(window.offsets)
        for token_id, offset in zip(window.input_ids, window.offsets):
            if offset is None:
                continue
            piece = passage[offset[0]:offset[1]]
            # The token is the piece, lower-cased and accent-stripped by the tokenizer's normaliser.
            expected = bert_tokenizer.hf.id_to_token(token_id).removeprefix("##")
            normalised = bert_tokenizer.hf.normalizer.normalize_str(piece).strip()  # CJK gets padded
            assert normalised == expected or expected == "[UNK]", (piece, expected)
            covered.update(range(*offset))
    assert covered == {i for i, ch in enumerate(passage) if not ch.isspace()}


@pytest.mark.parametrize("name,answer", [("ascii", "Edward Hu"), ("accents", "José Müller"), ("cjk", "日本の首都"),
                                         ("long", "Zanzibar-42")])
def test_span_targets_cover_exactly_the_answer(bert_tokenizer, name, answer):
    passage = PASSAGES[name]
    start = passage.index(answer)
    maker = WindowMaker(bert_tokenizer, ReaderConfig(window=64, stride=16))
    windows = maker.windows("Which one?", [passage])
    found = []
    for window in windows:
        s, e = span_targets(window, start, start + len(answer))
        if s:
            found.append(passage[window.offsets[s][0]:window.offsets[e][1]])
        else:
            assert (s, e) == (0, 0)
    assert found and all(text == answer for text in found)


def test_decoded_spans_are_exact_substrings_across_windows(bert_tokenizer):
    maker = WindowMaker(bert_tokenizer, ReaderConfig(window=48, stride=12))
    passages = [PASSAGES["long"], PASSAGES["accents"], ""]
    windows = maker.windows("What is the code?", passages)
    torch.manual_seed(0)
    width = max(len(w.input_ids) for w in windows)
    start, end = torch.randn(len(windows), width), torch.randn(len(windows), width)
    spans = decode_spans(start, end, windows, passages, max_answer_tokens=8)
    assert {s.passage for s in spans} == {0, 1}  # the empty passage has no tokens to answer from
    assert [s.score for s in spans] == sorted((s.score for s in spans), reverse=True)
    for span in spans:
        assert span.text == passages[span.passage][span.start:span.end] and span.text.strip() == span.text


# ---------------------------------------------------------------------- sharing the embedder's weights
def test_reader_shares_the_embedders_tensors_and_leaves_embeddings_bit_identical(bert_tokenizer, tmp_path):
    encoder = tiny_encoder(bert_tokenizer)
    texts = ["LoRA trains low-rank matrices.", "Attention mixes values.", PASSAGES["cjk"]]
    before = encoder.embed(texts)
    reader = Reader.new(encoder, ReaderConfig(own_layers=1, lora_rank=4, window=64))
    base = encoder.model
    assert reader.model.base is base
    # Shared: the same tensors, not copies; none of them is in the reader's own state.
    for name, param in base.named_parameters():
        assert not any(param is p for p in reader.model.parameters()), name
    assert not any(key.startswith(("embeddings", "layers")) for key in reader.model.state_dict())
    assert reader.model.own[0].qkv.weight.data_ptr() != base.layers[-1].qkv.weight.data_ptr()  # own copy
    # Make the reader's own part non-trivial, read, save, load: the embeddings never move.
    with torch.no_grad():
        for p in reader.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    reader.read("What does LoRA train?", texts)
    loaded = Reader.load(encoder, reader.save(tmp_path / "reader"))
    loaded.read("What does LoRA train?", texts)
    assert loaded.model.base is base
    after = encoder.embed(texts)
    assert torch.equal(torch.from_numpy(before), torch.from_numpy(after))
    # The loaded reader computes what the saved one did (weights round-trip through float16).
    a = reader.read("What does LoRA train?", texts)
    b = loaded.read("What does LoRA train?", texts)
    assert [(s.passage, s.start, s.end) for s in a] == [(s.passage, s.start, s.end) for s in b]


def test_lora_side_paths_change_the_reader_not_the_base(bert_tokenizer):
    encoder = tiny_encoder(bert_tokenizer)
    reader = SpanReader(encoder.model, ReaderConfig(own_layers=0, lora_rank=4))
    with torch.no_grad():
        for side in reader.side:
            for module in side.values():
                module.lora_b.normal_()
    ids = torch.tensor([[2, 5, 9, 3]])
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    plain = encoder.model(ids, mask, types)
    again = encoder.model(ids, mask, types)
    assert torch.equal(plain, again)
    start, _ = reader(ids, mask, types)
    reader.side = None  # without the side paths the reader would see the plain base
    start_plain, _ = reader(ids, mask, types)
    assert not torch.allclose(start, start_plain)


# ---------------------------------------------------------------------- answerability on a tiny trained model
def _synthetic(maker: WindowMaker, n: int, seed: int) -> list[SpanExample]:
    rng = random.Random(seed)
    words = ["river", "stone", "cloud", "apple", "table", "green", "music", "light", "paper", "horse"]
    codes = ["alpha", "bravo", "delta", "echo", "kilo", "lima", "oscar", "tango"]
    out = []
    for _ in range(n):
        filler = " ".join(rng.choice(words) for _ in range(rng.randint(4, 10)))
        if rng.random() < 0.5:
            code = rng.choice(codes)
            passage = f"{filler} the code is {code} . {' '.join(rng.choice(words) for _ in range(3))}"
            start = passage.index(f"is {code}") + 3
            (window,) = maker.windows("what is the code ?", [passage])
            s, e = span_targets(window, start, start + len(code))
        else:
            passage = f"{filler} nothing here . {' '.join(rng.choice(words) for _ in range(3))}"
            (window,) = maker.windows("what is the code ?", [passage])
            s = e = 0
        out.append(SpanExample(window.input_ids, window.token_type_ids, s, e))
    return out


def test_no_answer_score_wins_on_a_passage_without_the_answer(bert_tokenizer):
    encoder = tiny_encoder(bert_tokenizer)
    reader = Reader.new(encoder, ReaderConfig(own_layers=1, lora_rank=4, window=64))
    data = _synthetic(reader.windows, 400, seed=0)
    config = TrainConfig(max_steps=150, batch_size=16, lr=3e-3, warmup_steps=5, progress=False, device="cpu")
    result = Trainer(reader.model, data, None, config, task=SpanTask()).train()
    assert result.train_loss[-1][1] < result.train_loss[0][1] / 3
    reader.model.eval()
    with_answer = reader.read("what is the code ?", ["river stone the code is tango . apple green"])
    without = reader.read("what is the code ?", ["river stone nothing here . apple green"])
    assert with_answer[0].text == "tango" and with_answer[0].score > 0
    assert without[0].score < 0 < with_answer[0].score


# ---------------------------------------------------------------------- files
def test_load_rejects_missing_damaged_and_mismatched_readers(bert_tokenizer, tmp_path):
    encoder = tiny_encoder(bert_tokenizer)
    with pytest.raises(CheckpointError, match="--no-reader"):
        Reader.load(encoder, tmp_path / "nothing")
    folder = Reader.new(encoder, ReaderConfig(own_layers=1, lora_rank=2)).save(tmp_path / "ok")
    (folder / "reader.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="damaged"):
        Reader.load(encoder, folder)
    other_config = EncoderConfig.tiny(vocab_size=bert_tokenizer.vocab_size)
    other_config.hidden_size, other_config.num_heads = 48, 4
    other = Encoder(BertModel(other_config), bert_tokenizer, name="other")
    folder = Reader.new(other, ReaderConfig(own_layers=1, lora_rank=2)).save(tmp_path / "other")
    with pytest.raises(CheckpointError, match="does not match the loaded encoder"):
        Reader.load(encoder, folder)


@pytest.mark.gpu
def test_reader_on_cuda_matches_cpu(bert_tokenizer):
    encoder = tiny_encoder(bert_tokenizer)
    reader = Reader.new(encoder, ReaderConfig(own_layers=1, lora_rank=4, window=64))
    cpu = reader.read("Who made it?", [PASSAGES["ascii"], PASSAGES["long"]])
    encoder.to("cuda")
    reader.model.to("cuda")
    gpu = reader.read("Who made it?", [PASSAGES["ascii"], PASSAGES["long"]])
    assert [(s.passage, s.start, s.end) for s in gpu] == [(s.passage, s.start, s.end) for s in cpu]
    assert all(abs(a.score - b.score) < 1e-3 for a, b in zip(cpu, gpu))


# ---------------------------------------------------------------------- the shipped reader on the real encoder
@pytest.mark.real
def test_shipped_reader_finds_the_answer_span_in_a_corpus_passage():
    from assistant.settings import DEFAULT_READER, DEFAULT_CORPUS

    encoder = Encoder.load()
    reader = Reader.load(encoder, DEFAULT_READER)
    assert reader.num_parameters() * 2 < 25e6  # what ships beside the encoder stays small
    text = (DEFAULT_CORPUS / "peft-lora.md").read_text(encoding="utf-8")
    section = text[text.index("## LoRA: low-rank adaptation"):text.index("In the original LoRA paper")]
    spans = reader.read("Who introduced LoRA?", [section])
    assert spans and spans[0].score > 0
    assert "Edward Hu" in spans[0].text, spans[0]
    assert section[spans[0].start:spans[0].end] == spans[0].text
