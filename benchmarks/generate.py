"""Generation speed: our engine vs transformers' `generate` on the same GGUF weights, in one run.

    python benchmarks/generate.py --threads 2            # CPU (set OMP_WAIT_POLICY=PASSIVE too)
    python benchmarks/generate.py --device cuda          # GPU: bf16, compiled decode step

Prints prefill tok/s (a 512-token prompt), decode tok/s at batch 1 and batch 8 (128 new tokens, EOS
ignored; short chat prompts) and at batch 1 after the 512-token prompt (as in the assistant, whose prompts
carry passages), ratios ours / transformers, the same for weight-only int8 and int4 (`--quant int8 int4`), and their
quality cost on a fixed 512-token text (max logit difference, argmax agreement, perplexity vs the unquantised
model), measured through the decode kernels (the native kernels' int8 activations when they are built, else
torch's bf16 ones), as generation computes. `ASSISTANT_CPU_KERNELS=0` measures the pure-torch paths.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib  # noqa: E402
import copy  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import model.quant as quant  # noqa: E402
from model.generate import Generator  # noqa: E402
from model.quant import quantize_decoder  # noqa: E402
from model.sources import resolve_generator  # noqa: E402
from model.weights import load_decoder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCH_PROMPTS = [
    "What is retrieval-augmented generation?",
    "Explain the KV cache in one paragraph.",
    "Write a short poem about tokenizers.",
    "Why does attention scale quadratically with sequence length, and what can be done about it?",
    "List three uses of embeddings.",
    "What is a learning rate?",
    "Describe beam search.",
    "How does top-p sampling work, in simple words for a beginner?",
]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {torch.get_num_threads()} torch threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def long_prompt_ids(tokenizer, n: int) -> list[int]:
    text = " ".join(p.read_text() for p in sorted((REPO / "corpus").rglob("*.md"))[:5]) or "hello world " * n
    ids = tokenizer.encode(text)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


# ---- ours ---------------------------------------------------------------------------------------------------
def ours_prefill(gen: Generator, ids: list[int], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        result = gen.generate(ids, max_new_tokens=1)
        best = min(best, result.prefill_ms)
    return len(ids) / (best / 1e3)


def ours_decode(gen: Generator, prompts: list[str] | list[list[int]], new_tokens: int) -> float:
    gen.eos_token_ids = ()  # always generate new_tokens tokens
    if len(prompts) == 1:
        result = gen.generate(prompts[0], max_new_tokens=new_tokens)
        return result.decode_tokens_per_s
    results = gen.generate_batch(prompts, max_new_tokens=new_tokens)
    steps = new_tokens - 1
    return len(prompts) * steps / (results[0].decode_ms / 1e3)


# ---- transformers -------------------------------------------------------------------------------------------
def hf_generate_seconds(model, tokenizer, prompts: list[str] | list[list[int]], new_tokens: int, device) -> float:
    if isinstance(prompts[0], list):
        input_ids = torch.tensor(prompts, device=device)
        mask = torch.ones_like(input_ids)
    else:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        input_ids, mask = enc["input_ids"], enc["attention_mask"]
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=tokenizer.pad_token_id or 0)
    sync(device)
    return time.perf_counter() - start


def hf_prefill(model, tokenizer, ids, repeats, device) -> float:
    best = min(hf_generate_seconds(model, tokenizer, [ids], 1, device) for _ in range(repeats))
    return len(ids) / best


def hf_decode(model, tokenizer, prompts: list[str], new_tokens: int, device) -> float:
    first = hf_generate_seconds(model, tokenizer, prompts, 1, device)
    total = hf_generate_seconds(model, tokenizer, prompts, new_tokens, device)
    return len(prompts) * (new_tokens - 1) / max(total - first, 1e-9)


# ---- quantisation quality -----------------------------------------------------------------------------------
@contextlib.contextmanager
def decode_kernels_for_all_rows():
    """Run the CPU int8/int4 decode kernels for any number of rows, not just decode's few."""
    names = ("CPU_INT8_KERNEL_MAX_ROWS", "CPU_INT4_KERNEL_MAX_ROWS", "CPU_HALF_MAX_ROWS", "NATIVE_MAX_ROWS")
    saved = {name: getattr(quant, name) for name in names}
    for name in names:
        setattr(quant, name, 1 << 30)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(quant, name, value)


@torch.no_grad()
def quality(reference, quantized, ids: list[int], device) -> dict[str, float]:
    tokens = torch.tensor([ids], device=device)
    ref = reference(tokens)[0].float()  # [T, V]
    with decode_kernels_for_all_rows():
        q = quantized(tokens)[0].float()  # [T, V]
    targets = tokens[0, 1:]

    def perplexity(logits: torch.Tensor) -> float:
        return float(torch.exp(torch.nn.functional.cross_entropy(logits[:-1], targets)))

    return {
        "max_logit_diff": float((ref - q).abs().max()),
        "mean_logit_diff": float((ref - q).abs().mean()),
        "argmax_agreement": float((ref.argmax(-1) == q.argmax(-1)).float().mean()),
        "ppl_ref": perplexity(ref),
        "ppl_quant": perplexity(q),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-hf", action="store_true", help="only our engine")
    parser.add_argument("--no-compile", action="store_true", help="CUDA: eager decode step")
    parser.add_argument("--quant", nargs="*", default=["int8", "int4"], help="weight-only modes to compare")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = resolve_generator(None)
    loaded = load_decoder(path, device=device, dtype=dtype)
    compile_flag = False if args.no_compile else None
    ids = long_prompt_ids(loaded.tokenizer, args.prompt_tokens)
    print(f"device: {device_name(device)}; weights: {loaded.identity}; dtype {dtype}; "
          f"threads {torch.get_num_threads()}")
    if device.type == "cpu":
        from model import cpu_kernels

        print(f"native CPU kernels: {cpu_kernels.status()}")

    rows: dict[str, dict[str, float]] = {}
    qualities: dict[str, dict[str, float]] = {}
    for mode in [None, *args.quant]:
        model = loaded.model if mode is None else quantize_decoder(copy.deepcopy(loaded.model), mode)
        gen = Generator(model, loaded.tokenizer, identity=loaded.identity, device=device, compile=compile_flag)
        chat = [gen.render_chat([{"role": "user", "content": p}]) for p in BATCH_PROMPTS]
        # warm up (CUDA: compiles the decode step for batch 1 and 8)
        gen.generate(chat[0], max_new_tokens=8)
        gen.generate_batch(chat, max_new_tokens=8)
        name = "ours" if mode is None else f"ours {mode}"
        rows[name] = {
            "prefill": ours_prefill(gen, ids, args.repeats),
            "decode_b1": ours_decode(gen, chat[:1], args.new_tokens),
            "decode_b8": ours_decode(gen, chat, args.new_tokens),
            "decode_long": ours_decode(gen, [ids], args.new_tokens),
        }
        print(name, {k: round(v, 1) for k, v in rows[name].items()}, flush=True)
        if mode is not None:
            qualities[mode] = quality(loaded.model, model, ids, device)
            del gen, model

    if not args.skip_hf:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf_model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
        hf_model = hf_model.to(device).eval()
        hf_generate_seconds(hf_model, hf_tok, chat[:1], 8, device)  # warm up
        rows["transformers"] = {
            "prefill": hf_prefill(hf_model, hf_tok, ids, args.repeats, device),
            "decode_b1": hf_decode(hf_model, hf_tok, chat[:1], args.new_tokens, device),
            "decode_b8": hf_decode(hf_model, hf_tok, chat, args.new_tokens, device),
            "decode_long": hf_decode(hf_model, hf_tok, [ids], args.new_tokens, device),
        }
        print("transformers", rows["transformers"], flush=True)

    print()
    header = (f"| engine | prefill tok/s ({args.prompt_tokens}-token prompt) | decode tok/s, batch 1 | "
              f"decode tok/s, batch 8 | decode tok/s, batch 1 after the {args.prompt_tokens}-token prompt |")
    print(header)
    print("|---|---|---|---|---|")
    base = rows.get("transformers")
    for name, row in rows.items():
        cells = []
        for key in ("prefill", "decode_b1", "decode_b8", "decode_long"):
            cell = f"{row[key]:.1f}"
            if base and name != "transformers":
                cell += f" ({row[key] / base[key]:.2f}x)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")
    for mode, q in qualities.items():
        print(f"{mode} quality vs unquantised on a {len(ids)}-token text (decode kernels): "
              f"max |logit diff| {q['max_logit_diff']:.3f}, mean {q['mean_logit_diff']:.4f}, "
              f"argmax agreement {q['argmax_agreement'] * 100:.1f}%, "
              f"perplexity {q['ppl_ref']:.3f} -> {q['ppl_quant']:.3f}")


if __name__ == "__main__":
    main()
