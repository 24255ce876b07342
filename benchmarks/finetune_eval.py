"""Base generator vs the fine-tuned LoRA adapter on held-out SQuAD articles, side by side.

Each question comes with 3-5 numbered passages rendered exactly as the assistant serves them; about a
third are unanswerable (gold paragraph removed, no passage contains the answer). Greedy decoding, at most
--max-new-tokens new tokens, stop at end of turn. Metrics:

    answer accuracy   answerable: the normalised gold answer occurs in the reply
    token F1          answerable: SQuAD token F1 between reply (citations removed) and gold answer
    citation acc.     answerable: the reply cites the gold passage [n]
    refusal acc.      unanswerable: the reply is the refusal
    false refusals    answerable: the reply is the refusal

Predictions are appended to one JSONL file per model in --out, so a long run can be stopped and resumed;
--summary prints the table over the questions both models have answered.

    python benchmarks/finetune_eval.py --examples runs/finetune/eval.jsonl --mode base --limit 200
    python benchmarks/finetune_eval.py --examples runs/finetune/eval.jsonl --mode adapter --limit 200
    python benchmarks/finetune_eval.py --out benchmarks/out/finetune --summary
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ADAPTER = REPO / "assistant" / "data" / "adapter"


def held_out_examples(args: argparse.Namespace):
    """The evaluation examples: a saved eval.jsonl, or rebuilt from the held-out articles (same seed as training)."""
    from assistant.training_data import BuildConfig, build_dataset, load_examples

    if args.examples:
        return load_examples(args.examples)
    from model.encoder import Encoder

    encoder = Encoder.load()
    build = BuildConfig(min_passages=args.min_passages, max_passages=args.max_passages,
                        max_passage_words=args.passage_words)
    data = build_dataset(n_train=0, n_eval=args.limit, eval_articles=args.eval_articles, seed=args.seed,
                         config=build, embed=lambda t: encoder.embed(t), pool_size=args.pool_size)
    return data.eval


def score(example, reply: str) -> dict:
    """Per-question metrics (None where a metric does not apply)."""
    from assistant.prompts import is_refusal
    from assistant.training_data import answer_in, cited_numbers, token_f1

    refused = is_refusal(reply)
    if example.answerable:
        return {"answerable": True, "refused": refused, "correct": answer_in(example.gold_answer, reply),
                "f1": 0.0 if refused else token_f1(reply, example.gold_answer),
                "cited_gold": example.gold_index in cited_numbers(reply)}
    return {"answerable": False, "refused": refused}


def run_model(args: argparse.Namespace, mode: str, examples) -> Path:
    """Generate and score replies for `examples` with the base model or base + adapter; append to JSONL.

    The model is loaded as the assistant serves it (`Generator.load`: --quantize, default "auto" = int4 on
    CPU, the adapter as an exact side path) and decodes greedily in batches of --batch-size prompts (batched
    greedy equals one-by-one greedy; tests check it).
    """
    from assistant.training_data import render_prompt
    from model.generate import Generator

    out_path = Path(args.out) / f"{mode}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out_path.is_file():
        done = {json.loads(line)["id"] for line in out_path.read_text().splitlines() if line.strip()}
    gen = Generator.load(args.generator, adapter=args.adapter if mode == "adapter" else None,
                         quantize=args.quantize)
    tokenizer = gen.tokenizer
    todo = [ex for ex in examples if ex.id not in done]
    started = time.perf_counter()
    with open(out_path, "a", encoding="utf-8") as fh:
        for first in range(0, len(todo), args.batch_size):
            batch = todo[first : first + args.batch_size]
            prompts = [tokenizer.encode(render_prompt(ex, tokenizer)) for ex in batch]
            t0 = time.perf_counter()
            results = gen.generate_batch(prompts, max_new_tokens=args.max_new_tokens, temperature=0.0)
            seconds = (time.perf_counter() - t0) / len(batch)
            for ex, ids, result in zip(batch, prompts, results):
                reply = result.text.strip()
                record = {"id": ex.id, "mode": mode, "question": ex.question, "gold": ex.gold_answer,
                          "gold_index": ex.gold_index, "reply": reply, "prompt_tokens": len(ids),
                          "new_tokens": len(result.token_ids), "seconds": round(seconds, 2),
                          "generator": gen.identity, **score(ex, reply)}
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            count = first + len(batch)
            rate = (time.perf_counter() - started) / count
            print(f"[{mode}] {count}/{len(todo)} ({rate:.2f} s/question)", flush=True)
    return out_path


def summarise(out_dir: Path) -> str:
    """A Markdown table over the questions every model file in out_dir has answered."""
    runs = {}
    for mode in ("base", "adapter"):
        path = out_dir / f"{mode}.jsonl"
        if path.is_file():
            runs[mode] = {r["id"]: r for r in map(json.loads, path.read_text().splitlines()) if r}
    if not runs:
        return "no results yet"
    common = set.intersection(*(set(r) for r in runs.values()))
    lines = [f"questions: {len(common)} ({sum(not next(iter(runs.values()))[i]['answerable'] for i in common)} "
             "unanswerable)", "", "| metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]

    def pct(values) -> str:
        values = list(values)
        return f"{100 * sum(values) / len(values):.1f}%" if values else "n/a"

    rows = {
        "answer accuracy (gold contained)": lambda rs: pct(r["correct"] for r in rs if r["answerable"]),
        "token F1": lambda rs: pct(r["f1"] for r in rs if r["answerable"]),
        "citation accuracy (cites gold passage)": lambda rs: pct(r["cited_gold"] for r in rs if r["answerable"]),
        "refusal accuracy (unanswerable)": lambda rs: pct(r["refused"] for r in rs if not r["answerable"]),
        "false-refusal rate (answerable)": lambda rs: pct(r["refused"] for r in rs if r["answerable"]),
        "mean new tokens": lambda rs: f"{sum(r['new_tokens'] for r in rs) / len(rs):.1f}",
        "mean seconds / question": lambda rs: f"{sum(r['seconds'] for r in rs) / len(rs):.2f}",
    }
    for name, fn in rows.items():
        lines.append(f"| {name} | " + " | ".join(fn([runs[m][i] for i in sorted(common)]) for m in runs) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", default=None, help="eval.jsonl written by `assistant finetune`")
    parser.add_argument("--mode", choices=("base", "adapter", "both"), default="both")
    parser.add_argument("--adapter", default=str(DEFAULT_ADAPTER))
    parser.add_argument("--generator", default=None)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--quantize", default="auto", help="as the assistant: auto (int4 on CPU), int8, none")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (greedy)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "finetune"))
    parser.add_argument("--summary", action="store_true", help="only print the table of what is done")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-articles", type=int, default=40)
    parser.add_argument("--min-passages", type=int, default=3)
    parser.add_argument("--max-passages", type=int, default=4)
    parser.add_argument("--passage-words", type=int, default=100)
    parser.add_argument("--pool-size", type=int, default=1500)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.summary:
        examples = held_out_examples(args)[: args.limit]
        for mode in (("base", "adapter") if args.mode == "both" else (args.mode,)):
            run_model(args, mode, examples)
    print(summarise(Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
