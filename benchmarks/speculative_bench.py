"""Speculative decoding (issue 22), as figures (not pass/fail): ponder's n-gram and draft-model speculation
against plain decode and against llama.cpp's own tools, in the same run.

    python benchmarks/speculative_bench.py [--parts cost,ngram,trace,draft] [--threads N] [--clock wall|cpu]
                                           [--rounds N] [--tokens N] [--target PATH] [--target-type F16] [--k N]

1. cost: what one model call of k tokens costs (logits on every row, as a check of a k-1-token guess needs),
   through ponder's context, at k = 1, 2, 3, 5, 9, 17; and llama-bench's pp k (logits of the last row only)
   on the same GGUF and threads. Speculation pays only where the tokens a call keeps outgrow its cost.
2. ngram: decode tokens/s through LlamaCppModel.stream with speculate "off", "ngram" and "auto" (greedy, and
   a sampled pair: temperature 0.6, top-p 0.95, seed 1 + the round), on (a) a copy-heavy prompt (a 40-line
   class rewritten with one name changed), (b) reasoning that restates itself (SmolLM2 checking a product
   three ways; the tiny R1's counting loop), (c) open-ended text (a short story); against llama.cpp's own
   n-gram speculation on the same GGUF, prompt tokens, threads, context and draft length:
   llama-speculative-simple --spec-type ngram-simple (the same algorithm as ponder's NgramDrafter: the
   latest earlier occurrence of the text's last n tokens) and llama-lookup (n-gram cache), with
   llama-lookup's own plain decode (--spec-draft-n-max 0) as the tools' baseline (llama-speculative-simple
   refuses --spec-type none). Goals: ngram >= 1.5x off on (a); auto >= 0.97x off on (c); >= 0.9x the
   tool's tokens/s.
3. trace: one untimed greedy pass of each case with the controller's every call recorded: guesses by length,
   tokens kept, the seconds of calls with and without a guess, the plain calls auto chose where the drafter had a guess.
4. draft: a larger target (SmolLM2 requantized to F16 or Q8_0, or deepened: see --target-type; or --target)
   drafted by SmolLM2 Q4_1 through ponder's LoadOptions.draft ("draft", and "auto" with the draft), against
   llama-speculative-simple --spec-type draft-simple with the same k (--spec-draft-n-max; and its default, 3);
   acceptance reported. Goal: >= 0.9x the tool's tokens/s.

Rounds are interleaved (every row once a round, the order reversed every other round) and each figure is
the median of the rounds; each table prints os.getloadavg() before and after: the machine may be shared.
On a shared machine, --clock cpu runs everything on one thread (ponder's batch threads too, as the tools'
-tb 1) and counts CPU seconds: ponder's from the first token to the last on the decoding thread (the token
loop's own clock too, so that auto's controller sees what it would on an idle machine), the tools' as their
CPU time less that of a one-token run of the same command (loading and the prompt).
The llama.cpp tools come from scripts/llama-tool (the same vendored llama.cpp and flags as ponder's wheel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.speculative_cases import CASES, Case  # noqa: E402
from benchmarks.speculative_runs import (CONTEXT, CPU_CLOCK, ROUND, interleaved, load, load_text,  # noqa: E402
                                         ponder_run, same_text, table)
from benchmarks.speculative_tools import Tools, tool_run  # noqa: E402

COST_SIZES = (1, 2, 3, 5, 9, 17)


# --- 1. the cost of a call ----------------------------------------------------------------------------------


def call_costs(model, depth: int, repeats: int) -> dict[int, float]:
    """Median milliseconds of one llama_decode of k tokens with logits on every row, after `depth` tokens."""
    import ctypes

    import llama_cpp as lib

    model.streams.trim(0, 0)
    model._prefill([model.tokenize("a")[0]] + [200 + i % 500 for i in range(depth - 1)], threading.Event())
    every = (ctypes.c_int8 * max(COST_SIZES))(*([1] * max(COST_SIZES)))
    clock = time.thread_time if CPU_CLOCK["on"] else time.perf_counter
    times: dict[int, list[float]] = {k: [] for k in COST_SIZES}
    for _ in range(repeats):  # interleaved over k
        for k in COST_SIZES:
            ids = (lib.llama_token * k)(*[300 + i for i in range(k)])
            batch = lib.llama_batch_get_one(ids, k)
            batch.logits = ctypes.cast(every, ctypes.POINTER(ctypes.c_int8))
            start = clock()
            model.decode(batch, "time a call")
            model.logits(k - 1)[0]  # (the logits are read, as the sampler would)
            times[k].append(clock() - start)
            model.streams.trim(0, depth)
    model.streams.trim(0, 0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def cost_part(args, tools: Tools, models: dict[str, str]) -> None:
    print(f"\n1. one call of k tokens, ms (median of {args.repeats}, {'CPU' if CPU_CLOCK['on'] else 'wall'} clock; "
          f"llama-bench's: wall); after {args.depth} tokens, {args.threads} threads")
    print(f"   {load_text()}")
    head = "".join(f"{f'k={k}':>9s}" for k in COST_SIZES)
    print(f"  {'model':34s} {'':22s}{head}   k=17 / k=1")
    for name, path in models.items():
        model = load(path, args.threads)
        ours = call_costs(model, args.depth, args.repeats)
        model.close()
        bench = tools.bench_costs(path, args.threads, COST_SIZES)
        for label, costs in (("ponder, every row", ours), ("llama-bench pp k, last row", bench)):
            if costs:
                cells = "".join(f"{costs[k]:9.2f}" for k in COST_SIZES)
                print(f"  {name:34s} {label:22s}{cells}   {costs[17] / costs[1]:6.1f}x")
    print(f"   {load_text()}")


# --- 2. n-gram speculation against plain decode and llama.cpp's tools ---------------------------------------


def ngram_rows(case: Case, model, tools: Tools, args) -> dict:
    """The rows of one case: name -> a function giving one run's figures."""
    from ponder.events import GenerationParams

    prompt = case.prompt(model)
    greedy = GenerationParams(temperature=0, max_tokens=args.tokens)
    sampled = GenerationParams(temperature=0.6, top_p=0.95, seed=1, max_tokens=args.tokens)
    rows = {f"ponder {mode}": (lambda mode=mode: ponder_run(model, prompt, replace(greedy, speculate=mode)))
            for mode in ("off", "ngram", "auto")}
    for mode in ("off", "auto"):
        rows[f"ponder {mode}, T=0.6"] = lambda mode=mode: ponder_run(
            model, prompt, replace(sampled, seed=1 + ROUND["r"], speculate=mode))  # off and auto: the same text
    common = dict(model=case.path, prompt=case.tool_prompt(model), tokens=args.tokens, threads=args.threads,
                  context=CONTEXT)
    if tools.available("llama-lookup"):  # (llama-speculative-simple refuses --spec-type none)
        rows["llama.cpp plain"] = lambda: tool_run(tools, "llama-lookup", ["--spec-draft-n-max", "0"], **common)
    if tools.available("llama-speculative-simple"):
        rows["llama.cpp ngram-simple"] = lambda: tool_run(
            tools, "llama-speculative-simple", ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n",
                                                str(args.ngram_n), "--spec-ngram-simple-size-m", str(args.k)], **common)
    if tools.available("llama-lookup"):
        rows["llama-lookup"] = lambda: tool_run(tools, "llama-lookup", ["--spec-draft-n-max", str(args.k)], **common)
    return rows


def ngram_part(args, tools: Tools) -> None:
    print(f"\n2. n-gram speculation, {args.tokens} tokens a reply, {args.threads} threads, draft length {args.k}"
          f" (ponder: LONGEST), median of {args.rounds} interleaved rounds")
    for case in [c for c in CASES if c.key in args.cases.split(",")]:
        model = load(case.path, args.threads)
        rows = ngram_rows(case, model, tools, args)
        print(f" ({case.key}) {case.title} [{Path(case.path).name}]   {load_text()}")
        runs = interleaved(rows, args.rounds)
        table(runs, "ponder off", "llama.cpp ngram-simple")
        if "llama-lookup" in runs and "llama.cpp ngram-simple" in runs:
            lookup = statistics.median(r["tps"] for r in runs["llama-lookup"])
            mine = {m: statistics.median(r["tps"] for r in runs[f"ponder {m}"]) for m in ("ngram", "auto")}
            print(f"  against llama-lookup: ngram {mine['ngram'] / lookup:.2f}x, auto {mine['auto'] / lookup:.2f}x")
        text = runs["ponder off"][0]["text"]
        print(f"  ponder off wrote ({len(text)} characters): {text[:150]!r}...")
        tools_prompt = ", ".join(str(v[0]["prompt"]) for n, v in runs.items() if "ponder" not in n)
        print(f"  greedy rows with ponder off's text: {same_text(runs)}; prompt tokens: ponder "
              f"{runs['ponder off'][0]['prompt']}, tools {tools_prompt}")
        print(f"   {load_text()}")
        model.close()


def main() -> None:
    from benchmarks.speculative_trace import draft_part, trace_part

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="cost,ngram,trace,draft")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: one thread, CPU seconds (for a machine that other work shares)")
    parser.add_argument("--cases", default="a,b,b2,c", help="which cases (see speculative_cases.py)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="calls timed at each k (cost)")
    parser.add_argument("--depth", type=int, default=300, help="tokens in the cache when a call is timed (cost)")
    parser.add_argument("--k", type=int, default=None, help="draft length; default: ponder's LONGEST")
    parser.add_argument("--ngram-n", type=int, default=3, help="llama.cpp ngram-simple's lookup length")
    parser.add_argument("--target", help="the draft part's target GGUF (default: SmolLM2 requantized to F16)")
    parser.add_argument("--target-type", default="F16",
                        help="the type SmolLM2 is requantized to (F16, Q8_0), or F16-<N>L: F16 deepened to N layers"
                             " by layers that add nothing (the same replies, N/30 times the work)")
    args = parser.parse_args()
    from ponder.backends.llamacpp import physical_cores
    from ponder.speculate import LONGEST

    CPU_CLOCK["on"] = args.clock == "cpu"
    args.threads = 1 if CPU_CLOCK["on"] else args.threads or physical_cores()
    args.k = args.k or LONGEST
    parts = set(args.parts.split(","))
    tools = Tools()
    print(f"speculative decoding, {args.threads} threads, {os.cpu_count()} CPUs, {args.clock} clock; {load_text()}")
    if "cost" in parts:
        from benchmarks.speculative_cases import cost_models

        cost_part(args, tools, cost_models(args, tools))
    if "ngram" in parts:
        ngram_part(args, tools)
    if "trace" in parts:
        trace_part(args)
    if "draft" in parts:
        draft_part(args, tools)


if __name__ == "__main__":
    main()
