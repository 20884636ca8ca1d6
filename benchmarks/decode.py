"""Decode speed of `ponder ask` against the raw engine under it, in the same run.

    python benchmarks/decode.py [--backend llama.cpp|mlx] [--model PATH] [--threads N]
                                [--tokens N] [--runs N] [--llama-bench PATH] [--speculate MODE] [--profile]

llama.cpp: against llama.cpp's llama-bench tg figure (which draws no token), raw llama-cpp-python
streaming, and llama-server drawing at ponder's sampling (llama.cpp's own sampler), on the same GGUF
and thread count; `ponder ask` greedy too (no sampler's share). mlx: against mlx-lm's own
`stream_generate` on the same MLX directory, prompt and sampling. Prints decode tokens/s for each (median of runs, interleaved, with
the load average when each ran) and the ratios (medians of each round's own ratio); also times
`ponder --help` and checks it imports no inference engine. `--profile`: where a token's time goes in
`ponder ask`, on a terminal and in a pipe (each thread's CPU, llama_decode's wall time). Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import atexit
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


SPECULATE: list[str] = []  # `--speculate MODE` for ponder ask, as given to this benchmark


def ask_args(model: str, threads: int, tokens: int, *extra: str) -> list[str]:
    return ["ask", "--model", model, "--threads", str(threads), "--max-tokens", str(tokens), "--seed", "1", "--stats",
            *SPECULATE, *extra, PROMPT]


def ponder_pipe(model: str, threads: int, tokens: int) -> float:
    result = subprocess.run([sys.executable, "-m", "ponder", *ask_args(model, threads, tokens)],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True)
    return float(STATS.search(result.stderr).group(1))


def in_terminal(argv: list[str]) -> subprocess.CompletedProcess:
    """`argv` under a real pty of 120 x 50, drained by util-linux `script` (C), so the harness's own reading
    costs the 2-core machine as little as a terminal emulator on its own core would."""
    command = " ".join(shlex.quote(a) for a in argv)
    return subprocess.run(["script", "-q", "-e", "-c", f"stty cols 120 rows 50; {command}", "/dev/null"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "TERM": "xterm-256color"}, check=True)


def ponder_terminal(model: str, threads: int, tokens: int, *extra: str) -> float:
    result = in_terminal([sys.executable, "-m", "ponder", *ask_args(model, threads, tokens, *extra)])
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


class LlamaServer:
    """llama.cpp's own sampling decode: llama-server's timings.predicted_per_second at ponder's sampling (temperature
    0.6, top-p 0.95 over the whole vocabulary: top-k and min-p off), started at the first call, stopped at exit."""

    def __init__(self, binary: str, model: str, threads: int, tokens: int):
        self.command = [binary, "-m", model, "-t", str(threads), "-c", str(tokens + 512), "-np", "1",
                        "--port", str(_free_port())]
        self.process = None
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"ponder-decode-bench-server-{os.getpid()}.log"

    def __call__(self, tokens: int) -> float:
        import urllib.request

        url = f"http://127.0.0.1:{self.command[-1]}"
        local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # (never through an http_proxy)
        if self.process is None:
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
            atexit.register(self.process.terminate)
            for _ in range(600):
                if self.process.poll() is not None:
                    break
                try:
                    local.open(f"{url}/health").close()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                self.process.terminate()
            if self.process.poll() is not None:
                raise SystemExit(f"llama-server did not start; its log: {self.log}")
        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "temperature": 0.6,
                "top_p": 0.95, "top_k": 0, "min_p": 0.0, "seed": 1, "ignore_eos": True, "cache_prompt": False}
        request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with local.open(request) as response:
            return float(json.load(response)["timings"]["predicted_per_second"])


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
    parser.add_argument("--llama-bench", default=shutil.which("llama-bench") or _built("llama-bench"))
    parser.add_argument("--speculate", choices=("auto", "ngram", "off"), default="off",
                        help="ponder ask's --speculate (off: the plain token loop, as llama-bench runs)")
    parser.add_argument("--profile", action="store_true", help="where a token's time goes, instead of the figures")
    args = parser.parse_args()
    SPECULATE[:] = ["--speculate", args.speculate]
    if args.profile:
        if args.model is None:
            from tests.support.packages import smollm2_gguf

            args.model = str(smollm2_gguf())
        from ponder.backends.llamacpp import physical_cores

        profile(args.model, args.threads or physical_cores(), args.tokens, args.runs)
        return

    if args.backend == "mlx":
        runners, reference_name = mlx_runners(args), "mlx_lm stream_generate"
    else:
        runners, reference_name = llama_cpp_runners(args), "llama-bench tg"
    figures: dict[str, list[float]] = {name: [] for name in runners}
    loads: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.runs):  # interleaved, so drift on a noisy machine hits all alike
        for name, run in runners.items():
            figures[name].append(run())
            loads[name].append(os.getloadavg()[0])

    print(f"model {Path(args.model).name}, {args.threads} threads, {args.tokens} tokens, ponder --speculate "
          f"{args.speculate}, median of {args.runs} runs; ratios: the median of each round's own")
    reference = figures.get(reference_name)
    for name, values in figures.items():
        median = statistics.median(values)
        ratio = (f"{statistics.median(v / r for v, r in zip(values, reference)):6.1%} of {reference_name}"
                 if reference else "")
        print(f"  {name:28s} {median:8.1f} tokens/s  {ratio}   runs: {', '.join(f'{v:.1f}' for v in values)}   "
              f"load: {', '.join(f'{v:.1f}' for v in loads[name])}")
    seconds, clean = help_timing()
    print(f"  ponder --help                {seconds * 1000:8.0f} ms (median of 10); inference engines imported: {'none' if clean else 'YES'}")


def _built(name: str) -> str:
    """Where scripts/llama-tool puts llama.cpp's tools (built once, from the wheel's own source and flags)."""
    built = sorted((Path.home() / ".cache/ponder-ci/bin").glob(f"{name}-*"))
    return str(built[-1]) if built else str(Path.home() / f".cache/ponder-ci/bin/{name}")


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
        # the token loop without the sampler's share: what reading and drawing 49k scores a token costs
        "ponder ask (term., greedy)": lambda: ponder_terminal(args.model, threads, args.tokens, "--temperature", "0"),
    }
    server = _built("llama-server")
    if Path(server).exists():  # llama.cpp's own sampler at ponder's settings: what drawing a token costs there
        serve = LlamaServer(server, args.model, threads, args.tokens)
        runners["llama-server, same sampling"] = lambda: serve(args.tokens)
    if not Path(args.llama_bench).exists():
        print(f"llama-bench not found at {args.llama_bench}; build it (scripts/llama-tool llama-bench)")
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


# --- --profile: `ponder ask` run by this file (as a child, under a pty or a pipe) with its parts timed ---------


def profile(model: str, threads: int, tokens: int, runs: int) -> None:
    import tempfile

    print(f"where a token's time goes in ponder ask: {Path(model).name}, {threads} threads, {tokens} tokens, "
          f"ponder --speculate {SPECULATE[1]}; from the first token to the last, per token: wall time where so "
          f"marked, else each thread's own CPU time")
    for _ in range(runs):
        for where in ("terminal", "pipe"):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                argv = [sys.executable, __file__, "--profile-child", out.name, *ask_args(model, threads, tokens)]
                if where == "terminal":
                    in_terminal(argv)
                else:
                    subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=True)
                parts = json.loads(Path(out.name).read_text())
            _print_profile(where, parts)


def _print_profile(where: str, parts: dict) -> None:
    n = max(parts.pop("tokens"), 1)
    wall = parts.pop("decoding wall") / n
    inside = parts["model thread: in llama_decode (wall)"] / n
    print(f"  {where}: {1 / wall:.1f} tokens/s, {wall * 1000:.2f} ms a token; load {parts.pop('load'):.1f}")
    print(f"    {'model thread: outside llama_decode (wall)':50s} {(wall - inside) * 1e6:8.0f} us  "
          f"{1 - inside / wall:6.1%}")
    for name, seconds in parts.items():
        print(f"    {name:50s} {seconds / n * 1e6:8.0f} us  {seconds / n / wall:6.1%}")


def _profile_child(out: str, argv: list[str]) -> None:
    """Run `ponder *argv` here; what each part took from its first token to its last goes to `out` (JSON)."""
    import atexit
    import threading

    from ponder.backends import llamacpp
    from ponder.cli.views import render
    from ponder.sampling import Sampler

    spent: dict[str, float] = {"model thread: in llama_decode (wall)": 0.0, "model thread: sampling (CPU)": 0.0,
                               "main thread: the view's calls (CPU)": 0.0}
    reply = {"first": None, "last": 0.0, "tokens": 0, "open": False}

    ended: dict[int, float] = {}  # the CPU time of each thread that ended, when it ended (by its OS id: never
    # reused as soon as Python's own ids are)

    def cpu_clocks(since: dict[int, tuple[str, float]] | None = None) -> dict:  # each thread's CPU time so far
        clocks = {}
        for thread in threading.enumerate():
            role = {"MainThread": "main thread", "ponder-model": "model thread"}.get(thread.name, "the view's thread")
            try:
                clocks[thread.native_id] = (role, time.clock_gettime(time.pthread_getcpuclockid(thread.ident)))
            except OSError:  # (ending meanwhile)
                pass
        for ident, (role, _) in (since or {}).items():  # a thread that ended in the window: its last figure
            if ident not in clocks and ident in ended:
                clocks[ident] = (role, ended[ident])
        return clocks

    def ends_counted(owner) -> None:
        run = owner.run

        def counted_run(self):
            try:
                run(self)
            finally:
                ended[threading.get_native_id()] = time.thread_time()
        owner.run = counted_run

    def timed(owner, name: str, label: str, clock=time.thread_time) -> None:
        function = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                if reply["open"]:
                    spent[label] += clock() - start
        setattr(owner, name, wrapper)

    stream = llamacpp.LlamaCppModel.stream

    def counted(self, *args, **kwargs):  # the decoding window: from the first token to the last
        clocks = None
        for event in stream(self, *args, **kwargs):
            now = time.perf_counter()
            if reply["first"] is None:
                reply["first"], reply["open"], clocks = now, True, cpu_clocks()
            reply["last"], reply["tokens"] = now, reply["tokens"] + getattr(event, "tokens", 0)
            yield event
        reply["open"] = False
        if clocks is not None:
            for ident, (role, seconds) in cpu_clocks(clocks).items():
                label = f"{role}: CPU, all" + (" (and llama.cpp's work)" if role == "model thread" else "")
                spent[label] = spent.get(label, 0.0) + seconds - clocks.get(ident, (role, 0.0))[1]
    llamacpp.LlamaCppModel.stream = counted
    from rich import live

    for owner in (threading.Thread, live._RefreshThread):  # (the view's ticker, rich's: they may end mid-reply)
        ends_counted(owner)
    timed(llamacpp.LlamaCppModel, "decode", "model thread: in llama_decode (wall)", time.perf_counter)
    timed(Sampler, "sample", "model thread: sampling (CPU)")
    for view in (render.TerminalRenderer, render.PlainRenderer):
        for name in ("reasoning", "reasoning_done", "answer"):
            timed(view, name, "main thread: the view's calls (CPU)")

    def write() -> None:
        span = reply["last"] - (reply["first"] or reply["last"])
        spent.update({"tokens": reply["tokens"] - 1, "decoding wall": span, "load": os.getloadavg()[0]})
        Path(out).write_text(json.dumps(spent))
    atexit.register(write)
    from ponder.__main__ import main as ponder_main

    sys.argv = ["ponder", *argv]
    ponder_main()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--profile-child"]:
        _profile_child(sys.argv[2], sys.argv[3:])
    else:
        main()
