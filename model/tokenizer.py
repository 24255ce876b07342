"""Tokenizers built with the `tokenizers` library, and chat templates rendered with jinja2.

Two ways in: a `tokenizer.json` file (HF format) or the tokenizer metadata of a GGUF file (byte-level BPE
vocabulary + merges, the pre-tokenizer the file names, special tokens, add-BOS flag, chat template).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from model.errors import CheckpointError

# GPT-2's pre-tokenizer pattern; byte-level BPE models in GGUF files name variants of it.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_level_pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    """The pre-tokenizer a GGUF file names in `tokenizer.ggml.pre`.

    llama.cpp's `smollm` entry (used by SmolLM/SmolLM2) splits digits one by one and then applies GPT-2's
    regex, which is what the original SmolLM2 `tokenizer.json` declares:
    Sequence([Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)]).
    """
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm",):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("default", "gpt2", "gpt-2", ""):
        return byte_level
    if pre in ("qwen2", "llama3", "llama-bpe", "deepseek-llm", "smaug-bpe"):
        # Their regex differs from GPT-2's mainly in digit grouping (1-3 digits) and case-insensitive contractions.
        pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+")
        if pre == "qwen2":
            pattern = pattern.replace(r"\p{N}{1,3}", r"\p{N}")
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    raise CheckpointError(
        f"the GGUF tokenizer names pre-tokenizer {pre!r}, which this project does not know yet; "
        "use the model's HF folder (with tokenizer.json) instead"
    )


class Tokenizer:
    """A thin wrapper over `tokenizers.Tokenizer` that knows the model's special tokens and chat template."""

    def __init__(
        self,
        tokenizer: HFTokenizer,
        *,
        bos_token: str | None = None,
        eos_tokens: Sequence[str] = (),
        pad_token: str | None = None,
        add_bos: bool = False,
        chat_template: str | None = None,
    ) -> None:
        # Truncation and padding are decided by our code (per batch), never baked into the tokenizer file.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.hf = tokenizer
        self.bos_token = bos_token
        self.eos_tokens = tuple(t for t in eos_tokens if t)
        self.pad_token = pad_token
        self.add_bos = add_bos
        self.chat_template = chat_template

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | Path, chat_template: str | None = None, **special: Any) -> "Tokenizer":
        """Load a `tokenizer.json`; special tokens and template come from `tokenizer_config.json` beside it."""
        path = Path(path)
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the tokenizers library raises bare Exceptions
            raise CheckpointError(f"{path}: not a readable tokenizer.json ({exc})") from exc
        config_path = path.with_name("tokenizer_config.json")
        cfg: dict[str, Any] = {}
        if config_path.exists():
            cfg = json.loads(config_path.read_text(encoding="utf-8"))

        def token_text(value: Any) -> str | None:
            return value.get("content") if isinstance(value, dict) else value

        eos = special.pop("eos_tokens", None)
        if eos is None:
            eos = [t for t in [token_text(cfg.get("eos_token"))] if t]
        template = chat_template or cfg.get("chat_template")
        if isinstance(template, list):  # several named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), template[0]["template"])
        return cls(
            hf,
            bos_token=special.pop("bos_token", token_text(cfg.get("bos_token"))),
            eos_tokens=eos,
            pad_token=special.pop("pad_token", token_text(cfg.get("pad_token"))),
            add_bos=special.pop("add_bos", bool(cfg.get("add_bos_token", False))),
            chat_template=template,
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any]) -> "Tokenizer":
        """Build a byte-level BPE tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise CheckpointError(
                f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2'); "
                "use the model's HF folder with tokenizer.json instead"
            )
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        token_types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        vocab = {tok: i for i, tok in enumerate(tokens)}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        hf.pre_tokenizer = _byte_level_pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")))
        hf.decoder = decoders.ByteLevel()
        hf.post_processor = processors.ByteLevel(trim_offsets=False)
        # Control tokens (type 3) and user-defined tokens (type 4) are matched whole, before BPE.
        specials = [AddedToken(tokens[i], special=(t == 3), normalized=False)
                    for i, t in enumerate(token_types) if t in (3, 4)]
        hf.add_tokens(specials)

        def tok(key: str) -> str | None:
            idx = meta.get(key)
            return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

        eos = [tok("tokenizer.ggml.eos_token_id")]
        eot = tok("tokenizer.ggml.eot_token_id")
        if eot and eot not in eos:
            eos.append(eot)
        return cls(
            hf,
            bos_token=tok("tokenizer.ggml.bos_token_id"),
            eos_tokens=[e for e in eos if e],
            pad_token=tok("tokenizer.ggml.padding_token_id"),
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=meta.get("tokenizer.chat_template"),
        )

    # ---- ids ----------------------------------------------------------------------------------------------
    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.hf.token_to_id(token)

    @cached_property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = (self.hf.token_to_id(t) for t in self.eos_tokens)
        return tuple(i for i in ids if i is not None)

    @cached_property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @cached_property
    def pad_token_id(self) -> int:
        pad = self.token_to_id(self.pad_token)
        if pad is not None:
            return pad
        return self.eos_token_ids[0] if self.eos_token_ids else 0

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    # ---- encode / decode ----------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. With `add_special_tokens`, the model's BOS (if it wants one) and post-processing."""
        ids = self.hf.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id, *ids]
        return ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of several texts (parallel in the Rust library)."""
        encodings = self.hf.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        out = [e.ids for e in encodings]
        if add_special_tokens and self.add_bos and self.bos_token_id is not None:
            out = [ids if ids[:1] == [self.bos_token_id] else [self.bos_token_id, *ids] for ids in out]
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ---------------------------------------------------------------------------------------------
    @cached_property
    def _compiled_template(self):
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise CheckpointError(f"chat template error: {message}")

        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.chat_template or CHATML_TEMPLATE)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Render chat messages with the checkpoint's template, the way Hugging Face renders it."""
        return self._compiled_template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_tokens[0] if self.eos_tokens else "",
        )

    # ---- persistence --------------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write `tokenizer.json` and `tokenizer_config.json` (specials, add-BOS flag, chat template)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(folder / "tokenizer.json"))
        config = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_tokens[0] if self.eos_tokens else None,
            "eos_tokens": list(self.eos_tokens),
            "pad_token": self.pad_token,
            "add_bos_token": self.add_bos,
            "chat_template": self.chat_template,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> "Tokenizer":
        """Load what `save` wrote (all eos tokens included)."""
        folder = Path(folder)
        cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        return cls.from_file(folder / "tokenizer.json", eos_tokens=cfg.get("eos_tokens") or [cfg.get("eos_token")])


def train_bpe_tokenizer(
    texts: Sequence[str],
    vocab_size: int = 512,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    chat_template: str | None = CHATML_TEMPLATE,
    eos_token: str = "<|im_end|>",
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `texts` (ids 0.. are the special tokens, in order).

    Used to make tiny models from scratch (tests, `model.pretrain`). Every byte is in the alphabet, so any
    text (emoji, CJK) round-trips.
    """
    from tokenizers import trainers

    hf = HFTokenizer(models.BPE(fuse_unk=False))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in special_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(list(texts), trainer=trainer)
    return Tokenizer(hf, bos_token=None, eos_tokens=[eos_token], pad_token=special_tokens[0],
                     add_bos=False, chat_template=chat_template)
