"""A cross-encoder on the project's BERT encoder: how relevant a passage is to a question, read together.

    question, passages ─► WordPiece pairs: [CLS] question [SEP] passage (truncated) [SEP]
        ─► the embedder's embeddings and its first `layers` blocks: shared and frozen (LoRA side paths beside
           them), or the top `own_layers` of them as trained copies
        ─► the last block for the [CLS] row only ─► tanh(Linear) ─► Linear ─► score

Unlike the bi-encoder, the question's and the passage's tokens attend to each other, so word-level matches
(a name, a date, the question's own phrasing) count. It costs one forward pass per (question, passage), so it
rescores a retriever's top N hits (`retrieval.retriever.Retriever.search(rerank=N)`) instead of searching.
Only the first `layers` blocks run, and the last one only for [CLS] (`cls_block`: its keys and values for every
token, the rest for one row): the shipped 2-block, 192-token configuration costs ~0.19 s of CPU per thread to
score 20 pairs on two AVX2 cores (measured on a busy machine; `python benchmarks/rerank.py --speed`).

Sharing: like the reader (model.reader), `CrossEncoderNet` holds the embedder's `BertModel` without owning it;
its state dict holds only what it adds (LoRA, own blocks, head), and a saved cross-encoder records a
fingerprint of the base weights it ran on (embeddings and LayerNorms), so it is refused beside any other encoder.

Scores are unnormalised logits, trained with a listwise softmax over (positive, near misses): their differences
are margins that `model.distill.margin_mse_loss` can teach a bi-encoder.

Inference: `score` runs a merged copy (LoRA folded into copies of the blocks it uses) in bfloat16 on a CPU that
multiplies bfloat16 natively, else in the weights' dtype (float32 on an AVX2 CPU, where bfloat16 is slower);
the copy is rebuilt when the trained weights change.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.bert import BertModel
from model.errors import CheckpointError
from model.lora import LowRankSide

FORMAT = "assistant-cross-encoder/1"
CONFIG_NAME = "cross_encoder.json"
WEIGHTS_NAME = "cross_encoder.safetensors"
SIDE_TARGETS = ("qkv", "attn_out", "mlp_in", "mlp_out")  # the linears of a BertLayer


@dataclass
class CrossEncoderConfig:
    """What the cross-encoder uses of the shared encoder, what it adds, and how long its inputs are."""

    layers: int = 2  # the encoder's first blocks it runs (0 = all)
    own_layers: int = 2  # of those, the top ones replaced by trained copies
    lora_rank: int = 0  # LoRA rank on the shared blocks (0 = none: they stay exactly the embedder's)
    lora_alpha: float = 64.0
    max_length: int = 192  # tokens per pair, [CLS] question [SEP] passage [SEP]; longer passages are cut
    max_question_tokens: int = 48
    match_features: bool = True  # mark tokens whose id occurs in the other segment (see CrossEncoderNet.embed)
    match_exclude: list[int] = field(default_factory=list)  # token ids never marked ([CLS], [SEP], punctuation)
    base: str = ""  # name of the encoder it was trained on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossEncoderConfig":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def base_fingerprint(base: BertModel) -> str:
    """A short hash of the base weights that identifies them whatever dtype they were loaded in (float32,
    bfloat16) or however the block linears are stored (int8): the embeddings and every block's LayerNorms,
    rounded to bfloat16 before hashing."""
    digest = hashlib.sha256()
    tensors = list(base.embeddings.state_dict().items())
    for i, layer in enumerate(base.layers):
        for norm in ("attn_norm", "mlp_norm"):
            tensors += [(f"{i}.{norm}.{k}", v) for k, v in getattr(layer, norm).state_dict().items()]
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


class CrossEncoderNet(nn.Module):
    """The network: shared embeddings + first blocks (+ LoRA beside them), own top blocks, a [CLS] scoring head."""

    def __init__(self, base: BertModel, config: CrossEncoderConfig) -> None:
        super().__init__()
        n_layers = base.config.num_layers
        used = config.layers or n_layers
        if not 1 <= used <= n_layers:
            raise ValueError(f"layers must be in 1..{n_layers} (or 0 = all), got {config.layers}")
        if not 0 <= config.own_layers <= used:
            raise ValueError(f"own_layers must be in 0..{used}, got {config.own_layers}")
        self.config = config
        self.__dict__["base"] = base  # shared, not a submodule: not in state_dict(), not moved by .to()
        self.n_used = used
        self.n_shared = used - config.own_layers
        hidden, inner = base.config.hidden_size, base.config.intermediate_size
        sizes = {"qkv": (hidden, 3 * hidden), "attn_out": (hidden, hidden), "mlp_in": (hidden, inner),
                 "mlp_out": (inner, hidden)}
        self.own = nn.ModuleList(copy.deepcopy(base.layers[i]) for i in range(self.n_shared, used))
        self.own.requires_grad_(True)
        self.side = None
        if config.lora_rank > 0 and self.n_shared > 0:
            self.side = nn.ModuleList(
                nn.ModuleDict({name: LowRankSide(*sizes[name], config.lora_rank, config.lora_alpha)
                               for name in SIDE_TARGETS})
                for _ in range(self.n_shared)
            )
        self.match = None
        if config.match_features:
            # Exact-match features (as DrQA's readers have): a learned vector added to every question token whose
            # id occurs in the passage and every passage token whose id occurs in the question. Term matches are
            # what relevance starts from; given as input, two blocks need not discover them first.
            self.match = nn.Embedding(2, hidden)
            nn.init.zeros_(self.match.weight[0])
            nn.init.normal_(self.match.weight[1], std=0.1)
        self.register_buffer("exclude", torch.tensor(sorted(set(config.match_exclude)) or [-1], dtype=torch.long),
                             persistent=False)
        self.pool = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.normal_(self.pool.weight, std=0.02)
        nn.init.zeros_(self.pool.bias)
        nn.init.normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)
        base.requires_grad_(False)
        self.to(next(base.parameters()).device)

    def match_flags(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] long: 1 where a token's id also occurs in the other segment of its pair (question vs passage),
        0 elsewhere (padding and `config.match_exclude` ids never match)."""
        valid = attention_mask.bool() & ~torch.isin(input_ids, self.exclude)  # [B, T]
        same = input_ids[:, :, None] == input_ids[:, None, :]  # [B, T, T]
        other = token_type_ids[:, :, None] != token_type_ids[:, None, :]  # [B, T, T]
        return (same & other & valid[:, None, :]).any(-1).logical_and(valid).long()

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              token_type_ids: torch.Tensor) -> torch.Tensor:
        """The input of the first block: the shared embeddings (+ the match features) -> [B, T, H]."""
        with torch.no_grad():
            x = self.base.embeddings(input_ids, token_type_ids)  # [B, T, H]
        if self.match is not None:
            x = x + self.match(self.match_flags(input_ids, attention_mask, token_type_ids)).to(x.dtype)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, attention_mask, token_type_ids: [B, T] -> scores [B] (float32)
        base: BertModel = self.base
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        x = self.embed(input_ids, attention_mask, token_type_ids)  # [B, T, H]
        # Nothing below the own blocks learns without LoRA or match features: run the shared blocks without grad.
        frozen = (self.side is None and self.match is None) or not torch.is_grad_enabled()
        sides = [None if self.side is None else self.side[i] for i in range(self.n_shared)]
        with torch.no_grad() if frozen else torch.enable_grad():
            shared_top = self.n_shared if self.own else self.n_shared - 1  # a shared last block runs [CLS] only
            for i in range(shared_top):
                x = base.layers[i](x, mask, side=sides[i])
            if not self.own:
                cls = cls_block(base.layers[shared_top], x, mask, sides[shared_top])  # [B, H]
        if self.own:
            for layer in self.own[:-1]:
                x = layer(x.to(layer.qkv.weight.dtype), mask)
            last = self.own[-1]
            cls = cls_block(last, x.to(last.qkv.weight.dtype), mask)  # [B, H]
        return self.score_head(cls)

    def score_head(self, cls: torch.Tensor) -> torch.Tensor:
        # cls: [B, H] -> [B] float32
        cls = cls.to(self.pool.weight.dtype)
        return self.out(torch.tanh(self.pool(cls))).squeeze(-1).float()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The cross-encoder's own weights (what it adds beside the shared encoder)."""
        return {k: v.detach() for k, v in self.state_dict().items()}


def cls_block(layer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None,
              side: nn.Module | None = None) -> torch.Tensor:
    """A BertLayer's output at position 0 ([CLS]) only: what the block computes for that row, without the
    query, attention output and MLP of the other T-1 rows (their keys and values are still needed). The
    score reads only [CLS], so the last block costs ~1/6 of a full one (keys + values: 2 of its 12 H x H
    products per token). A block whose qkv is not a plain nn.Linear (int8) runs whole and gives its row 0.

    x: [B, T, H]; attn_mask: [B, 1, 1, T] bool or None; side: LoRA updates beside the block -> [B, H]."""
    if not isinstance(layer.qkv, nn.Linear):
        return layer(x, attn_mask, side=side)[:, 0]
    batch, seq, hidden = x.shape
    heads = layer.n_heads
    weight, bias = layer.qkv.weight, layer.qkv.bias  # [3H, H], [3H]
    query = F.linear(x[:, :1], weight[:hidden], None if bias is None else bias[:hidden])  # [B, 1, H]
    key_value = F.linear(x, weight[hidden:], None if bias is None else bias[hidden:])  # [B, T, 2H]
    if side is not None and "qkv" in side:
        extra = side["qkv"](x)  # [B, T, 3H]
        query = query + extra[:, :1, :hidden]
        key_value = key_value + extra[:, :, hidden:]
    q = query.view(batch, 1, heads, hidden // heads).transpose(1, 2)  # [B, nh, 1, hd]
    k, v = key_value.view(batch, seq, 2, heads, hidden // heads).permute(2, 0, 3, 1, 4).unbind(0)  # [B, nh, T, hd]
    attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [B, nh, 1, hd]
    attn = attn.transpose(1, 2).reshape(batch, 1, hidden)  # [B, 1, H]
    row = layer._linear("attn_out", attn, side)
    row = layer.attn_norm(x[:, :1] + row)  # [B, 1, H]
    row = layer.mlp_norm(row + layer._linear("mlp_out", F.gelu(layer._linear("mlp_in", row, side)), side))
    return row[:, 0]  # [B, H]


def merged_layers(net: CrossEncoderNet, dtype: torch.dtype) -> nn.ModuleList | None:
    """Copies of the blocks the network runs with its LoRA folded into their weights, cast to `dtype`; None when
    a shared block's linears are not plain `nn.Linear` (an int8-quantised embedder: run the network itself)."""
    base: BertModel = net.base
    layers = []
    for i in range(net.n_shared):
        layer = base.layers[i]
        if not all(isinstance(getattr(layer, name), nn.Linear) for name in SIDE_TARGETS):
            return None
        layer = copy.deepcopy(layer).float()
        if net.side is not None:
            with torch.no_grad():
                for name, side in net.side[i].items():
                    linear = getattr(layer, name)
                    delta = side.scaling * (side.lora_b.float() @ side.lora_a.float())  # [out, in]
                    linear.weight += delta.to(linear.weight.device)
        layers.append(layer)
    layers += [copy.deepcopy(layer) for layer in net.own]
    return nn.ModuleList(layers).to(dtype).eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# inputs: (question, passage) pairs
# ---------------------------------------------------------------------------------------------------------------
class PairMaker:
    """Token ids of [CLS] question [SEP] passage [SEP] pairs, at most `config.max_length` tokens each."""

    def __init__(self, tokenizer: Any, config: CrossEncoderConfig) -> None:
        self.hf = getattr(tokenizer, "hf", tokenizer)  # model.tokenizer.Tokenizer or a tokenizers.Tokenizer
        self.config = config
        self.cls = self.hf.token_to_id("[CLS]")
        self.sep = self.hf.token_to_id("[SEP]")
        if self.cls is None or self.sep is None:
            raise CheckpointError("the encoder's tokenizer has no [CLS]/[SEP] tokens; the cross-encoder needs a "
                                  "BERT tokenizer")

    def question_ids(self, question: str) -> list[int]:
        return self.hf.encode(question, add_special_tokens=False).ids[: self.config.max_question_tokens]

    def passage_ids(self, passages: Sequence[str]) -> list[list[int]]:
        room = self.config.max_length - 3  # the shortest question still leaves the passage this much at most
        return [list(e.ids[:room]) for e in self.hf.encode_batch(list(passages), add_special_tokens=False)]

    def pair(self, question: list[int], passage: list[int]) -> tuple[list[int], list[int]]:
        """(input_ids, token_type_ids) of one pair; the passage is cut to what the length leaves."""
        room = max(0, self.config.max_length - len(question) - 3)
        body = passage[:room]
        ids = [self.cls, *question, self.sep, *body, self.sep]
        return ids, [0] * (len(question) + 2) + [1] * (len(body) + 1)

    def pairs(self, question: str, passages: Sequence[str]) -> list[tuple[list[int], list[int]]]:
        q = self.question_ids(question)
        return [self.pair(q, p) for p in self.passage_ids(passages)]


def unmatched_ids(tokenizer: Any) -> list[int]:
    """Token ids the match features ignore: the special tokens and single punctuation characters."""
    hf = getattr(tokenizer, "hf", tokenizer)
    vocab = hf.get_vocab()
    ids = {i for token, i in vocab.items() if token.startswith("[") and token.endswith("]") and token[1:-1].isupper()}
    ids |= {i for token, i in vocab.items() if len(token) == 1 and not token.isalnum()}
    return sorted(ids)


def pad_pairs(rows: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad (input_ids, token_type_ids) rows -> input_ids, attention_mask, token_type_ids [B, T]."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, tt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        types[i, : len(tt)] = torch.tensor(tt, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types}


# ---------------------------------------------------------------------------------------------------------------
# training: a task for model.train.Trainer
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class PairGroup:
    """One question's pairs for the listwise loss: the positive first, then its negatives (near misses)."""

    pairs: list[tuple[list[int], list[int]]]  # (input_ids, token_type_ids) per pair


class ListwiseTask:
    """model.train's task interface: softmax cross-entropy of each group's scores with the positive (index 0) as
    the target. Groups in one micro-batch may differ in size (short groups are masked)."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def collate(self, groups: Sequence[PairGroup]) -> dict[str, torch.Tensor]:
        size = max(len(g.pairs) for g in groups)
        batch = pad_pairs([p for g in groups for p in g.pairs], self.pad_id)
        slot = torch.full((len(groups), size), -1, dtype=torch.long)  # [G, n]: row of each pair, -1 = none
        row = 0
        for i, g in enumerate(groups):
            slot[i, : len(g.pairs)] = torch.arange(row, row + len(g.pairs))
            row += len(g.pairs)
        batch["slot"] = slot
        return batch

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["slot"].shape[0])

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed listwise cross-entropy over the batch's groups, and how many groups."""
        scores = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])  # [N]
        slot = batch["slot"]  # [G, n]
        grouped = scores[slot.clamp(min=0)].masked_fill(slot < 0, -1e4)  # [G, n]
        target = torch.zeros(slot.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(grouped, target, reduction="sum"), int(slot.shape[0])


# ---------------------------------------------------------------------------------------------------------------
# the user-facing cross-encoder
# ---------------------------------------------------------------------------------------------------------------
class CrossEncoder:
    """A CrossEncoderNet beside a loaded Encoder, with its tokenizer and a fast inference copy.

        ce = CrossEncoder.load(encoder, "assistant/data/reranker")
        ce.score("Who introduced LoRA?", [passage_1, passage_2])   # -> [7.1, -2.3]
    """

    def __init__(self, model: CrossEncoderNet, tokenizer: Any, *, name: str = "cross-encoder",
                 metadata: dict[str, Any] | None = None, run_dtype: torch.dtype | str | None = "auto") -> None:
        self.model = model.eval()
        self.config = model.config
        self.pairs = PairMaker(tokenizer, model.config)
        self.name = name
        self.metadata = metadata or {}
        self.run_request = run_dtype
        self._fast: tuple[tuple, nn.ModuleList | None] | None = None  # (weights key, merged blocks)

    @classmethod
    def new(cls, encoder: Any, config: CrossEncoderConfig | None = None, **options: Any) -> "CrossEncoder":
        """An untrained cross-encoder beside `encoder` (a model.encoder.Encoder)."""
        config = config or CrossEncoderConfig()
        if not config.base:
            config.base = encoder.name
        if config.match_features and not config.match_exclude:
            config.match_exclude = unmatched_ids(encoder.tokenizer)
        return cls(CrossEncoderNet(encoder.model, config), encoder.tokenizer, **options)

    @classmethod
    def load(cls, encoder: Any, path: str | Path, **options: Any) -> "CrossEncoder":
        """Load weights saved by `save` beside `encoder`; CheckpointError if they do not fit it (another encoder's
        weights, a damaged or foreign folder)."""
        from safetensors.torch import load_file

        folder = Path(path)
        meta_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not meta_path.is_file() or not weights_path.is_file():
            raise CheckpointError(f"{folder} is not a cross-encoder folder (it needs {CONFIG_NAME} and "
                                  f"{WEIGHTS_NAME}); train one with `python -m assistant.rerank_training`, "
                                  "or run without --rerank")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{meta_path} cannot be read ({exc}); restore it or run without --rerank") from exc
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}; "
                                  "this cross-encoder was written by another version")
        config = CrossEncoderConfig.from_dict(meta.get("config", {}))
        base = encoder.model
        same_shape = (meta.get("hidden_size") == base.config.hidden_size
                      and meta.get("num_layers") == base.config.num_layers)
        if not same_shape or meta.get("base_fingerprint") != base_fingerprint(base):
            raise CheckpointError(
                f"the cross-encoder in {folder} was trained on {config.base or 'another encoder'} (fingerprint "
                f"{meta.get('base_fingerprint')}), not on the loaded encoder {encoder.name} (fingerprint "
                f"{base_fingerprint(base)}); use the encoder it was trained on, retrain it, or run without --rerank")
        try:
            model = CrossEncoderNet(base, config)
        except ValueError as exc:  # a config that does not fit the encoder (layers beyond its depth, ...)
            raise CheckpointError(f"{meta_path} does not fit the loaded encoder ({exc}); restore the folder or "
                                  "run without --rerank") from exc
        try:
            state = load_file(str(weights_path))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise CheckpointError(f"{weights_path} is damaged ({exc}); restore it or run without --rerank") from exc
        own = model.state_dict()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise CheckpointError(f"{weights_path} does not match its {CONFIG_NAME}; restore the folder or run "
                                  "without --rerank")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        return cls(model, encoder.tokenizer, name=str(folder), metadata=meta.get("metadata", {}), **options)

    @staticmethod
    def fits(encoder: Any, path: str | Path) -> bool:
        """Whether the cross-encoder folder was trained on `encoder`'s base weights (its recorded fingerprint
        matches); False for a folder that cannot be read. `load` says why in detail."""
        try:
            meta = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8"))
            return meta.get("base_fingerprint") == base_fingerprint(encoder.model)
        except (OSError, ValueError, AttributeError):
            return False

    def save(self, folder: str | Path, metadata: dict[str, Any] | None = None,
             dtype: torch.dtype = torch.float16) -> Path:
        """Write cross_encoder.json + cross_encoder.safetensors (own weights only, `dtype`), atomically per file."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.to("cpu", dtype).contiguous() for k, v in self.model.trainable_state().items()}
        base = self.model.base
        meta = {"format": FORMAT, "config": self.config.to_dict(), "hidden_size": base.config.hidden_size,
                "num_layers": base.config.num_layers, "base_fingerprint": base_fingerprint(base),
                "metadata": {**self.metadata, **(metadata or {})}}
        tmp = folder / f".{WEIGHTS_NAME}.tmp-{os.getpid()}"
        save_file(state, str(tmp))
        os.replace(tmp, folder / WEIGHTS_NAME)
        tmp = folder / f".{CONFIG_NAME}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, folder / CONFIG_NAME)
        return folder

    @property
    def device(self) -> torch.device:
        return next(self.model.base.parameters()).device

    @property
    def run_dtype(self) -> torch.dtype:
        """What `score` computes in: "auto" = bfloat16 on a CPU with native bfloat16 matmuls when the weights are
        float32 (like `Encoder.embed_dtype`), else the weights' dtype; or the dtype asked for."""
        weights = self.model.pool.weight.dtype
        request = self.run_request
        if request in (None, "auto"):
            if self.device.type != "cpu" or weights != torch.float32:
                return weights
            try:
                from model.runtime import cpu_has_native_bf16
            except ImportError:  # an older model.runtime
                return weights
            return torch.bfloat16 if cpu_has_native_bf16() else weights
        from model.runtime import resolve_dtype

        return resolve_dtype(request)

    def _fast_layers(self) -> nn.ModuleList | None:
        """The merged inference blocks (see `merged_layers`), rebuilt when any trained weight changed."""
        dtype = self.run_dtype
        key = (dtype, self.device, tuple((id(p), p._version) for p in self.model.parameters()))
        if self._fast is None or self._fast[0] != key:
            self._fast = None
            self._fast = (key, merged_layers(self.model, dtype))
        return self._fast[1]

    @torch.inference_mode()
    def _scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B] of one padded batch, through the merged blocks when there are any."""
        net = self.model
        layers = self._fast_layers()
        if layers is None:
            return net(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        mask = batch["attention_mask"]
        attn = None if bool(mask.all()) else mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        dtype = next(layers.parameters()).dtype
        x = net.embed(batch["input_ids"], mask, batch["token_type_ids"]).to(dtype)  # [B, T, H]
        for layer in layers[:-1]:
            x = layer(x, attn)
        return net.score_head(cls_block(layers[-1], x, attn).float())

    def score(self, question: str, passages: Sequence[str], batch_size: int = 32) -> list[float]:
        """A relevance score (logit) per passage, in the passages' order: higher = more relevant."""
        passages = list(passages)
        if not passages:
            return []
        rows = self.pairs.pairs(question, passages)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch together
        out = [0.0] * len(rows)
        pad = self.model.base.config.pad_token_id
        for begin in range(0, len(order), batch_size):
            idx = order[begin : begin + batch_size]
            batch = {k: v.to(self.device) for k, v in pad_pairs([rows[i] for i in idx], pad).items()}
            for i, value in zip(idx, self._scores(batch).tolist()):
                out[i] = float(value)
        return out

    def num_parameters(self) -> int:
        """Parameters the cross-encoder adds beside the shared encoder."""
        return sum(p.numel() for p in self.model.parameters())


__all__ = ["CrossEncoder", "CrossEncoderConfig", "CrossEncoderNet", "ListwiseTask", "PairGroup", "PairMaker",
           "base_fingerprint", "cls_block", "merged_layers", "pad_pairs", "unmatched_ids"]
