"""What benchmarks/speculative_bench.py's parts share: a model loaded as ponder loads it, one reply's figures,
interleaved rounds and their table."""

from __future__ import annotations

import os
import statistics
import time

CONTEXT = 4096  # tokens: ponder's context and the tools' -c alike
# --clock cpu: one thread everywhere and CPU seconds instead of wall seconds, so that a figure taken while other
# processes share the cores counts only this work (a single thread is never left spinning at a barrier for a
# partner the scheduler has parked, as two are: a call then costs many times its work).
CPU_CLOCK = {"on": False}
ROUND = {"r": 0}  # the round interleaved() is in: sampled rows draw with seed 1 + round (a text each round)


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def load(path: str, threads: int, draft: str | None = None):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    model = LlamaCppModel(path, LoadOptions(context=CONTEXT, threads=threads, draft=draft))
    if CPU_CLOCK["on"]:  # ponder gives batches max(threads, CPUs) threads; one here, as the tools get -tb 1
        import types

        import llama_cpp as lib

        import ponder.backends.llamacpp_decode as decode

        # The token loop's clock (auto's controller and the reply's figures) counts this thread's CPU seconds
        # too: what the controller would see on a machine of its own, not other processes' share of it.
        decode.time = types.SimpleNamespace(perf_counter=time.thread_time)

        for ctx in (model._ctx, getattr(model._drafter, "_ctx", None)):
            if ctx:
                lib.llama_set_n_threads(ctx, 1, 1)
    return model


def ponder_run(model, prompt: str, params) -> dict:
    """One reply from an empty cache; decode tokens/s as ponder reports it ((n - 1) over first to last token), or
    with the CPU clock, over this thread's CPU seconds from the first token to the last (with one thread,
    llama.cpp computes on the calling thread)."""
    from ponder.events import Finished, TextDelta

    model.streams.trim(0, 0)
    ids, text, finished, first, last = [], [], None, None, None
    for event in model.stream(prompt, params):
        if isinstance(event, TextDelta):
            last = time.thread_time()
            first = first if first is not None else last
            ids.extend(event.ids)
            text.append(event.text)
        elif isinstance(event, Finished):
            finished = event
    stats, figures = finished.stats, finished.stats.speculation
    tps = stats.decode_tokens_per_s
    if CPU_CLOCK["on"]:
        tps = (stats.generated_tokens - 1) / (last - first) if last and last > first else 0.0
    return {"tps": tps, "n": stats.generated_tokens, "prompt": stats.prompt_tokens,
            "drafted": figures.drafted if figures else 0, "accepted": figures.accepted if figures else 0,
            "calls": figures.calls if figures else stats.generated_tokens, "text": "".join(text)}


def interleaved(rows: dict, rounds: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {name: [] for name in rows}
    names = list(rows)
    for r in range(rounds):
        ROUND["r"] = r
        for name in names if r % 2 == 0 else names[::-1]:
            figures = rows[name]()
            figures["load"] = os.getloadavg()[0]
            runs[name].append(figures)
    return runs


def table(runs: dict[str, list[dict]], plain: str, tool: str | None) -> None:
    base = statistics.median(r["tps"] for r in runs[plain])
    reference = statistics.median(r["tps"] for r in runs[tool]) if tool in runs else None
    print(f"  {'row':24s} {'tokens/s':>9s} {'x off':>7s} {'x tool':>7s} {'kept':>12s} {'tok/call':>8s} {'n':>4s}"
          f" {'load':>5s}  runs")
    for name, values in runs.items():
        tps = statistics.median(r["tps"] for r in values)
        drafted, accepted = sum(r["drafted"] for r in values), sum(r["accepted"] for r in values)
        kept = f"{accepted}/{drafted}" if drafted else "-"
        per_call = sum(r["n"] for r in values) / max(1, sum(r["calls"] or r["n"] for r in values))
        versus = f"{tps / reference:7.2f}" if reference else f"{'':7s}"
        each = ", ".join(f"{r['tps']:.1f}" for r in values)
        print(f"  {name:24s} {tps:9.1f} {tps / base:7.2f} {versus} {kept:>12s} {per_call:8.2f} {values[-1]['n']:4d}"
              f" {statistics.mean(r['load'] for r in values):5.1f}  {each}")
    print("  (kept and tok/call: all rounds together; n: the last round's tokens; load: the 1-minute load average"
          " after each run, their mean)")


def same_text(runs: dict[str, list[dict]]) -> str:
    """Which greedy rows wrote ponder off's text (the tools print theirs after the prompt)."""
    plain = runs["ponder off"][0]["text"]
    same = [name for name, values in runs.items() if "T=" not in name and name != "ponder off"
            and (values[0]["text"] == plain or values[0]["text"].startswith(plain[:200]))]
    return ", ".join(same) or "none"
