"""Decode speed of `ponder ask` against the raw engine under it, in the same run.

    python benchmarks/decode.py [--backend llama.cpp|mlx] [--model PATH] [--threads N]
                                [--tokens N] [--runs N] [--llama-bench PATH]

llama.cpp: against llama.cpp's llama-bench tg figure (and raw llama-cpp-python streaming), on
the same GGUF and thread count. mlx: against mlx-lm's own `stream_generate` on the same MLX
directory, prompt and sampling. Prints decode tokens/s for each (median of runs, interleaved)
and the ratios; also times `ponder --help` and checks it imports no inference engine.
Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a very long story about a dragon who learns to bake bread."
STATS = re.compile(r"decode ([0-9.]+) tokens/s")


def ponder_pipe(model: str, threads: int, tokens: int) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "ponder", "ask", "--model", model, "--threads", str(threads), "--max-tokens",
         str(tokens), "--seed", "1", "--stats", PROMPT],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True,
    )
    return float(STATS.search(result.stderr).group(1))


def ponder_terminal(model: str, threads: int, tokens: int) -> float:
    """Under a real pty, drained by util-linux `script` (C), so the harness's own reading
    costs the 2-core machine as little as a terminal emulator on its own core would."""
    command = " ".join(
        shlex.quote(a) for a in [sys.executable, "-m", "ponder", "ask", "--model", model, "--threads", str(threads),
                                 "--max-tokens", str(tokens), "--seed", "1", "--stats", PROMPT]
    )
    result = subprocess.run(
        ["script", "-q", "-e", "-c", f"stty cols 120 rows 50; {command}", "/dev/null"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, env={**os.environ, "TERM": "xterm-256color"},
        check=True,
    )
    return float(STATS.search(result.stdout).group(1))


def raw_llama_cpp_python(model: str, threads: int, tokens: int) -> float:
    """llama-cpp-python's own streaming API, as a user of that library would call it."""
    code = f"""
import time, llama_cpp
llm = llama_cpp.Llama({model!r}, n_ctx=2048, n_threads={threads}, verbose=False, seed=1)
stamps = []
for chunk in llm.create_chat_completion([{{"role": "user", "content": {PROMPT!r}}}], max_tokens={tokens}, stream=True,
                                         temperature=0.6, top_p=0.95):
    stamps.append(time.perf_counter())
n = len(stamps) - 2  # the first chunk is the role, the last the finish reason
print((n - 1) / (stamps[-2] - stamps[1]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def raw_mlx_lm(model: str, threads: int, tokens: int) -> float:
    """mlx-lm's stream_generate as its README shows it, at the same sampling; tokens/s
    computed as ponder does: (tokens - 1) over the time from the first token to the last."""
    code = f"""
import time
import mlx.core as mx
from mlx_lm import load, stream_generate
from mlx_lm.sample_utils import make_sampler
model, tokenizer = load({model!r})
prompt = tokenizer.apply_chat_template([{{"role": "user", "content": {PROMPT!r}}}], add_generation_prompt=True)
mx.random.seed(1)
stamps = [time.perf_counter() for _ in stream_generate(model, tokenizer, prompt, max_tokens={tokens},
                                                        sampler=make_sampler(temp=0.6, top_p=0.95))]
print((len(stamps) - 1) / (stamps[-1] - stamps[0]))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def llama_bench(binary: str, model: str, threads: int, tokens: int) -> float:
    result = subprocess.run(
        [binary, "-m", model, "-t", str(threads), "-p", "0", "-n", str(tokens), "-r", "1", "-o", "json"],
        capture_output=True, text=True, check=True,
    )
    return float(json.loads(result.stdout)[0]["avg_ts"])


def help_timing(runs: int = 10) -> tuple[float, bool]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ponder", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ponder", "--help"], capture_output=True, text=True, check=True
    )
    engines = [m for m in ("llama_cpp", "mlx", "mlx_lm", "transformers", "openai", "httpx", "httpx2") if f" {m}\n" in probe.stderr
               or re.search(rf"\|\s+{m}(\.|$)", probe.stderr, re.M)]
    return statistics.median(times), not engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("llama.cpp", "mlx"), default="llama.cpp")
    parser.add_argument("--model")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--llama-bench", default=shutil.which("llama-bench")
                        or str(Path.home() / ".cache/ponder-ci/llama-bench-build/bin/llama-bench"))
    args = parser.parse_args()

    if args.backend == "mlx":
        runners, reference_name = mlx_runners(args), "mlx_lm stream_generate"
    else:
        runners, reference_name = llama_cpp_runners(args), "llama-bench tg"
    figures: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.runs):  # interleaved, so drift on a noisy machine hits all alike
        for name, run in runners.items():
            figures[name].append(run())

    print(f"model {Path(args.model).name}, {args.threads} threads, {args.tokens} tokens, median of {args.runs} runs")
    reference = statistics.median(figures[reference_name]) if reference_name in figures else None
    for name, values in figures.items():
        median = statistics.median(values)
        ratio = f"{median / reference:6.1%} of {reference_name}" if reference else ""
        print(f"  {name:26s} {median:8.1f} tokens/s  {ratio}   runs: {', '.join(f'{v:.1f}' for v in values)}")
    seconds, clean = help_timing()
    print(f"  ponder --help              {seconds * 1000:8.0f} ms (median of 10); inference engines imported: {'none' if clean else 'YES'}")


def llama_cpp_runners(args) -> dict:
    from ponder.backends.llamacpp import physical_cores

    if args.model is None:
        from tests.support.packages import smollm2_gguf

        args.model = str(smollm2_gguf())
    args.threads = threads = args.threads or physical_cores()
    runners = {
        "llama-bench tg": lambda: llama_bench(args.llama_bench, args.model, threads, args.tokens),
        "llama-cpp-python stream": lambda: raw_llama_cpp_python(args.model, threads, args.tokens),
        "ponder ask (pipe)": lambda: ponder_pipe(args.model, threads, args.tokens),
        "ponder ask (terminal)": lambda: ponder_terminal(args.model, threads, args.tokens),
    }
    if not Path(args.llama_bench).exists():
        print(f"llama-bench not found at {args.llama_bench}; build it (see README) for the reference figure")
        del runners["llama-bench tg"]
    return runners


def mlx_runners(args) -> dict:
    if args.model is None:
        from tests.support.mlx_models import mlx_dir
        from tests.support.packages import smollm2_gguf

        args.model = str(mlx_dir(smollm2_gguf(), bits=8))
    args.threads = threads = args.threads or os.cpu_count()  # MLX picks its own threads; the flag is ignored
    return {
        "mlx_lm stream_generate": lambda: raw_mlx_lm(args.model, threads, args.tokens),
        "ponder ask (pipe)": lambda: ponder_pipe(args.model, threads, args.tokens),
        "ponder ask (terminal)": lambda: ponder_terminal(args.model, threads, args.tokens),
    }


if __name__ == "__main__":
    main()
