"""ponder through a server against a raw client of the same server, in the same run.

    python benchmarks/server_bench.py [--model GGUF] [--tokens N] [--runs N] [--tasks N]

Starts llama.cpp's llama-server (`-np 4`, built by scripts/llama-server) on a free loopback port and
prints, as figures (not pass/fail):
- decode tokens/s that `ponder ask --server … --stats` shows, against a raw httpx2 client streaming the
  same /v1/completions request (same prompt text, greedy, same length), measured the same way
  (tokens after the first, over the time from the first to the last); median of interleaved runs;
- `ponder batch --concurrency K` throughput at K = 1, 2, 4 (generated tokens over wall time), against
  K raw client threads sending the same requests to the same server;
- `ponder --help` time, and whether it imports an HTTP client or an engine.
Default model: SmolLM2-135M from the test cache (tests/support/packages.py).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "Write a very long story about a dragon who learns to bake bread."
STATS = re.compile(r"decode ([0-9.]+) tokens/s")


def ponder_ask(url: str, tokens: int) -> float:
    result = subprocess.run(
        [sys.executable, "-m", "ponder", "ask", "--server", url, "--temperature", "0", "--max-tokens", str(tokens),
         "--stats", "--no-log", PROMPT],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True,
    )
    return float(STATS.search(result.stderr).group(1))


def raw_stream(url: str, body: dict) -> tuple[int, float, float]:
    """(tokens, first, last) of one streamed completion, one token per event as llama-server sends them."""
    import httpx2

    count, first, last = 0, None, None
    with httpx2.Client(timeout=300) as client, client.stream("POST", url + "/completions", json=body) as response:
        for event in httpx2.EventSource(response):
            if event.data == "[DONE]":
                break
            chunk = json.loads(event.data)
            if any(c.get("text") for c in chunk.get("choices") or []):
                now = time.perf_counter()
                first, last, count = first or now, now, count + 1
    return count, first or 0.0, last or 0.0


def raw_tokens_per_s(url: str, body: dict) -> float:
    count, first, last = raw_stream(url, body)
    return (count - 1) / (last - first) if count > 1 and last > first else 0.0


def ponder_prompt(url: str) -> str:
    """The exact prompt text ponder sends for PROMPT (its template rendering, BOS removed)."""
    from ponder.backends.server import connect
    from ponder.events import GenerationParams, Message
    from ponder.exchange import model_prompt

    model = connect(url)
    _, body = model.request(model_prompt(model, [Message("user", PROMPT)]), GenerationParams())
    model.close()
    return body["prompt"]


def ponder_batch(url: str, prompts: list[str], tokens: int, concurrency: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        tasks, results = Path(folder, "tasks.jsonl"), Path(folder, "results.jsonl")
        tasks.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts)))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ponder", "batch", str(tasks), "-o", str(results), "--server", url,
                        "--concurrency", str(concurrency), "--temperature", "0", "--max-tokens", str(tokens)],
                       check=True, capture_output=True, env={**_env(folder)})
        seconds = time.perf_counter() - started
        generated = sum(s["stats"]["reasoning_tokens"] + s["stats"]["answer_tokens"]
                        for line in results.read_text().splitlines() for s in json.loads(line)["samples"])
    return generated / seconds


def raw_batch(url: str, bodies: list[dict], concurrency: int) -> float:
    pending, lock, generated = list(bodies), threading.Lock(), [0]

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                body = pending.pop()
            count, _, _ = raw_stream(url, body)
            with lock:
                generated[0] += count

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return generated[0] / (time.perf_counter() - started)


def _env(folder: str) -> dict:
    from tests.support.cli import ponder_env

    return ponder_env(PONDER_DATA_DIR=folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file [default: SmolLM2-135M from the test cache]")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=8)
    args = parser.parse_args()

    from benchmarks.decode import help_timing
    from tests.support.servers import llama_server

    model = args.model or str(__import__("tests.support.packages", fromlist=["x"]).smollm2_gguf())
    with llama_server(model, defaults=("-c", "8192", "-np", "4")) as server:
        url = server.url
        body = {"prompt": ponder_prompt(url), "max_tokens": args.tokens, "temperature": 0, "stream": True}
        raw_tokens_per_s(url, body)  # warm-up: the server's prompt cache
        ponder_runs, raw_runs = [], []
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            ponder_runs.append(ponder_ask(url, args.tokens))
            raw_runs.append(raw_tokens_per_s(url, body))
        ours, raw = statistics.median(ponder_runs), statistics.median(raw_runs)
        print(f"model {Path(model).name} on llama-server -np 4 · {args.tokens} tokens · median of {args.runs}")
        print(f"  decode, raw client          {raw:8.1f} tokens/s")
        print(f"  decode, ponder ask --stats  {ours:8.1f} tokens/s   ratio {ours / raw:.3f}")

        prompts = [f"Write a long story about a dragon named {name}." for name in
                   ("Ash", "Brim", "Cinder", "Drake", "Ember", "Flint", "Gale", "Hob", "Ivy", "Jet")[: args.tasks]]
        bodies = []
        for text in prompts:
            rendered = ponder_prompt(url).replace(PROMPT, text)
            bodies.append({"prompt": rendered, "max_tokens": 128, "temperature": 0, "stream": True})
        raw_batch(url, [{**b, "max_tokens": 8} for b in bodies[:4]] * 2, 4)  # every slot used once: no cold start below
        print(f"  batch of {len(prompts)} tasks, 128 tokens each (aggregate generated tokens/s, median of 3):")
        for concurrency in (1, 2, 4):
            theirs, ours = [], []
            for _ in range(3):
                theirs.append(raw_batch(url, bodies, concurrency))
                ours.append(ponder_batch(url, prompts, 128, concurrency))
            theirs, ours = statistics.median(theirs), statistics.median(ours)
            print(f"    concurrency {concurrency}: raw client {theirs:7.1f} · ponder batch {ours:7.1f}"
                  f"   ratio {ours / theirs:.3f}")
    seconds, clean = help_timing()
    print(f"  ponder --help {seconds * 1000:.0f} ms (median of 10); engines or HTTP clients imported: "
          f"{'none' if clean else 'YES'}")


if __name__ == "__main__":
    main()
