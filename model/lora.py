"""Low-rank adapters (LoRA) for the decoder's linear layers.

A `LoraLinear` keeps the frozen base weight W and learns a low-rank update:

    y = x W^T + b + (alpha / rank) * dropout(x) A^T B^T        A: [rank, in], B: [out, rank]

B starts at zero, so an adapter that was never trained changes nothing. For inference the update can be
merged into W (`merge_lora`: no extra cost per token) and taken out again (`unmerge_lora`).

`LoraLinear` subclasses `nn.Linear` and shares the base layer's `weight` / `bias` parameters, so the
model's state-dict names for the base weights do not change when adapters are applied (the adapter adds
`<layer>.lora_a` and `<layer>.lora_b`), and tied or shared weights stay tied.

On disk an adapter is a folder: `adapter.safetensors` (only the A and B matrices) and `adapter.json`
(the `LoraConfig`, the identity of the base weights it was trained on, and free-form training metadata).
`load_adapter` refuses an adapter whose base identity differs from the model it is loaded into.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.errors import CheckpointError

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
ADAPTER_FORMAT = "assistant-lora/1"
DEFAULT_TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass
class LoraConfig:
    """Which linear layers get adapters and how big they are.

    rank: inner dimension r of the update B @ A.
    alpha: the update is scaled by alpha / rank, so changing the rank does not change the learning rate.
    dropout: dropout on the adapter's input during training (the base path never sees it).
    targets: final attribute names of the linear layers to adapt (`wq` matches `layers.3.attention.wq`).
    layers: indices of the decoder blocks (`layers.<i>.`) to adapt; None = all blocks. Adapting only the
        upper blocks makes training cheaper: the backward pass stops at the lowest adapted block.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        if self.layers is not None:
            self.layers = tuple(int(i) for i in self.layers)
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def matches(self, module_name: str) -> bool:
        """True when the module at this dotted name should get an adapter."""
        parts = module_name.split(".")
        if parts[-1] not in self.targets:
            return False
        if self.layers is None:
            return True
        for prev, index in zip(parts, parts[1:]):
            if prev == "layers" and index.isdigit():
                return int(index) in self.layers
        return False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets)
        data["layers"] = None if self.layers is None else list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoraConfig":
        known = {"rank", "alpha", "dropout", "targets", "layers"}
        return cls(**{k: v for k, v in data.items() if k in known})


class LoraLinear(nn.Linear):
    """An `nn.Linear` plus a trainable low-rank update; shares the wrapped layer's weight and bias."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        # Build an empty shell (no new weight allocation), then adopt the base layer's parameters.
        nn.Module.__init__(self)
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        device, dtype = base.weight.device, base.weight.dtype
        # The adapter itself is kept in float32 when the base is in a low-precision float, so the small
        # updates are not lost to rounding during training.
        lora_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=lora_dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=lora_dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # same init as nn.Linear's weight
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The update this adapter adds to the weight: scaling * B @ A, shape [out, in], float32."""
        return (self.lora_b.float() @ self.lora_a.float()) * self.scaling  # [out, r] @ [r, in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        hidden = F.linear(self.lora_dropout(x).to(self.lora_a.dtype), self.lora_a)  # [..., r]
        update = F.linear(hidden, self.lora_b) * self.scaling  # [..., out]
        return out + update.to(out.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (idempotent)."""
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update out of the base weight again (idempotent)."""
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}, merged={self.merged}"


class LowRankSide(nn.Module):
    """A trainable low-rank update on its own, added *beside* a linear layer that it does not own:
    side(x) = scaling * (x A^T) B^T. B starts at zero, so a fresh side path changes nothing.

    Used where the base layer is shared with another user and must stay untouched (the reader's LoRA on the
    embedder's layers): the base computes as before and the caller adds this module's output.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # same init as LoraLinear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] -> [..., out]
        hidden = F.linear(x.to(self.lora_a.dtype), self.lora_a)  # [..., r]
        return (F.linear(hidden, self.lora_b) * self.scaling).to(x.dtype)


def lora_modules(model: nn.Module) -> dict[str, LoraLinear]:
    """Every adapted layer of the model, by dotted module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLinear)}


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Wrap the targeted `nn.Linear` layers in `LoraLinear`, freeze everything else; returns the wrapped names.

    Idempotent per layer: a layer that already has an adapter is left as it is.
    """
    wrapped = []
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear or not config.matches(name):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoraLinear(module, config.rank, config.alpha, config.dropout))
        wrapped.append(name)
    if not wrapped and not lora_modules(model):
        raise ValueError(f"no linear layer matches the LoRA targets {list(config.targets)} (layers={config.layers})")
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith((".lora_a", ".lora_b")))
    return wrapped


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter's trainable parameters (A and B of every adapted layer)."""
    params = []
    for module in lora_modules(model).values():
        params += [module.lora_a, module.lora_b]
    return params


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors, keyed `<layer>.lora_a` / `<layer>.lora_b`, on CPU and contiguous."""
    state = {}
    for name, module in lora_modules(model).items():
        state[f"{name}.lora_a"] = module.lora_a.detach().cpu().contiguous()
        state[f"{name}.lora_b"] = module.lora_b.detach().cpu().contiguous()
    return state


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (faster inference; the adapter stays loaded and can unmerge)."""
    for module in lora_modules(model).values():
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo `merge_lora`: the base weights are back to what they were (up to float rounding)."""
    for module in lora_modules(model).values():
        module.unmerge()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_adapter(
    folder: str | Path,
    model: nn.Module,
    config: LoraConfig,
    base_identity: str,
    metadata: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the adapter (safetensors) and its config + base identity (JSON) into `folder`, atomically per file.

    `dtype` (e.g. torch.float16) stores the tensors in a smaller type; loading casts back to the model's.
    """
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = lora_state_dict(model)
    if dtype is not None:
        state = {name: tensor.to(dtype) for name, tensor in state.items()}
    if not state:
        raise ValueError("the model has no LoRA adapters to save; call apply_lora first")
    info = {
        "format": ADAPTER_FORMAT,
        "base_identity": base_identity,
        "lora": config.to_dict(),
        "num_parameters": int(sum(t.numel() for t in state.values())),
        "metadata": metadata or {},
    }
    _atomic_write_bytes(folder / ADAPTER_WEIGHTS, save(state, metadata={"format": ADAPTER_FORMAT}))
    _atomic_write_bytes(folder / ADAPTER_CONFIG, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    return folder


def read_adapter_info(folder: str | Path) -> dict[str, Any]:
    """The parsed `adapter.json` of an adapter folder (raises CheckpointError when it is missing or broken)."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    if not path.is_file() or not (folder / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(
            f"{folder} is not a LoRA adapter folder (it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}); "
            "pass the folder written by `assistant finetune`, or run without an adapter (--no-adapter)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}; re-create the adapter with `assistant finetune`") from exc
    if info.get("format") != ADAPTER_FORMAT or "lora" not in info:
        raise CheckpointError(f"{path} is not an adapter this version understands (format {info.get('format')!r})")
    return info


def load_adapter(
    model: nn.Module,
    folder: str | Path,
    base_identity: str | None,
    merge: bool = True,
) -> LoraConfig:
    """Apply the adapter saved in `folder` to `model` and (by default) merge it into the weights.

    `base_identity` names the weights `model` holds (from `model.weights.load_decoder`); an adapter trained
    on other base weights is refused with a CheckpointError. Pass None only to skip the check on purpose.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    info = read_adapter_info(folder)
    trained_on = info.get("base_identity")
    if base_identity is not None and trained_on != base_identity:
        raise CheckpointError(
            f"the adapter in {folder} was trained on base weights {trained_on!r}, but the loaded generator is "
            f"{base_identity!r}; an adapter only works with the weights it was trained on. Load that base model, "
            "turn the adapter off (--no-adapter), or train a new adapter for this model with `assistant finetune`"
        )
    config = LoraConfig.from_dict(info["lora"])
    try:
        state = load_file(str(folder / ADAPTER_WEIGHTS))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read {folder / ADAPTER_WEIGHTS}: {exc}") from exc

    apply_lora(model, config)
    modules = lora_modules(model)
    expected = {f"{name}.{part}" for name in modules for part in ("lora_a", "lora_b")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(
            f"the adapter in {folder} does not fit this model (missing {missing[:3]}, unexpected {extra[:3]}); "
            "it was made for a different architecture"
        )
    with torch.no_grad():
        for name, module in modules.items():
            module.unmerge()
            for part in ("lora_a", "lora_b"):
                param, tensor = getattr(module, part), state[f"{name}.{part}"]
                if param.shape != tensor.shape:
                    raise CheckpointError(
                        f"adapter tensor {name}.{part} has shape {tuple(tensor.shape)}, the model expects "
                        f"{tuple(param.shape)}; the adapter was made for a different architecture"
                    )
                param.copy_(tensor.to(param.dtype))
    if merge:
        merge_lora(model)
    return config


def count_parameters(params: Iterable[nn.Parameter] | Sequence[torch.Tensor]) -> int:
    """Total number of elements."""
    return int(sum(p.numel() for p in params))


__all__ = [
    "LoraConfig", "LoraLinear", "apply_lora", "merge_lora", "unmerge_lora", "lora_parameters",
    "lora_state_dict", "lora_modules", "save_adapter", "load_adapter", "read_adapter_info", "count_parameters",
]
