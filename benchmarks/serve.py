"""Load test of `assistant serve` on loopback: concurrent clients against the same requests served one after
another, through the real HTTP API (server-sent events), in one process.

    python benchmarks/serve.py                                  # generator: 1/4/8/16 clients, short + long prompts
    python benchmarks/serve.py --model assistant --clients 1 4 8
    python benchmarks/serve.py --threads 2 --no-adapter --prompts short --clients 8 --repeat 3

The clients run in a separate process (as real clients do; `--same-process-clients` puts them in the server's).
For each (model, prompt set, client count c) it sends c requests at once and records, per request, the time to
the first text (TTFT) and to the last (latency), and the completion tokens (the server's usage). Serial serving
is measured by sending the same requests one at a time; for the comparison, the serial TTFT / latency of the
i-th request is what it would be if all c had arrived together and been served first come, first served
(its own time plus the whole of the requests before it). Aggregate decode tokens/s = completion tokens / wall
time. Greedy decoding, 128 new tokens (answers that end sooner count the tokens they had). Each phase starts
from a server whose prefix cache holds only what every request shares (the chat template's system message,
cached by one unmeasured request), so no phase reuses the prompts of the one before. --repeat N alternates N
batched/serial pairs (a noisy machine's speed drifts between phases) and ends with the medians.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHORT = [  # <= 64 tokens with the chat template
    "Write a long story about a robot who learns to paint.",
    "Explain in detail how a transformer language model generates text.",
    "Describe a walk through a busy city market, with many details.",
    "Write a detailed guide to making bread at home.",
    "Tell me about the history of the bicycle, at length.",
    "Explain how the internet works, step by step.",
    "Describe the life cycle of a star in detail.",
    "Write a long letter to a friend about a trip to the mountains.",
]


def long_prompts(n: int) -> list[str]:
    """~400-token prompts: a passage of the bundled corpus, then a request to summarise it."""
    texts = [p.read_text()[:1800] for p in sorted(REPO.joinpath("corpus").glob("*.md"))]
    return [f"{texts[i % len(texts)]}\n\nSummarise the text above in detail." for i in range(n)]


QUESTIONS = [json.loads(line)["question"] for line in (REPO / "benchmarks/questions.jsonl").read_text().splitlines()
             if line.strip()]


def one_request(url: str, model: str, prompt: str, new_tokens: int, out: dict) -> None:
    body = {"model": model, "stream": True, "max_tokens": new_tokens, "temperature": 0,
            "stream_options": {"include_usage": True}, "messages": [{"role": "user", "content": prompt}]}
    start = time.perf_counter()
    first = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=3600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.perf_counter()
    end = time.perf_counter()
    out.update(ttft=(first or end) - start, latency=end - start, tokens=tokens)


def _recorded_request(url: str, model: str, prompt: str, new_tokens: int, out: dict) -> None:
    """one_request in a client thread: a failure is kept in out["error"] for run_concurrent to raise."""
    try:
        one_request(url, model, prompt, new_tokens, out)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"


def run_concurrent(url: str, model: str, prompts: list[str], new_tokens: int) -> dict:
    """All prompts at once, a client thread each; the summary of their times (RuntimeError if any failed)."""
    results = [dict() for _ in prompts]
    threads = [threading.Thread(target=_recorded_request, args=(url, model, p, new_tokens, r))
               for p, r in zip(prompts, results)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} requests failed: {errors[0]}")
    return summarise(results, wall)


def run_serial(url: str, model: str, prompts: list[str], new_tokens: int) -> dict:
    results = []
    start = time.perf_counter()
    for prompt in prompts:
        out: dict = {}
        one_request(url, model, prompt, new_tokens, out)
        results.append(out)
    wall = time.perf_counter() - start
    # as if all had arrived together, first come first served: wait for every earlier request
    waited = np.cumsum([0.0] + [r["latency"] for r in results[:-1]])
    queued = [dict(r, ttft=r["ttft"] + w, latency=r["latency"] + w) for r, w in zip(results, waited)]
    summary = summarise(queued, wall)
    summary["alone_ttft_max"] = max(r["ttft"] for r in results)
    return summary


def in_client_process(pool, phase, *args) -> dict:
    """Run a client phase (run_concurrent / run_serial) in the separate client process, as real clients are:
    in the server's process their HTTP work would share its interpreter lock and spread their arrivals."""
    return pool.submit(phase, *args).result() if pool is not None else phase(*args)


def summarise(results: list[dict], wall: float) -> dict:
    ttft = np.array([r["ttft"] for r in results])
    latency = np.array([r["latency"] for r in results])
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "wall_s": wall, "tokens": tokens, "tok_s": tokens / wall,
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p95": float(np.percentile(ttft, 95)),
            "ttft_max": float(ttft.max()), "lat_p50": float(np.percentile(latency, 50)),
            "lat_p95": float(np.percentile(latency, 95)), "ttfts": ttft.tolist()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def engine_benchmark(clients_list: list[int], new_tokens: int, max_batch: int) -> None:
    """The engine alone, no HTTP, on a random-weight model of the default generator's shape (int4, the native
    kernels when they build): runs anywhere without the weights. TTFT counts from submission (queueing too)."""
    import torch

    from model import cpu_kernels
    from model.config import DecoderConfig
    from model.decoder import Decoder
    from model.generate import Generator
    from model.quant import quantize_decoder
    from model.scheduler import BatchScheduler
    from model.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["a few words to train a small tokenizer on"] * 10, vocab_size=300)
    decoder = Decoder(DecoderConfig.smollm2_135m()).init_weights(seed=0).eval()
    quantize_decoder(decoder, "int4")
    gen = Generator(decoder, tokenizer, identity="synthetic SmolLM2-135M shape, int4", device="cpu")
    gen.eos_token_ids = ()  # every request decodes exactly new_tokens
    print(f"# engine only, {cpu_name()}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; "
          f"{gen.identity}; native kernels: {cpu_kernels.status()}; max batch {max_batch}", flush=True)
    rng = np.random.default_rng(0)
    engine = BatchScheduler(gen, max_batch=max_batch, context_length=1024)
    try:
        for name, length in (("short", 48), ("long", 400)):
            for clients in clients_list:
                prompts = [rng.integers(3, 49000, length).tolist() for _ in range(clients)]
                start = time.perf_counter()
                alone = [gen.generate(p, max_new_tokens=new_tokens) for p in prompts]
                serial_wall = time.perf_counter() - start
                waited = np.cumsum([0.0] + [(r.prefill_ms + r.decode_ms) / 1e3 for r in alone[:-1]])
                serial_ttft = np.array([r.prefill_ms / 1e3 for r in alone]) + waited
                engine.reset_stats()
                start = time.perf_counter()
                streams = [engine.stream(p, max_new_tokens=new_tokens) for p in prompts]
                batched = [s.finish() for s in streams]
                wall = time.perf_counter() - start
                assert [r.token_ids for r in batched] == [r.token_ids for r in alone], "batched != alone"
                ttft = np.array([r.prefill_ms / 1e3 for r in batched])
                tokens = sum(len(r.token_ids) for r in batched)
                print(f"| engine | {name} ({length}) | {clients} | {tokens / wall:.1f} | {tokens / serial_wall:.1f} | "
                      f"{serial_wall / wall:.2f}x | {np.percentile(ttft, 50):.2f} / {np.percentile(ttft, 95):.2f} | "
                      f"{np.percentile(serial_ttft, 50):.2f} / {np.percentile(serial_ttft, 95):.2f} | "
                      f"{engine.stats().mean_batch:.1f} |", flush=True)
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["generator", "assistant", "both"], default="generator")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--prompts", choices=["short", "long", "both"], default="both")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch / native kernel threads")
    parser.add_argument("--no-adapter", action="store_true", help="the generator without the LoRA adapter")
    parser.add_argument("--low-memory", action="store_true", help="as `assistant serve --low-memory`")
    parser.add_argument("--same-process-clients", action="store_true",
                        help="run the clients in the server's process (the default is a separate process)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="paired batched/serial runs per client count (a row each, then medians)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--synthetic", action="store_true",
                        help="the engine alone on a random-weight model of the same shape (no HTTP, no download)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.synthetic:
        return engine_benchmark(args.clients, args.new_tokens, args.max_batch)
    from assistant.pipeline import Assistant
    from assistant.server import create_app
    from assistant.settings import Settings
    from model import cpu_kernels
    from assistant.server import start_in_thread
    from model.scheduler import BatchScheduler

    settings = Settings.load({"use_adapter": not args.no_adapter})
    t0 = time.perf_counter()
    assistant = Assistant.from_folder(REPO / "corpus", settings=settings)
    engine = BatchScheduler(assistant.generator, max_batch=args.max_batch, context_length=settings.max_context_tokens,
                            keep_float_weights=not args.low_memory)  # as `assistant serve` runs it
    server = start_in_thread(create_app(assistant, engine, settings, ui=False))
    print(f"# {cpu_name()}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"generator {assistant.generator.identity}; native kernels: {cpu_kernels.status()}; "
          f"max batch {args.max_batch}; ready in {time.perf_counter() - t0:.0f} s", flush=True)
    models = ["generator", "assistant"] if args.model == "both" else [args.model]
    rows = []
    clients_pool = None
    if not args.same_process_clients:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        clients_pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        clients_pool.submit(len, "").result()  # start it now, not inside a measurement
    try:
        # One request first, not measured: the first one pays one-time costs (the batch cache, the chat
        # template, the first retrieval) that would land on whichever measured request came first.
        for model in models:
            one_request(server.url, model, (SHORT if model == "generator" else QUESTIONS)[0], 8, {})

        def fresh_prefixes(model: str) -> None:
            """Before each measured phase: forget cached prompt prefixes, then let one unmeasured request that is
            not among the measured ones cache what every request shares (the chat template's system message, the
            assistant's instructions): the state of a server that has been up for a while, and no phase reuses
            the prompts of the one before it."""
            if engine.prefix_cache is not None:
                engine.prefix_cache.clear()
                one_request(server.url, model, "Hello!" if model == "generator" else "What is this folder about?",
                            1, {})

        def measure(model: str, name: str, clients: int, run: int, prompts: list[str]) -> dict:
            """One paired measurement: the requests all at once, then one after another (each from the same
            prefix-cache state); prints its table row."""
            fresh_prefixes(model)
            engine.reset_stats()
            batched = in_client_process(clients_pool, run_concurrent, server.url, model, prompts, args.new_tokens)
            stats = engine.stats()
            if clients > 1:
                fresh_prefixes(model)
                serial = in_client_process(clients_pool, run_serial, server.url, model, prompts, args.new_tokens)
            else:
                serial = batched
            row = dict(model=model, prompts=name, clients=clients, run=run, batched=batched, serial=serial,
                       mean_batch=stats.mean_batch, load=os.getloadavg()[0], prefill_passes=stats.prefill_passes,
                       prefill_s=stats.prefill_s, prefix_hit_tokens=stats.prefix_hit_tokens,
                       prefill_tokens=stats.prefill_tokens)
            print(f"| {model} | {name} | {clients} | {batched['tok_s']:.1f} | {serial['tok_s']:.1f} | "
                  f"{batched['tok_s'] / serial['tok_s']:.2f}x | {batched['ttft_p50']:.2f} / "
                  f"{batched['ttft_p95']:.2f} | {serial['ttft_p50']:.2f} / {serial['ttft_p95']:.2f} | "
                  f"{batched['lat_p50']:.1f} / {batched['lat_p95']:.1f} | {serial['lat_p50']:.1f} / "
                  f"{serial['lat_p95']:.1f} | {stats.mean_batch:.1f} | {batched['tokens'] / clients:.0f} | "
                  f"{row['load']:.1f} | {stats.prefill_passes} / {stats.prefill_s:.2f} s / "
                  f"{stats.prefill_tokens} + {stats.prefix_hit_tokens} cached |", flush=True)
            return row
        for model in models:
            sets = {"short": SHORT, "long": long_prompts(16)} if model == "generator" else {"questions": QUESTIONS}
            if model == "generator" and args.prompts != "both":
                sets = {args.prompts: sets[args.prompts]}
            for name, pool in sets.items():
                for clients in args.clients:
                    prompts = [pool[i % len(pool)] for i in range(clients)]
                    for run in range(args.repeat):  # batched and serial alternate: paired under the same load
                        rows.append(measure(model, name, clients, run, prompts))
        if args.repeat > 1:
            print(f"\nmedians over {args.repeat} paired runs:", flush=True)
            for key in dict.fromkeys((r["model"], r["prompts"], r["clients"]) for r in rows):
                runs = [r for r in rows if (r["model"], r["prompts"], r["clients"]) == key]
                ratio = float(np.median([r["batched"]["tok_s"] / r["serial"]["tok_s"] for r in runs]))
                p95 = float(np.median([r["batched"]["ttft_p95"] for r in runs]))
                worst = max(r["batched"]["ttft_p95"] for r in runs)
                print(f"| {key[0]} | {key[1]} | {key[2]} | throughput {ratio:.2f}x serial | TTFT p95 {p95:.2f} s "
                      f"(worst run {worst:.2f} s) |", flush=True)
    finally:
        if clients_pool is not None:
            clients_pool.shutdown()
        server.stop()
        engine.close()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
