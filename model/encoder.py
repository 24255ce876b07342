"""A BERT-family bidirectional encoder and the sentence-embedding pipeline on top of it.

    texts ─► WordPiece ids ─► BertModel ─► masked mean pooling ─► L2 normalise ─► unit vectors

`BertModel` is the transformer (learned absolute positions + token types, post-LayerNorm blocks, GELU MLP), in
`model.bert` and importable from here too; `Encoder` owns a model and its tokenizer and turns lists of texts into
float32 embeddings.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.bert import BertEmbeddings, BertLayer, BertModel  # noqa: F401  (re-exported: they lived here)
from model.tokenizer import Tokenizer

# An adapted encoder's name: "<base name>+adapt:<adapter fingerprint>" (see `Encoder.set_adapter`).
ADAPTER_TAG = "+adapt:"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the hidden states of real tokens: hidden [B, T, H], mask [B, T] -> [B, H]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class Encoder:
    """Sentence embeddings: tokenizer + BertModel + masked mean pooling + L2 normalisation."""

    def __init__(self, model: BertModel, tokenizer: Tokenizer, *, max_length: int | None = None,
                 name: str = "encoder", embed_dtype: torch.dtype | str | None = "auto") -> None:
        self.model = model.eval()  # the weights; the reader shares them (model.reader), so they stay as loaded
        self.tokenizer = tokenizer
        self.max_length = max_length or model.config.max_seq_length
        self.name = name
        self._cls = tokenizer.hf.token_to_id("[CLS]")
        self._sep = tokenizer.hf.token_to_id("[SEP]")
        self._pad = model.config.pad_token_id
        self.quant: str | None = None  # "int8" once `quantize` swapped the linears
        self.embed_request = embed_dtype  # "auto" | a dtype (name); see `embed_dtype`
        self._embed_copy: tuple[tuple, BertModel] | None = None  # (weights key, model cast to embed_dtype)
        self.base_name = name  # `name` without an adapter
        self.adapter: EmbeddingAdapter | None = None  # see `set_adapter`

    @classmethod
    def load(cls, spec: str | Path | None = None, device: torch.device | str | None = None,
             dtype: torch.dtype | str | None = None, quant: str | None = None,
             embed_dtype: torch.dtype | str | None = "auto") -> "Encoder":
        """Load an encoder: None = the bundled all-MiniLM-L6-v2; else a local HF folder (or hub id).

        quant="int8": the block linears as native int8 GEMMs on CPU (see `quantize`); quant="bf16": bfloat16
        weights and activations (the same as dtype=torch.bfloat16); None = as `dtype` says.
        `embed_dtype`: what `embed` computes in ("auto", "float32", "bfloat16"; see `Encoder.embed_dtype`)."""
        from model.sources import resolve_encoder
        from model.weights import load_encoder_model

        if quant == "bf16":
            dtype, quant = torch.bfloat16, None
        folder = resolve_encoder(spec)
        model, tokenizer, config = load_encoder_model(folder, device=device, dtype=dtype)
        name = str(spec) if spec else "sentence-transformers/all-MiniLM-L6-v2"
        encoder = cls(model, tokenizer, max_length=config.max_seq_length, name=name, embed_dtype=embed_dtype)
        if quant not in (None, "", "none", "float"):
            encoder.quantize(quant)
        return encoder

    def quantize(self, mode: str = "int8", skip: tuple[str, ...] = ()) -> "Encoder":
        """Switch the model's block linears to int8 x int8 native GEMMs (model.encoder_quant), in place.

        A no-op on non-CPU devices or when the native kernels are unavailable (the encoder stays float32);
        `self.quant` says which mode is in effect."""
        if mode != "int8":
            raise ValueError(f"unknown encoder quantisation {mode!r} (expected 'int8')")
        from model.encoder_quant import is_quantized, quantize_encoder

        if self.device.type == "cpu":
            quantize_encoder(self.model, skip=skip)
        self.quant = "int8" if is_quantized(self.model) else None
        return self

    @property
    def embed_dtype(self) -> torch.dtype:
        """The dtype `embed` runs the transformer's activations in (float32 in the "int16" mode; see `embed_mode`)."""
        choice = self._embed_choice()
        return torch.float32 if choice == "int16" else choice

    @property
    def embed_mode(self) -> str:
        """What `embed` runs: "int16" (a quantised copy on the native int16 kernels, model.encoder_quant), "int8"
        (an encoder quantised in place with `quantize`) or the name of `embed_dtype` ("float32", "bfloat16")."""
        if self.quant is not None:
            return self.quant
        choice = self._embed_choice()
        return choice if isinstance(choice, str) else str(choice).replace("torch.", "")

    def _embed_choice(self) -> torch.dtype | str:
        """The embedding precision: a torch dtype, or "int16".

        "auto" (the default; `ASSISTANT_EMBED_DTYPE=float32|bfloat16|int16` overrides it), for float32 weights on
        CPU: bfloat16 where the CPU multiplies bfloat16 in hardware (`model.runtime.cpu_has_native_bf16`: about 2x
        the passages/s, cosine >= 0.9999 to float32 on real text), else "int16" where its native kernels are the
        fast choice (`model.encoder_quant.int16_preferred`: AVX2 without AVX-512; ~1.7x float32, cosine >= 0.9999),
        else the weights' own dtype. "int16" asked for where the kernels are missing gives the weights' dtype.
        An int8-quantised encoder always embeds with its int8 kernels."""
        weights = next(self.model.parameters()).dtype
        request = self.embed_request
        if request in (None, "auto"):
            request = os.environ.get("ASSISTANT_EMBED_DTYPE") or "auto"
        if self.quant is not None:
            return weights
        float_on_cpu = self.device.type == "cpu" and weights == torch.float32
        if request == "auto":
            from model.encoder_quant import int16_preferred
            from model.runtime import cpu_has_native_bf16

            if float_on_cpu and cpu_has_native_bf16():
                return torch.bfloat16
            return "int16" if float_on_cpu and int16_preferred() else weights
        if str(request).lower() == "int16":
            from model.encoder_quant import int16_available

            return "int16" if float_on_cpu and int16_available() else weights
        from model.runtime import resolve_dtype

        return resolve_dtype(request)

    def set_adapter(self, folder: str | Path | None) -> "Encoder":
        """Embed through a LoRA adapter trained on these weights (`model.lora` format: adapter.json +
        adapter.safetensors, targets among qkv / attn_out / mlp_in / mlp_out), or None for the plain weights.

        Only `embed` changes: it runs a *copy* of the weights with the adapter merged in. `self.model`, which the
        reader and the cross-encoder share, is never touched. `name` becomes "<base name>+adapt:<fingerprint>"
        (a hash of the adapter's weights), so an index records which vectors it holds and a mismatch is caught.
        CheckpointError when the folder is not an adapter or was trained on other weights."""
        if folder is not None and self.quant is not None:
            from model.errors import CheckpointError

            raise CheckpointError("an adapted index needs the float encoder, not the int8 one; load the encoder "
                                  "without quant='int8', or turn the adaptation off (--no-adapt)")
        self.adapter = None if folder is None else EmbeddingAdapter.load(folder, self.model)
        self.name = self.base_name if self.adapter is None else self.base_name + ADAPTER_TAG + self.adapter.fingerprint
        self._embed_copy = None
        return self

    def _embedding_model(self) -> BertModel:
        """`self.model`, or a copy of it cast to `embed_dtype` or quantised for the "int16" mode, and/or with the
        adapter merged in (kept while the weights are unchanged: the key is each parameter's identity and in-place
        version, so a load_state_dict, a merged adapter or new modules rebuild it)."""
        choice = self._embed_choice()
        fingerprint = self.adapter.fingerprint if self.adapter is not None else None
        if fingerprint is None and choice == next(self.model.parameters()).dtype:
            self._embed_copy = None
            return self.model
        key = (choice, self.device, fingerprint, tuple((id(p), p._version) for p in self.model.parameters()))
        if self._embed_copy is None or self._embed_copy[0] != key:
            self._embed_copy = None  # free the stale copy before making the new one
            model = self.model
            if self.adapter is not None or choice != "int16":
                model = copy.deepcopy(self.model)
            if self.adapter is not None:
                self.adapter.merge_into(model)
            if choice == "int16":
                from model.encoder_quant import quantize_encoder_int16

                model = quantize_encoder_int16(model)  # its own (quantised) copy of the weights
            else:
                model = model.to(choice)
            self._embed_copy = (key, model.eval())
        return self._embed_copy[1]

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> "Encoder":
        self.model.to(device)
        return self

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's content token ids (without [CLS]/[SEP]), untruncated: what `embed_token_ids` takes."""
        return [enc.ids for enc in self.tokenizer.hf.encode_batch(list(texts), add_special_tokens=False)]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Number of content tokens of each text (without [CLS]/[SEP]); at most `max_length - 2` get embedded."""
        return [len(ids) for ids in self.token_ids(texts)]

    def _batch_tensors(self, ids_list: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """[CLS] ids [SEP], truncated to max_length and right-padded -> input_ids, attention_mask [B, T]."""
        limit = self.max_length - 2
        rows = [[self._cls, *ids[:limit], self._sep] for ids in ids_list]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return input_ids, mask

    def embed(self, texts: Sequence[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        """Unit-length float32 embeddings [len(texts), dim], in input order.

        Texts are sorted by length so each batch pads little, and truncated at the model's max length.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_token_ids(self.token_ids(texts), batch_size, show_progress)

    def embed_token_ids(self, ids_list: Sequence[Sequence[int]], batch_size: int = 32,
                        show_progress: bool = False) -> np.ndarray:
        """`embed` for texts already tokenized by `token_ids` (the indexer keeps the ids its chunker counted,
        so no chunk is tokenized twice): unit-length float32 embeddings [len(ids_list), dim], in input order."""
        ids_list = list(ids_list)
        if not ids_list:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(ids_list)), key=lambda i: -len(ids_list[i]))
        out = np.empty((len(ids_list), self.dim), dtype=np.float32)
        device = self.device
        model = self._embedding_model()
        starts = range(0, len(order), batch_size)
        if show_progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="embedding", unit="batch")
        with torch.inference_mode():
            for start in starts:
                idx = order[start : start + batch_size]
                input_ids, mask = self._batch_tensors([ids_list[i] for i in idx])
                input_ids, mask = input_ids.to(device), mask.to(device)
                hidden = model(input_ids, mask)  # [b, T, H]
                pooled = F.normalize(mean_pool(hidden.float(), mask), p=2, dim=-1)  # [b, H]
                out[idx] = pooled.cpu().numpy()
        return out


class EmbeddingAdapter:
    """A LoRA adapter for the embedder, held as tensors and merged into a copy of the weights
    (`Encoder.set_adapter`). `fingerprint`: the first 12 hex digits of the sha256 of adapter.safetensors."""

    def __init__(self, folder: Path, fingerprint: str, scaling: float, state: dict[str, torch.Tensor]) -> None:
        self.folder = folder
        self.fingerprint = fingerprint
        self.scaling = scaling
        self.state = state  # "<linear>.lora_a" [r, in], "<linear>.lora_b" [out, r]

    @classmethod
    def load(cls, folder: str | Path, base: BertModel) -> "EmbeddingAdapter":
        """Read an adapter folder and check it was trained on `base` (CheckpointError otherwise)."""
        import hashlib

        from safetensors.torch import load

        from model.cross_encoder import base_fingerprint
        from model.errors import CheckpointError
        from model.lora import ADAPTER_WEIGHTS, LoraConfig, read_adapter_info

        folder = Path(folder)
        info = read_adapter_info(folder)
        raw = (folder / ADAPTER_WEIGHTS).read_bytes()
        trained_on, here = info.get("base_identity"), base_fingerprint(base)
        if trained_on != here:
            raise CheckpointError(
                f"the encoder adapter in {folder} was trained on other weights (fingerprint {trained_on}) than the "
                f"loaded encoder's ({here}); adapt the index again (`assistant adapt`) or turn it off (--no-adapt)")
        try:
            state = load(raw)
        except Exception as exc:  # safetensors raises several types for damaged files
            raise CheckpointError(f"{folder / ADAPTER_WEIGHTS} is damaged ({exc}); adapt the index again "
                                  "(`assistant adapt`) or turn it off (--no-adapt)") from exc
        names = {name for name, _ in base.named_modules()}
        layers = {key.rsplit(".", 1)[0] for key in state}
        if not layers <= names or any(f"{n}.lora_a" not in state or f"{n}.lora_b" not in state for n in layers):
            raise CheckpointError(f"the adapter in {folder} does not fit this encoder's layers; adapt the index again")
        fingerprint = hashlib.sha256(raw).hexdigest()[:12]
        return cls(folder, fingerprint, LoraConfig.from_dict(info["lora"]).scaling, state)

    @torch.no_grad()
    def merge_into(self, model: BertModel) -> None:
        """Add scaling * B @ A to each adapted linear's weight of `model` (a copy: never the shared weights)."""
        for name in {key.rsplit(".", 1)[0] for key in self.state}:
            linear = model.get_submodule(name)
            a, b = self.state[f"{name}.lora_a"].float(), self.state[f"{name}.lora_b"].float()  # [r, in], [out, r]
            delta = (b @ a) * self.scaling  # [out, in]
            linear.weight.copy_((linear.weight.float() + delta.to(linear.weight.device)).to(linear.weight.dtype))
