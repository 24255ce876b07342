"""Pre-training a small decoder from scratch: train a BPE tokenizer, pack text into windows, causal LM.

    text folder ─► train_bpe_tokenizer ─► token stream (documents joined by <|endoftext|>)
        ─► windows of seq_len tokens ─► model.train.Trainer (every parameter trainable) ─► own checkpoint

The same loop as fine-tuning (model.train), so the whole path — tokenise, pre-train, fine-tune — runs in the
repository. Tests use it to make tiny models; `assistant pretrain DIR` runs it from the command line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model.config import DecoderConfig
from model.decoder import Decoder
from model.errors import UserError
from model.tokenizer import Tokenizer, train_bpe_tokenizer
from model.train import Example, TrainConfig, Trainer, TrainResult

TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass
class PretrainResult:
    """The trained model, its tokenizer and config, what training did, and where it was saved (if anywhere)."""

    model: Decoder
    tokenizer: Tokenizer
    config: DecoderConfig
    result: TrainResult
    checkpoint: Path | None = None


def read_texts(folder: str | Path, suffixes: Sequence[str] = TEXT_SUFFIXES) -> list[str]:
    """The non-empty text files under `folder` (recursively, sorted by path), decoded as UTF-8."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass a folder of .txt/.md files to pre-train on")
    texts = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                texts.append(text)
    if not texts:
        raise UserError(f"no text files ({', '.join(suffixes)}) in {folder}; add some text to pre-train on")
    return texts


def pack_windows(token_lists: Sequence[Sequence[int]], seq_len: int, separator: int) -> list[Example]:
    """Join documents (separator between them) and cut the stream into causal-LM windows of seq_len tokens.

    Windows do not overlap; a final partial window is kept when it has at least 2 tokens.
    """
    stream: list[int] = []
    for ids in token_lists:
        stream += list(ids) + [separator]
    windows = [stream[i:i + seq_len] for i in range(0, len(stream), seq_len)]
    return [Example.causal(w) for w in windows if len(w) >= 2]


def pretrain(
    texts: Sequence[str] | str | Path,
    out_dir: str | Path | None = None,
    vocab_size: int = 512,
    model_config: DecoderConfig | None = None,
    train_config: TrainConfig | None = None,
    seq_len: int = 128,
    eval_fraction: float = 0.1,
    tokenizer: Tokenizer | None = None,
) -> PretrainResult:
    """Train a tokenizer (unless given) and a decoder from scratch on `texts` (a list of strings or a folder).

    model_config defaults to `DecoderConfig.tiny` with the tokenizer's vocabulary; the last `eval_fraction`
    of the windows is held out for the periodic loss. With out_dir, the run's checkpoints go to out_dir/run
    and the final model (own format: config.json + model.safetensors + tokenizer.json) to out_dir/model,
    loadable with `model.weights.load_decoder`.
    """
    if isinstance(texts, (str, Path)):
        texts = read_texts(texts)
    texts = list(texts)
    tokenizer = tokenizer or train_bpe_tokenizer(texts, vocab_size=vocab_size)
    config = model_config or DecoderConfig.tiny(vocab_size=tokenizer.vocab_size, max_seq_len=max(256, seq_len))
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"model vocab {config.vocab_size} < tokenizer vocab {tokenizer.vocab_size}")
    if config.max_seq_len < seq_len:
        raise ValueError(f"seq_len {seq_len} exceeds the model's max_seq_len {config.max_seq_len}")
    train_config = train_config or TrainConfig(max_steps=100, batch_size=8, lr=3e-3, warmup_steps=10,
                                               weight_decay=0.1, eval_every=25, save_every=0)

    separator = tokenizer.token_to_id("<|endoftext|>")
    separator = separator if separator is not None else tokenizer.pad_token_id
    windows = pack_windows(tokenizer.encode_batch(texts), seq_len, separator)
    n_eval = int(len(windows) * eval_fraction) if len(windows) > 1 else 0
    train_windows, eval_windows = windows[: len(windows) - n_eval], windows[len(windows) - n_eval:]

    model = Decoder(config).init_weights(seed=train_config.seed)
    model.requires_grad_(True)
    out_dir = Path(out_dir) if out_dir is not None else None
    trainer = Trainer(model, train_windows, eval_windows, train_config,
                      out_dir=out_dir / "run" if out_dir else None, pad_id=tokenizer.pad_token_id)
    if out_dir is not None:
        trainer.load_checkpoint()
    result = trainer.train()
    checkpoint = None
    if out_dir is not None:
        from model.weights import save_checkpoint

        model.eval()
        checkpoint = save_checkpoint(out_dir / "model", model.cpu(), tokenizer,
                                     identity=f"pretrained:{out_dir.name}@step{result.step}")
    return PretrainResult(model, tokenizer, config, result, checkpoint)
