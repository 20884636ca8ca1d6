"""The prompt cache on disk (ponder.prompt_cache), measured: figures in one run, no pass/fail.

    python benchmarks/prompt_cache_bench.py [--model PATH] [--runs 3] [--only breakeven,ask,chat,disk]

- breakeven: for 64..4096 tokens, time to load a stored entry (lookup, read, checksum, into the context)
  against processing the same tokens, and what saving it costs (the copy the reply waits for, the write
  on a thread): where loading starts to pay sets ponder.prompt_cache.MIN_TOKENS.
- ask: `ponder ask` twice over the same piped document of about 4,000 tokens, each in its own process:
  the second's time to first token against the first's (goal: at most 0.1x).
- chat: a 10-turn chat, then turn 11 on a fresh model that has only the cache (what `chat --continue`
  gets) against turn 11 in the same process, its cache warm (goal: at most 1.5x); and what saving cost
  per turn, as a share of the turns' time (goal: at most 5%).
- disk: bytes per 1,000 tokens, measured for the model and computed from the GGUF metadata (layers,
  KV heads, head size, f16 K and V) for it and for DeepSeek-R1-Distill-Qwen-7B.
Medians of --runs; the load average is printed, since other work on the machine slows processing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("The committee met on a grey Tuesday to review the quarterly figures, the state of the harbour works, "
         "the new timetable for the ferries and a long letter from the fishermen's association. ")
SIZES = (64, 128, 256, 512, 1024, 2048, 4096)
median = statistics.median


def document(model, tokens: int) -> str:
    """Numbered sentences, as many as make about `tokens` tokens for this model."""
    text, n = "", 0
    while len(model.tokenize(text)) < tokens:
        n += 1
        text += f"{n}. {WORDS}"
    return text


def load(path: str, cache_bytes: int | None, context: int = 8192):
    from ponder.backends import LoadOptions, get_backend

    return get_backend("llama.cpp").load(path, LoadOptions(context=context, prompt_cache_bytes=cache_bytes))


def clock(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def breakeven(path: str, runs: int) -> None:
    """Load against process, with the threshold out of the way (min_tokens 1)."""
    from ponder import prompt_cache

    model = load(path, 8 << 30)
    disk, cancel = model._disk, threading.Event()
    disk.cache.min_tokens = 1
    ids = model.tokenize(document(model, SIZES[-1] + 8))
    print("breakeven: load a stored entry, or process its tokens (a 7B model processes each token far slower,"
          " and stores 2.5x the bytes)")
    print(f"  {'tokens':>6} {'process':>10} {'load':>10} {'load/process':>13} {'copy':>9} {'write':>9} {'entry':>9}")
    for n in SIZES:
        tokens = ids[: n + 1]  # (restore leaves the last token to process, as a prompt's)
        times = {"process": [], "load": [], "copy": [], "write": []}
        for _ in range(runs):
            model.streams.trim(0, 0)
            model._disk = None
            times["process"].append(clock(lambda: model._prefill(tokens[:n], cancel)))
            model._disk, disk._stored = disk, ()
            times["copy"].append(clock(lambda: disk.remember(tokens[:n])))
            times["write"].append(clock(disk.cache.wait))
            model.streams.trim(0, 0)
            times["load"].append(clock(lambda: disk.restore(tokens, 0)))
            assert model.streams.tokens[0] == tokens[:n], "the entry did not load"
        _, size = prompt_cache.usage(disk.cache.root)
        prompt_cache.clear(disk.cache.root)
        t = {k: median(v) * 1000 for k, v in times.items()}
        print(f"  {n:>6} {t['process']:>8.1f}ms {t['load']:>8.1f}ms {t['load'] / t['process']:>12.3f}x"
              f" {t['copy']:>7.1f}ms {t['write']:>7.1f}ms {size / 1e6:>7.1f}MB")
    model.close()


def ask(path: str, runs: int) -> None:
    """Two `ponder ask` processes over the same document; time to first token from --json's stats."""
    from tests.support.cli import ponder_env

    model = load(path, None)
    text = document(model, 4000)
    tokens = len(model.tokenize(text))
    model.close()
    first, second, ratio = [], [], []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            env = ponder_env(PONDER_CACHE_DIR=cache)
            got = [_ask(path, text, env)["stats"]["time_to_first_token_s"] for _ in range(2)]
        first.append(got[0])
        second.append(got[1])
        ratio.append(got[1] / got[0])
    print(f"ask over a piped document of {tokens} tokens (two processes, the same question), median of {runs}:")
    print(f"  time to first token, first ask:  {median(first) * 1000:8.1f} ms (processes it; the state is saved)")
    print(f"  time to first token, second ask: {median(second) * 1000:8.1f} ms ({median(ratio):.3f}x; goal 0.1x)")


def _ask(path: str, text: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-m", "ponder", "ask", "--model", path, "--ctx", "8192", "--temperature",
                           "0", "--max-tokens", "8", "--json", "Summarize the minutes in one sentence."],
                          input=text.encode(), capture_output=True, env=env, cwd=ROOT, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"ponder ask failed: {done.stderr.decode()}")
    return json.loads(done.stdout)


def chat(path: str, runs: int, turns: int = 10, reply_tokens: int = 200) -> None:
    from ponder.events import GenerationParams, Message
    from ponder.exchange import collect_reply, generate_reply

    params = GenerationParams(max_tokens=reply_tokens, seed=1)
    warm, resumed, shares, prompt = [], [], [], 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["PONDER_CACHE_DIR"] = cache
            model = load(path, 8 << 30)
            spent = _saving_clock(model._disk)
            messages, turn_s = [], 0.0
            for turn in range(1, turns + 1):
                messages.append(Message("user", _message(turn)))
                reply = collect_reply(generate_reply(model, messages, params))
                model._disk.cache.wait()  # (its write is counted in spent, beside the turn's time)
                turn_s += reply.stats.total_s
                messages.append(Message("assistant", reply.answer))
            shares.append(sum(spent) / turn_s)
            messages.append(Message("user", _message(turns + 1)))
            fresh = load(path, 8 << 30)  # a new process's model: only the cache on disk
            resumed.append(collect_reply(generate_reply(fresh, messages, params)).stats.time_to_first_token_s)
            fresh.close()
            last = collect_reply(generate_reply(model, messages, params)).stats
            warm.append(last.time_to_first_token_s)
            prompt = last.prompt_tokens
            model.close()
    print(f"chat: {turns} turns (replies up to {reply_tokens} tokens), then turn {turns + 1} ({prompt} prompt tokens),"
          f" median of {runs}:")
    print(f"  time to first token, turn {turns + 1} warm in-process:   {median(warm) * 1000:8.1f} ms")
    print(f"  time to first token, turn {turns + 1} resumed from disk: {median(resumed) * 1000:8.1f} ms"
          f" ({median(resumed) / median(warm):.2f}x; goal 1.5x)")
    print(f"  saving (state copies + background writes) per turn: {median(shares) * 100:.1f}% of the turns' time"
          " (goal 5%)")


def _message(turn: int) -> str:
    return f"Question {turn:02d}: tell me a short story about the number {turn:02d}, in a few sentences."


def _saving_clock(disk) -> list[float]:
    """Seconds spent saving: each state copy (on the model's thread, less its wait for the previous write,
    counted already) and each write (on a thread of its own)."""
    spent: list[float] = []
    remember, save = disk.remember, disk.cache.save

    def copy(tokens):
        started = time.perf_counter()
        waited = clock(disk.cache.wait)
        remember(tokens)
        spent.append(time.perf_counter() - started - waited)

    def write(*args):
        started = time.perf_counter()
        try:
            return save(*args)
        finally:
            spent.append(time.perf_counter() - started)

    disk.remember, disk.cache.save = copy, write
    return spent


def disk_use(path: str) -> None:
    from ponder import prompt_cache
    from ponder.gguf_header import read_metadata
    from tests.support.packages import deepseek_r1_header

    with tempfile.TemporaryDirectory() as cache:
        os.environ["PONDER_CACHE_DIR"] = cache
        model = load(path, 8 << 30)
        tokens = model.tokenize(document(model, 2000))
        model._prefill(tokens, threading.Event())
        model.close()
        entries, size = prompt_cache.usage(Path(cache))
    print(f"disk: {size / len(tokens) * 1000 / 1e6:.2f} MB per 1,000 tokens measured ({Path(path).name},"
          f" {len(tokens)} tokens, {entries} entry)")
    for name, gguf in ((Path(path).name, Path(path)), ("DeepSeek-R1-Distill-Qwen-7B", deepseek_r1_header())):
        meta = read_metadata(gguf)
        arch = meta["general.architecture"]
        layers, kv_heads = meta[f"{arch}.block_count"], meta[f"{arch}.attention.head_count_kv"]
        head = meta[f"{arch}.embedding_length"] // meta[f"{arch}.attention.head_count"]
        per_token = layers * 2 * kv_heads * head * 2  # K and V, f16
        print(f"  {name}: {layers} layers x 2 (K, V) x {kv_heads} KV heads x {head} x 2 bytes = {per_token} bytes"
              f" a token: {per_token * 1000 / 1e6:.2f} MB per 1,000 tokens")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="breakeven,ask,chat,disk")
    args = parser.parse_args()
    if args.model is None:
        from tests.support.packages import smollm2_gguf

        args.model = str(smollm2_gguf())
    print(f"model {Path(args.model).name}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PONDER_CACHE_DIR"] = cache
        for part in args.only.split(","):
            {"breakeven": breakeven, "ask": ask, "chat": chat, "disk": lambda p, _: disk_use(p)}[part](args.model,
                                                                                                   args.runs)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
