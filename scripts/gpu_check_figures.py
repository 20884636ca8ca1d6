"""scripts/gpu-check's figures: ponder against llama.cpp's own tools, built from the same source and flags.

    python scripts/gpu_check_figures.py --tools DIR [--runs 2] [--samples 1,4,16,64] MODEL.gguf...

For each GGUF: decode of `ponder ask` (pipe) against llama-bench tg; prompt processing against llama-bench pp;
N parallel samples decoded together (ponder.samples' path) against N one after another and against
llama-batched-bench's S_TG; and how many greedy replies decoded N together equal each decoded alone (a GPU's
kernels may change with the batch size). The measuring is benchmarks/parallel_bench.py's own, pointed at the
tools in DIR; `ponder ask` runs as benchmarks/decode.py runs it, speculation off (llama-bench's plain loop).
Rounds interleaved, medians, the load average beside; figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parallel = benchmark("parallel_bench")
PROMPT = "Write a very long story about a dragon who learns to bake bread."  # benchmarks/decode.py's


def ask_decode(path: str, threads: int, tokens: int) -> float:
    """`ponder ask` in a pipe, as a user runs it, its plain token loop (speculation off, as llama-bench runs)."""
    result = subprocess.run([sys.executable, "-m", "ponder", "ask", "--model", path, "--threads", str(threads),
                             "--max-tokens", str(tokens), "--seed", "1", "--stats", "--speculate", "off", PROMPT],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True)
    return float(re.search(r"decode ([0-9.]+) tokens/s", result.stderr).group(1))


def bench_tg(path: str, threads: int, tokens: int) -> float:
    out = subprocess.run([parallel.tool("llama-bench"), "-m", path, "-t", str(threads), "-p", "0", "-n", str(tokens),
                          "-o", "json"], capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def single(path: str, threads: int, runs: int, tokens: int, pp_tokens: int) -> None:
    rounds = []
    for _ in range(runs):  # interleaved: drift hits both alike
        rounds.append((ask_decode(path, threads, tokens), bench_tg(path, threads, tokens),
                       parallel.ponder_pp(path, threads, pp_tokens, 1),
                       parallel.llama_bench_pp(path, threads, pp_tokens)))
    ask, tg, pp, bench_pp = (statistics.median(column) for column in zip(*rounds))
    print(f"decode: ponder ask {ask:.1f} tokens/s, llama-bench tg{tokens} {tg:.1f}, ratio "
          f"{statistics.median(r[0] / r[1] for r in rounds):.3f} ({load()})")
    print(f"prompt: ponder {pp:.0f} tokens/s, llama-bench pp{pp_tokens} {bench_pp:.0f}, ratio "
          f"{statistics.median(r[2] / r[3] for r in rounds):.3f}")


def samples(path: str, counts: list[int], threads: int, runs: int, prompt_tokens: int, tokens: int,
            sequential_upto: int) -> None:
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    probe = LlamaCppModel(path, LoadOptions(context=4096))
    prompt_ids = parallel.prompt_of(probe, prompt_tokens)
    probe.close()
    print(f"parallel samples, prompt {prompt_tokens} tokens, {tokens} tokens each (medians of {runs}; one by one "
          f"up to N={sequential_upto}):")
    print(f"{'N':>4} {'together s':>11} {'one by one s':>13} {'speedup':>8} {'ponder S_TG':>12} {'bench S_TG':>11} "
          f"{'ratio':>6}")
    with parallel.EndlessGeneration():
        for n in counts:
            rounds = []
            for _ in range(runs):
                bench = parallel.batched_bench(path, [n], threads, prompt_tokens, tokens)[n]["speed_tg"]
                wall, aggregate = parallel.ponder_draw(path, n, True, threads, prompt_ids, tokens, 1)
                sequential = alone = float("nan")
                if n <= sequential_upto:
                    sequential, alone = parallel.ponder_draw(path, n, False, threads, prompt_ids, tokens, 1)
                if n == 1 and alone == alone:  # one sample is drawn alone (as `draw` does)
                    aggregate = alone
                rounds.append((wall, sequential, aggregate, bench))
            wall, sequential, aggregate, bench = (statistics.median(column) for column in zip(*rounds))
            ratio = statistics.median(a / b for _, _, a, b in rounds)
            print(f"{n:>4} {wall:>11.2f} {sequential:>13.2f} {sequential / wall:>8.2f} {aggregate:>12.1f} "
                  f"{bench:>11.1f} {ratio:>6.3f}  ({load()})")


def greedy(path: str, counts: list[int], tokens: int) -> None:
    found = [(n, *parallel.greedy_equality(path, n, tokens)) for n in counts if n > 1]
    print(f"greedy, {tokens} tokens, decoded N together vs each alone: "
          + ", ".join(f"N={n}: {same} of {total} identical" for n, same, total in found))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--tools", type=Path, required=True, help="the folder holding llama-bench and llama-batched-bench")
    parser.add_argument("--samples", default="1,4,16,64")
    parser.add_argument("--sequential-upto", type=int, default=16, help="one-by-one figures only up to this N")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--pp-tokens", type=int, default=2000)
    args = parser.parse_args()
    from ponder.backends.llamacpp_setup import physical_cores

    threads = args.threads or physical_cores()
    tools = args.tools.resolve()
    parallel.tool = lambda name: str(tools / name)  # the run's own build, not scripts/llama-tool's CPU one
    counts = [int(n) for n in args.samples.split(",")]
    for path in args.models:
        started = time.perf_counter()
        print(f"\n== {Path(path).name}: {threads} threads")
        single(path, threads, args.runs, args.tokens, args.pp_tokens)
        samples(path, counts, threads, args.runs, args.prompt_tokens, args.tokens, args.sequential_upto)
        greedy(path, counts, 48)
        print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
