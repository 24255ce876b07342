"""GPU proof in one run: CUDA parity of the decoder and encoder against CPU, and the speeds that matter.

    bash benchmarks/gpu_check.sh                 # on a CUDA machine: writes $OUT/gpu_check.json (default ./gpu_check_out)
    bash benchmarks/gpu_check.sh --dry-run       # CPU, tiny sizes: exercises every section in seconds (CI)

Sections (each guarded: a failure records its error and the run goes on; past --budget-s the rest are skipped):
  decoder_parity   default GGUF generator, fp32 GPU vs fp32 CPU (and bf16 GPU vs fp32 CPU) last-token logits,
                   max abs diff and pass/fail; greedy text of N new tokens equal in fp32
  encoder_parity   bundled MiniLM, embeddings cosine GPU vs CPU (fp32 >= 0.9999, bf16/fp16 >= 0.999)
  decode_speed     bf16 decode tokens/s at batch 1 and 8, eager and with the compiled step (Generator compile=True:
                   torch.compile mode="reduce-overhead" over a static cache)
  prefill_speed    tokens/s of a 512-token prompt (bf16)
  encoder_speed    passages/s at batch 32 and 128, 256-token passages
  server           the OpenAI-compatible server (BatchScheduler, generator only) on loopback, 8 concurrent
                   streaming clients, aggregate completion tokens/s
In --dry-run the decoder is a tiny random model, sizes are tiny, nothing is compiled, and "GPU" is the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Explain in two sentences how a transformer language model generates text.",
    "Write a haiku about the sea.",
]
SECTIONS = ["decoder_parity", "encoder_parity", "decode_speed", "prefill_speed", "encoder_speed", "server"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Check:
    """Shared state: the device, sizes, the loaded models (loaded once, on first use)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry else "cuda")
        self.new_tokens = 4 if self.dry else 32
        self.decode_steps = 8 if self.dry else 128
        self.prefill_len = 48 if self.dry else 512
        self.passage_tokens = 32 if self.dry else 256
        self.encoder_batches = [2] if self.dry else [32, 128]
        self.decode_batches = [1, 2] if self.dry else [1, 8]
        self.clients = 2 if self.dry else 8
        self._decoder_cache: dict = {}
        self.weights = "tiny random decoder (dry run)" if self.dry else "not loaded"

    # ---- models ---------------------------------------------------------------------------------------
    def tokenizer_and_decoder(self, device: torch.device, dtype: torch.dtype):
        """(tokenizer, decoder) on device/dtype: the default GGUF generator, or a tiny random one (dry run)."""
        key = (str(device), dtype)
        if key not in self._decoder_cache:
            if self.dry:
                from model.config import DecoderConfig
                from model.decoder import Decoder
                from model.tokenizer import train_bpe_tokenizer

                tok = train_bpe_tokenizer([p for p in PROMPTS] * 20, vocab_size=300)
                model = Decoder(DecoderConfig.tiny(vocab_size=tok.vocab_size)).init_weights(seed=0)
                model = model.to(device=device, dtype=dtype).eval()
            else:
                from model.sources import resolve_generator
                from model.weights import load_decoder

                try:  # the device machine has no network: the GGUF must already be in $ASSISTANT_CACHE
                    loaded = load_decoder(resolve_generator(None), device=device, dtype=dtype)
                    tok, model = loaded.tokenizer, loaded.model.eval()
                    self.weights = "default GGUF (SmolLM2-135M-Instruct Q4_1, dequantised)"
                except Exception as exc:  # same shape, random weights: parity and speed still mean something
                    from model.config import DecoderConfig
                    from model.decoder import Decoder
                    from model.tokenizer import train_bpe_tokenizer

                    self.weights = f"random SmolLM2-135M-shape weights (default GGUF unavailable: {exc})"
                    tok = train_bpe_tokenizer([p for p in PROMPTS] * 20, vocab_size=300)
                    model = Decoder(DecoderConfig.smollm2_135m()).init_weights(seed=0)
                    model = model.to(device=device, dtype=dtype).eval()
            self._decoder_cache[key] = (tok, model)
        return self._decoder_cache[key]

    def generator(self, dtype: torch.dtype, compile: bool):
        from model.generate import Generator

        tok, model = self.tokenizer_and_decoder(self.device, dtype)
        model.static_cache_attention = False  # a compiled Generator turns it on; an eager one needs it off
        gen = Generator(model, tok, identity="gpu_check", device=self.device, compile=compile and not self.dry)
        return gen

    def chat_ids(self, tok, prompt: str) -> list[int]:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)


# ---- sections ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def decoder_parity(c: Check) -> dict:
    from model.decoder import greedy_generate

    cpu = torch.device("cpu")
    tok, ref = c.tokenizer_and_decoder(cpu, torch.float32)
    out: dict = {"prompts": []}
    ok = True
    for dtype, atol, rtol in ((torch.float32, 2e-3, 1e-3), (torch.bfloat16, 0.5, 0.05)):
        _, model = c.tokenizer_and_decoder(c.device, dtype)
        model.static_cache_attention = False
        name = str(dtype).replace("torch.", "")
        for prompt in PROMPTS:
            ids = c.chat_ids(tok, prompt)
            tokens = torch.tensor([ids])
            want = ref(tokens)[0].float()  # [T, V] no cache, causal
            got = model(tokens.to(c.device))[0].float().cpu()
            diff = (got - want).abs()
            close = bool(torch.allclose(got, want, atol=atol, rtol=rtol))
            argmax = float((got.argmax(-1) == want.argmax(-1)).float().mean())
            row = {"dtype": name, "prompt": prompt, "tokens": len(ids), "max_abs_diff": float(diff.max()),
                   "ref_max_abs": float(want.abs().max()), "atol": atol, "rtol": rtol, "pass": close,
                   "argmax_agreement": argmax}
            if dtype == torch.float32:
                want_ids = greedy_generate(ref, ids, c.new_tokens, eos_ids=tok.eos_token_ids)
                got_ids = greedy_generate(model, ids, c.new_tokens, eos_ids=tok.eos_token_ids)
                row["greedy_equal"] = want_ids == got_ids
                row["greedy_text"] = tok.decode(got_ids, skip_special_tokens=True)
                close = close and row["greedy_equal"]
                row["pass"] = close
            ok = ok and close
            out["prompts"].append(row)
    out["pass"] = ok
    return out


def encoder_parity(c: Check) -> dict:
    import numpy as np

    from model.encoder import Encoder

    texts = [p * 3 for p in PROMPTS] + ["The quick brown fox jumps over the lazy dog. 0123456789",
                                       "café naïve résumé — 漢字かな交じり文 中文 🙂"]
    ref = Encoder.load(None, device="cpu", dtype=torch.float32).embed(texts)
    out: dict = {"pass": True}
    for dtype, floor in ((torch.float32, 0.9999), (torch.bfloat16, 0.999), (torch.float16, 0.999)):
        if c.dry and dtype == torch.float16:
            continue  # fp16 matmuls on CPU are slow and not what runs; the GPU run checks it
        got = Encoder.load(None, device=c.device, dtype=dtype).embed(texts)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        name = str(dtype).replace("torch.", "")
        passed = bool(cos.min() >= floor)
        out[name] = {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()), "floor": floor,
                     "pass": passed}
        out["pass"] = out["pass"] and passed
    return out


def _decode_rate(c: Check, gen, batch: int) -> dict:
    tok = gen.tokenizer
    prompts = [c.chat_ids(tok, PROMPTS[i % len(PROMPTS)]) for i in range(batch)]
    saved = gen.eos_token_ids
    gen.eos_token_ids = ()  # every row decodes exactly the asked number of tokens
    try:
        gen.generate_batch(prompts, max_new_tokens=min(8, c.decode_steps))  # warm-up (and compile, capture)
        sync(c.device)
        start = time.perf_counter()
        results = gen.generate_batch(prompts, max_new_tokens=c.decode_steps)
        sync(c.device)
        wall = time.perf_counter() - start
    finally:
        gen.eos_token_ids = saved
    r = results[0]
    steps = max(len(r.token_ids) - 1, 1)
    return {"batch": batch, "new_tokens": len(r.token_ids), "wall_s": wall, "prefill_ms": r.prefill_ms,
            "decode_steps_per_s": steps / (r.decode_ms / 1e3) if r.decode_ms > 0 else None,
            "decode_tokens_per_s": batch * steps / (r.decode_ms / 1e3) if r.decode_ms > 0 else None}


def decode_speed(c: Check) -> dict:
    out: dict = {"dtype": "bfloat16", "compiled_decode": "model.generate.Generator(compile=True): "
                 "torch.compile(_decode_forward, mode='reduce-overhead', fullgraph=True) over a static cache"}
    for compiled in (False, True):
        label = "compiled" if compiled else "eager"
        if compiled and c.dry:
            out[label] = "skipped in dry run (torch.compile is CUDA-only by default)"
            continue
        gen = c.generator(torch.bfloat16, compile=compiled)
        out[label] = {f"batch_{b}": _decode_rate(c, gen, b) for b in c.decode_batches}
        gen.decoder.static_cache_attention = False
        gen.decoder.reset_cache()
    return out


@torch.inference_mode()
def prefill_speed(c: Check) -> dict:
    _, model = c.tokenizer_and_decoder(c.device, torch.bfloat16)
    model.static_cache_attention = False
    vocab = model.config.vocab_size
    tokens = torch.randint(3, vocab, (1, c.prefill_len), generator=torch.Generator().manual_seed(0)).to(c.device)
    positions = torch.arange(c.prefill_len, device=c.device)
    model.setup_cache(1, c.prefill_len)
    rounds = 2 if c.dry else 10
    model(tokens, positions, kv_len=c.prefill_len, last_only=True)  # warm-up
    sync(c.device)
    start = time.perf_counter()
    for _ in range(rounds):
        model(tokens, positions, kv_len=c.prefill_len, last_only=True)
    sync(c.device)
    wall = (time.perf_counter() - start) / rounds
    model.reset_cache()
    return {"dtype": "bfloat16", "prompt_tokens": c.prefill_len, "ms": wall * 1e3,
            "tokens_per_s": c.prefill_len / wall}


def encoder_speed(c: Check) -> dict:
    from model.encoder import Encoder

    dtype = torch.float32 if c.dry else torch.bfloat16
    enc = Encoder.load(None, device=c.device, dtype=dtype)
    words = (REPO / "corpus").glob("*.md")
    text = " ".join(p.read_text() for p in sorted(words))
    ids = enc.tokenizer.hf.encode(text, add_special_tokens=False).ids
    width = c.passage_tokens - 2
    out: dict = {"dtype": str(dtype).replace("torch.", ""), "passage_tokens": c.passage_tokens}
    for batch in c.encoder_batches:
        n = batch * (1 if c.dry else 4)
        passages = [enc.tokenizer.hf.decode(ids[(i * width) % max(len(ids) - width, 1):][:width]) for i in range(n)]
        enc.embed(passages[:batch], batch_size=batch)  # warm-up
        sync(c.device)
        start = time.perf_counter()
        enc.embed(passages, batch_size=batch)
        sync(c.device)
        wall = time.perf_counter() - start
        out[f"batch_{batch}"] = {"passages": n, "wall_s": wall, "passages_per_s": n / wall}
    return out


def server(c: Check) -> dict:
    from assistant.server import create_app, start_in_thread
    from assistant.settings import Settings
    from model.scheduler import BatchScheduler

    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve import SHORT, one_request, run_concurrent  # the load test's client: streaming chat completions

    dtype = torch.float32 if c.dry else torch.bfloat16
    gen = c.generator(dtype, compile=True)
    settings = Settings.load({})
    engine = BatchScheduler(gen, max_batch=max(c.clients, 2), context_length=1024 if not c.dry else 256)
    running = start_in_thread(create_app(None, engine, settings, ui=False))
    new_tokens = 8 if c.dry else 128
    try:
        one_request(running.url, "generator", SHORT[0], 4, {})  # warm-up: first-request costs
        prompts = [SHORT[i % len(SHORT)] for i in range(c.clients)]
        summary = run_concurrent(running.url, "generator", prompts, new_tokens)
    finally:
        running.stop()
        engine.close()
    return {"clients": c.clients, "max_tokens": new_tokens, "dtype": str(dtype).replace("torch.", ""),
            "compiled_decode": gen.compile, "wall_s": summary["wall_s"], "completion_tokens": summary["tokens"],
            "aggregate_tokens_per_s": summary["tok_s"], "ttft_median_s": summary["ttft_p50"],
            "ttft_max_s": summary["ttft_max"]}


# ---- driver -----------------------------------------------------------------------------------------------
def environment(c: Check) -> dict:
    env = {"torch": torch.__version__, "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
                   gpu_memory_gb=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, tiny random decoder")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the sections left after this long")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--out", help="output folder (default: $OUT, else ./gpu_check_out)")
    args = parser.parse_args(argv)
    out_dir = Path(args.out or os.environ.get("OUT") or "gpu_check_out")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu_check.json"
    if not args.dry_run and not torch.cuda.is_available():
        message = (f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda}); "
                   "run on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --dry-run")
        print("gpu_check: " + message, file=sys.stderr)
        path.write_text(json.dumps({"dry_run": False, "device": None, "error": message}, indent=2))
        return 2
    torch.manual_seed(0)
    c = Check(args)
    report: dict = {"dry_run": c.dry, "device": str(c.device), "budget_s": args.budget_s,
                    "environment": environment(c), "sections": {}}
    t0 = time.perf_counter()
    for name in SECTIONS:
        if args.only and name not in args.only:
            continue
        elapsed = time.perf_counter() - t0
        if elapsed > args.budget_s:
            report["sections"][name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent ({elapsed:.0f} s)"}
            continue
        start = time.perf_counter()
        try:
            result = globals()[name](c)
            result = {"ok": True, **result}
        except Exception as exc:
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc(limit=8)}
        result["seconds"] = round(time.perf_counter() - start, 2)
        report["sections"][name] = result
        print(f"[{name}] {'ok' if result['ok'] else 'ERROR ' + result['error']} ({result['seconds']} s)", flush=True)
        path.write_text(json.dumps(report, indent=2, default=str))  # partial results survive a kill
    report["decoder_weights"] = c.weights
    report["total_s"] = round(time.perf_counter() - t0, 2)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(summary(report))
    print(f"wrote {path}")
    return 0


def summary(report: dict) -> str:
    s = report["sections"]
    lines = [f"gpu_check on {report['device']} (dry run: {report['dry_run']}), {report.get('total_s')} s"]

    def get(name, *keys):
        value = s.get(name, {})
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    def fmt(value):
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    for name in SECTIONS:
        sec = s.get(name)
        if sec is None:
            continue
        if "skipped" in sec or not sec.get("ok"):
            lines.append(f"  {name}: {sec.get('skipped') or 'ERROR ' + sec.get('error', '')}")
            continue
        if name == "decoder_parity":
            worst = {}
            for row in sec["prompts"]:
                worst[row["dtype"]] = max(worst.get(row["dtype"], 0.0), row["max_abs_diff"])
            lines.append(f"  decoder parity: pass={sec['pass']}, max |diff| "
                         + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
        elif name == "encoder_parity":
            lines.append("  encoder parity: pass={} ".format(sec["pass"]) + ", ".join(
                f"{k} cos>={v['min_cosine']:.6f}" for k, v in sec.items() if isinstance(v, dict)))
        elif name == "decode_speed":
            for label in ("eager", "compiled"):
                part = sec.get(label)
                if isinstance(part, dict):
                    lines.append(f"  decode {label} bf16 tok/s: " + ", ".join(
                        f"{k} {fmt(v['decode_tokens_per_s'])}" for k, v in part.items()))
                else:
                    lines.append(f"  decode {label}: {part}")
        elif name == "prefill_speed":
            lines.append(f"  prefill {sec['prompt_tokens']} tokens: {fmt(sec['tokens_per_s'])} tok/s")
        elif name == "encoder_speed":
            lines.append("  encoder passages/s: " + ", ".join(
                f"{k} {fmt(v['passages_per_s'])}" for k, v in sec.items() if k.startswith("batch_")))
        elif name == "server":
            lines.append(f"  server {sec['clients']} clients: {fmt(sec['aggregate_tokens_per_s'])} tok/s aggregate")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
