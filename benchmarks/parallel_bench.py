"""Parallel samples: ponder's batched decode against N sequential samples and against llama.cpp's own
llama-batched-bench and llama-bench, in the same run.

    python benchmarks/parallel_bench.py [--models smollm2,tiny-r1] [--samples 1,2,4,8] [--threads 2]
                                        [--prompt-tokens 128] [--tokens 128] [--pp-tokens 2000] [--runs 3]

For each model and N: N samples of one shared prompt, each exactly --tokens long (end-of-generation is
ignored, as llama-batched-bench generates a fixed count; the sampler is ponder's default, temperature
0.6 and top-p 0.95, where llama-batched-bench feeds random tokens and samples nothing), drawn
  - together, through ponder's own path (`ponder.samples.draw` on a model loaded for N sequences: the
    driver, the reasoning guard and splitter, the model thread), and
  - one after another (the same model loaded for one sequence),
and llama-batched-bench -npp P -ntg T -npl N -pps with the same threads, batch sizes and flash attention.
Aggregate decode is, as llama-batched-bench's S_TG, tokens over the time from the first generated token
to the last (each sample's figure from ponder's own timestamps; side by side they add up). Then prompt
processing of a --pp-tokens prompt against llama-bench pp, and how often greedy samples decoded together
equal the same samples decoded alone (floating-point batch effects). Medians of --runs; figures, not
pass/fail. The llama.cpp tools are built once by scripts/llama-tool (about 6 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("The history of the lighthouse begins with fires lit on hills to guide ships home at night. Later, towers of "
        "stone carried lamps of oil, then of gas, and finally of electricity, with lenses that bent the light into a "
        "beam seen for miles across the water. Keepers lived beside them, trimming wicks and winding clocks. ") * 40


def models() -> dict[str, str]:
    from tests.support.packages import smollm2_gguf
    from tests.support.tiny_r1 import trained_gguf

    return {"smollm2": str(smollm2_gguf()), "tiny-r1": str(trained_gguf())}


def tool(name: str) -> str:
    return subprocess.run([str(ROOT / "scripts" / "llama-tool"), name], capture_output=True, text=True,
                          check=True).stdout.split()[-1]


def prompt_of(model, tokens: int) -> list[int]:
    ids = model.tokenize(TEXT)
    assert len(ids) >= tokens, "TEXT is too short for --prompt-tokens"
    return ids[:tokens]


class EndlessGeneration:
    """End-of-generation tokens ignored while in use, in both of ponder's llama.cpp paths."""

    def __enter__(self):
        import llama_cpp

        self.lib, self.original = llama_cpp, llama_cpp.llama_vocab_is_eog
        llama_cpp.llama_vocab_is_eog = lambda vocab, token: False

    def __exit__(self, *exc):
        self.lib.llama_vocab_is_eog = self.original


def ponder_draw(path: str, n: int, together: bool, threads: int, prompt_ids: list[int], tokens: int,
                runs: int) -> tuple[float, float]:
    """(median wall seconds of drawing n samples, median aggregate decode tokens/s): decoded
    together as `draw` does on a model loaded for n sequences (ponder.parallel), or one after another
    on a model loaded for one, each through the same guard and splitter as a reply."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import GenerationParams
    from ponder.exchange import collect_reply
    from ponder.parallel import Job
    from ponder.samples import decode_jobs, sample_params

    model = LlamaCppModel(path, LoadOptions(context=len(prompt_ids) + tokens + 64, threads=threads,
                                            sequences=n if together else 1))
    prompt = _text_of(model, prompt_ids)
    walls, decodes = [], []
    try:
        for run in range(-1, runs):  # run -1 warms up: llama.cpp sizes its buffers on the first decodes
            params = GenerationParams(max_tokens=tokens, on_loop="continue", seed=(run + 1) * 100)
            replies: dict = {}
            _forget(model)
            started = time.perf_counter()
            if together:
                decode_jobs(model, [Job(i, prompt, sample_params(params, i), group_size=n) for i in range(n)],
                            replies.__setitem__)
            else:
                for i in range(n):
                    replies[i] = collect_reply(_raw_reply(model, prompt, sample_params(params, i)))
            if run >= 0:
                walls.append(time.perf_counter() - started)
                # As llama-batched-bench's S_TG: tokens over the time from the first generated token to the last,
                # each sample's own (they run side by side, so their rates add up; one by one, the first's).
                rates = [r.stats.decode_tokens_per_s for r in replies.values()]
                decodes.append(sum(rates) if together else rates[0])
            assert all(r.stats.reasoning_tokens + r.stats.answer_tokens == tokens for r in replies.values())
    finally:
        model.close()
    return statistics.median(walls), statistics.median(decodes)


def _raw_reply(model, prompt: str, params):
    """One reply to raw prompt text, through the same guard and splitter as draw's replies."""
    from ponder.exchange import GuardedReply, ReplySplitter, _run

    guarded = GuardedReply(model, prompt, params)
    splitter = ReplySplitter(model.info.chat.reasoning, guarded.started, guard=guarded.guard)
    for event in _run(model, guarded):
        yield from splitter.feed(event)


def _text_of(model, ids: list[int]) -> str:
    import llama_cpp as lib

    pieces = []
    buffer = model._piece
    for token in ids:
        n = lib.llama_token_to_piece(model._vocab, token, buffer, 256, 0, True)
        pieces.append(buffer.raw[:n])
    return b"".join(pieces).decode("utf-8", "replace")


def _forget(model) -> None:
    """An empty cache in every sequence: each run processes its prompt afresh."""
    model.streams.forget()


def batched_bench(path: str, samples: list[int], threads: int, prompt: int, tokens: int) -> dict[int, dict]:
    out = subprocess.run(
        [tool("llama-batched-bench"), "-m", path, "-c", str(max(samples) * (prompt + tokens) + 256), "-b", "2048",
         "-ub", "512", "-npp", str(prompt), "-ntg", str(tokens), "-npl", ",".join(map(str, samples)), "-pps",
         "-t", str(threads), "-fa", "on", "--output-format", "jsonl"],
        capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {row["pl"]: row for row in rows}


def llama_bench_pp(path: str, threads: int, tokens: int) -> float:
    out = subprocess.run([tool("llama-bench"), "-m", path, "-p", str(tokens), "-n", "0", "-t", str(threads),
                          "-o", "jsonl"], capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])["avg_ts"]


def ponder_pp(path: str, threads: int, tokens: int, runs: int) -> float:
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(path, LoadOptions(context=tokens + 256, threads=threads))
    ids = (model.tokenize(TEXT) * 4)[:tokens]
    times = []
    try:
        for _ in range(runs + 1):  # the first warms up
            _forget(model)
            started = time.perf_counter()
            model._prefill(ids, threading.Event())
            times.append(time.perf_counter() - started)
    finally:
        model.close()
    return tokens / statistics.median(times[1:])


def greedy_equality(path: str, n: int, tokens: int) -> tuple[int, int]:
    """How many of n greedy samples of different prompts, decoded together, equal each decoded alone."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import GenerationParams, Message, TextDelta
    from ponder.prompt import render_prompt

    questions = [f"Tell me something about the number {i}." for i in range(n)]
    greedy = GenerationParams(temperature=0, max_tokens=tokens)
    model = LlamaCppModel(path, LoadOptions(context=512, sequences=n))
    try:
        prompts = [render_prompt(model.info.chat, [Message("user", q)]) for q in questions]
        decoder, cancel = model.batch(), threading.Event()
        slots = {decoder.add(p, greedy, cancel): i for i, p in enumerate(prompts)}
        texts = {i: [] for i in range(n)}
        while decoder.free_slots() < n:
            for slot, event in decoder.step():
                if isinstance(event, TextDelta):
                    texts[slots[slot]].append(event.text)
        decoder.close()
        alone = ["".join(e.text for e in model.stream(p, greedy) if isinstance(e, TextDelta)) for p in prompts]
    finally:
        model.close()
    return sum("".join(texts[i]) == alone[i] for i in range(n)), n


def profile(path: str, n: int, threads: int, prompt_tokens: int, tokens: int) -> None:
    """Where the time of ponder's batched decode goes, per generated token: llama_decode (wall) and the model
    thread's own Python (sampling, the step, the driver, guard and splitter), and the consumer's CPU."""
    import os

    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import GenerationParams
    from ponder.parallel import Job
    from ponder.samples import decode_jobs, sample_params
    from ponder.sampling import Sampler

    model = LlamaCppModel(path, LoadOptions(context=prompt_tokens + tokens + 64, threads=threads, sequences=n))
    probe = LlamaCppModel(path, LoadOptions(context=4096))
    prompt = _text_of(model, prompt_of(probe, prompt_tokens))
    probe.close()
    spent = {"decode": 0.0, "sampling": 0.0}
    decode, sample = model.decode, Sampler.sample

    def timed_decode(batch, doing):
        start = time.perf_counter()
        decode(batch, doing)
        if doing == "decode":
            spent["decode"] += time.perf_counter() - start

    def timed_sample(self, logits):
        start = time.thread_time()
        try:
            return sample(self, logits)
        finally:
            spent["sampling"] += time.thread_time() - start
    model.decode, Sampler.sample = timed_decode, timed_sample
    try:
        with EndlessGeneration():
            for run in range(2):  # the first warms up
                _forget(model)
                spent.update(decode=0.0, sampling=0.0)
                replies: dict = {}
                params = GenerationParams(max_tokens=tokens, on_loop="continue", seed=run)
                jobs = [Job(i, prompt, sample_params(params, i), group_size=n) for i in range(n)]
                main_cpu = time.thread_time()
                decode_jobs(model, jobs, replies.__setitem__)
                main_cpu = time.thread_time() - main_cpu
    finally:
        Sampler.sample = sample
        model.close()
    # Side by side, the samples' first tokens came from one step and their last from another: the decoding span
    # is theirs (ponder's own times, as each sample's decode rate has them), which holds tokens - 1 steps.
    span = max((tokens - 1) / r.stats.decode_tokens_per_s for r in replies.values())
    spent["decode"] *= (tokens - 1) / tokens
    per = 1e6 / (n * (tokens - 1))
    print(f"{Path(path).name}, {n} together, {threads} threads: {n * (tokens - 1) / span:.1f} tokens/s in all, "
          f"{span * per:.0f} us a token; load {os.getloadavg()[0]:.1f}")
    for label, seconds in (("model thread: in llama_decode (wall)", spent["decode"]),
                           ("model thread: outside llama_decode (wall)", span - spent["decode"]),
                           ("  of which sampling (CPU)", spent["sampling"]),
                           ("main thread: collecting the samples (CPU)", main_cpu)):
        print(f"  {label:44s} {seconds * per:8.0f} us  {seconds / span:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="smollm2,tiny-r1")
    parser.add_argument("--samples", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--pp-tokens", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="where an aggregate token's time goes in ponder's batched decode, instead of the figures")
    args = parser.parse_args()
    counts = [int(n) for n in args.samples.split(",")]
    paths = models()
    if args.profile:
        for name in args.models.split(","):
            for n in counts:
                profile(paths[name], n, args.threads, args.prompt_tokens, args.tokens)
        return
    for name in args.models.split(","):
        path = paths[name]
        print(f"\n== {name}: {Path(path).name}, {args.threads} threads, prompt {args.prompt_tokens} tokens, "
              f"{args.tokens} tokens a sample")
        from ponder.backends.base import LoadOptions
        from ponder.backends.llamacpp import LlamaCppModel

        probe = LlamaCppModel(path, LoadOptions(context=4096))
        prompt_ids = prompt_of(probe, args.prompt_tokens)
        probe.close()
        print(f"{'N':>3} {'together s':>11} {'one by one s':>13} {'ratio':>6} {'ponder S_TG':>12} "
              f"{'bench S_TG':>11} {'ratio':>6}   (medians of {args.runs} rounds; ratios within a round)")
        with EndlessGeneration():
            for n in counts:
                rounds = []
                for _ in range(args.runs):  # interleaved: this machine's speed drifts between minutes
                    bench = batched_bench(path, [n], args.threads, args.prompt_tokens, args.tokens)[n]["speed_tg"]
                    wall, aggregate = ponder_draw(path, n, True, args.threads, prompt_ids, args.tokens, 1)
                    sequential, alone = ponder_draw(path, n, False, args.threads, prompt_ids, args.tokens, 1)
                    if n == 1:  # one sample is drawn alone (as `draw` does): its decode is the single stream's
                        aggregate = alone
                    rounds.append((wall, sequential, aggregate, bench))
                wall, sequential, aggregate, bench = (statistics.median(column) for column in zip(*rounds))
                speedup = statistics.median(w / s for w, s, _, _ in rounds)
                ratio = statistics.median(a / b for _, _, a, b in rounds)
                print(f"{n:>3} {wall:>11.2f} {sequential:>13.2f} {speedup:>6.2f} {aggregate:>12.1f} "
                      f"{bench:>11.1f} {ratio:>6.3f}")
        pp = [(ponder_pp(path, args.threads, args.pp_tokens, 1), llama_bench_pp(path, args.threads, args.pp_tokens))
              for _ in range(args.runs)]
        ours, theirs = (statistics.median(column) for column in zip(*pp))
        print(f"prompt processing, {args.pp_tokens} tokens: ponder {ours:.1f} tokens/s, llama-bench {theirs:.1f}, "
              f"ratio {statistics.median(o / t for o, t in pp):.3f}")
        same, total = greedy_equality(path, 8, 48)
        print(f"greedy, 8 prompts decoded together vs alone: {same} of {total} identical")


if __name__ == "__main__":
    main()
