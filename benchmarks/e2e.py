"""End-to-end latency of the assistant: retrieval, time to first token, total time, decode speed.

    python benchmarks/e2e.py                      # default corpus, default weights, CPU (and CUDA if present)
    python benchmarks/e2e.py --device cpu --threads 2 --max-new-tokens 96 --json

What it measures, per question (after one warm-up question that is not counted):
- retrieval: embedding the query + hybrid search (FAISS + BM25) + fusion;
- time to first token: from the call to the first streamed text (retrieval + packing + prompt prefill);
- total: until the final Answer (citations checked);
- decode tokens/s: generated tokens after the first, per second.
The corpus is indexed first if needed (incremental; not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "What does LoRA train instead of the full weight matrices?",
    "What is the difference between top-k and top-p sampling?",
    "Why do transformers need positional encodings?",
    "What does the Chinchilla scaling law say about training tokens?",
    "How does retrieval-augmented generation reduce hallucinations?",
]


def run_device(device: str, args: argparse.Namespace) -> dict:
    """Time the questions on one device; returns per-question rows and medians."""
    from assistant.pipeline import Assistant
    from assistant.settings import Settings

    settings = Settings.load({"device": device, "max_new_tokens": args.max_new_tokens, "k": args.k,
                              "use_adapter": not args.no_adapter, "index": args.index,
                              "answer_mode": args.answer_mode})
    start = time.perf_counter()
    assistant = Assistant.from_folder(args.folder, settings.index, settings=settings)
    load_s = time.perf_counter() - start
    assistant.ask(QUESTIONS[0])  # warm-up (allocations, caches); not counted
    rows = []
    for question in QUESTIONS[: args.questions]:
        # Always answer (no refusal gates): we time the whole path, reader and model.
        answer = assistant.ask(question, refusal_threshold=-1.0, reader_threshold=-1e9)
        t = answer.timings
        rows.append({
            "question": question, "retrieval_ms": t.retrieval_ms, "reader_ms": t.reader_ms,
            "ttft_ms": t.time_to_first_token_ms,
            "total_ms": t.total_ms, "prompt_tokens": t.prompt_tokens, "generated_tokens": t.generated_tokens,
            "decode_tokens_per_s": t.tokens_per_s, "answer": answer.text,
        })

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows if r[key] is not None)

    return {
        "device": device, "load_s": load_s, "rows": rows,
        "median": {k: med(k) for k in ("retrieval_ms", "reader_ms", "ttft_ms", "total_ms", "prompt_tokens",
                                       "generated_tokens", "decode_tokens_per_s")},
        "generator": getattr(assistant.generator, "identity", ""),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(REPO / "corpus"))
    parser.add_argument("--index", default=None, help="index path (default: the folder's default index)")
    parser.add_argument("--device", action="append", help="cpu / cuda (repeatable; default cpu + cuda if present)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    parser.add_argument("--no-adapter", action="store_true")
    parser.add_argument("--answer-mode", default=None, choices=("guided", "generate", "extract"),
                        help="default: the settings' (guided)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = [run_device(d, args) for d in devices]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"# e2e: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, k={args.k}, max_new_tokens={args.max_new_tokens}")
    print(f"{'device':<6} {'question':<58} {'retr ms':>8} {'TTFT s':>7} {'total s':>8} {'prompt':>6} "
          f"{'gen':>4} {'tok/s':>6}")
    for result in results:
        for r in result["rows"]:
            print(f"{result['device']:<6} {r['question'][:58]:<58} {r['retrieval_ms']:8.0f} "
                  f"{(r['ttft_ms'] or 0) / 1000:7.2f} {r['total_ms'] / 1000:8.2f} {r['prompt_tokens']:6d} "
                  f"{r['generated_tokens']:4d} {r['decode_tokens_per_s'] or 0:6.1f}")
        m = result["median"]
        print(f"reader median {m['reader_ms']:.0f} ms")
        print(f"{result['device']:<6} {'median':<58} {m['retrieval_ms']:8.0f} {m['ttft_ms'] / 1000:7.2f} "
              f"{m['total_ms'] / 1000:8.2f} {m['prompt_tokens']:6.0f} {m['generated_tokens']:4.0f} "
              f"{m['decode_tokens_per_s']:6.1f}   (load + sync {result['load_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
