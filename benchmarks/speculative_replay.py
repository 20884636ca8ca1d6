"""Speculation replayed on a clock of measured call costs: what ponder.speculate's constants and controller
would give, free of the machine's load (figures, not pass/fail).

    python benchmarks/speculative_replay.py [--tokens N] [--costs 1:8.3,2:15.5,5:29,9:43,17:76]
                                            [--tiny-costs 1:1.2,17:10.6] [--sampled]

A greedy reply (and a seeded one, with --sampled) is the same token for token with speculation as without,
so each case's reply is generated once, plainly, and speculation is then replayed over its tokens: the real
NgramDrafter and Speculation (their module constants patched for each variant) guess as they would in
LlamaCppModel.stream, a guess is kept as far as it equals the reply, and each model call is charged the cost
of a call of that many tokens, interpolated from --costs (milliseconds; by default the figures measured on
this 2-core machine unloaded: SmolLM2-135M Q4_1 and the tiny R1, logits on every row; part 1 of
speculative_bench.py measures them). Auto's controller sees those costs as its clock. Python's own time a
call (the sampler's draws, the guess) is left out. Prints, for each case and variant, the predicted speed
against plain decode, acceptance and tokens a call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ponder.speculate as spec  # noqa: E402
from benchmarks.speculative_cases import CASES, bench_cache  # noqa: E402
from benchmarks.speculative_runs import load  # noqa: E402


class CyclicNgramDrafter(spec.NgramDrafter):
    """Where the match's continuation reaches the end of the text (a loop shorter than the guess), the
    continuation repeats: the text so far says the loop goes on."""

    def propose(self, history, limit):
        guess = super().propose(history, limit)
        if 0 < len(guess) < limit and history[len(history) - len(guess):] == guess:
            guess = (guess * (limit // len(guess) + 1))[:limit]
        return guess


# name -> (module constants, drafter class, Speculation class)
VARIANTS = {
    "ngram": ({}, spec.NgramDrafter, spec.Speculation),
    "ngram, FIRST 4": ({"FIRST": 4}, spec.NgramDrafter, spec.Speculation),
    "ngram, NGRAMS (4, 3)": ({"NGRAMS": (4, 3)}, spec.NgramDrafter, spec.Speculation),
    "auto": ({}, spec.NgramDrafter, spec.AdaptiveSpeculation),
    "auto, MARGIN 0.1": ({"MARGIN": 0.1}, spec.NgramDrafter, spec.AdaptiveSpeculation),
    "auto, NGRAM_PRIOR 0.5": ({"NGRAM_PRIOR": 0.5}, spec.NgramDrafter, spec.AdaptiveSpeculation),
    "auto, PRIOR_COST 0.02": ({"PRIOR_COST": 0.02}, spec.NgramDrafter, spec.AdaptiveSpeculation),
    "auto, PRIOR_COST 0.3": ({"PRIOR_COST": 0.3}, spec.NgramDrafter, spec.AdaptiveSpeculation),
    "auto, PRIOR .5, M .1": ({"NGRAM_PRIOR": 0.5, "MARGIN": 0.1}, spec.NgramDrafter, spec.AdaptiveSpeculation),
    "auto, FADE 1/0.995": ({"FADE": 1 / 0.995}, spec.NgramDrafter, spec.AdaptiveSpeculation),
    "auto, cyclic": ({}, CyclicNgramDrafter, spec.AdaptiveSpeculation),
}


@contextmanager
def constants(values: dict):
    saved = {name: getattr(spec, name) for name in values}
    for name, value in values.items():
        setattr(spec, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(spec, name, value)


def cost_of(points: dict[int, float]):
    """Milliseconds of a call of k tokens, interpolated linearly between the measured k."""
    ks = sorted(points)

    def cost(k: int) -> float:
        for low, high in zip(ks, ks[1:]):
            if k <= high:
                return points[low] + (points[high] - points[low]) * (k - low) / (high - low)
        low, high = ks[-2], ks[-1]
        return points[high] + (points[high] - points[low]) * (k - high) / (high - low)

    return cost


def replay(prompt: list[int], reply: list[int], budget: int, cost, drafter_class, speculation_class) -> dict:
    """The calls LlamaCppModel.stream makes for `reply` (its end token last where it ended on one)."""
    speculation = speculation_class(drafter_class())
    history = prompt + reply[:1]  # the first token comes from the prompt's own call
    done, spent, calls, guessed_calls = 1, 0.0, 0, 0
    while done < len(reply):
        guess = speculation.guess(history, budget - done - 1)
        kept = 0
        while kept < len(guess) and done + kept < len(reply) and guess[kept] == reply[done + kept]:
            kept += 1
        given = min(kept + 1, len(reply) - done)
        seconds = cost(len(guess) + 1) / 1e3
        speculation.settle(len(guess), kept, seconds)
        spent += seconds
        calls += 1
        guessed_calls += bool(guess)
        history.extend(reply[done : done + given])
        done += given
    plain = (len(reply) - 1) * cost(1) / 1e3
    return {"speed": plain / spent if spent else 1.0, "calls": calls, "guessed": guessed_calls,
            "drafted": speculation.drafted, "accepted": speculation.accepted, "tokens": len(reply)}


def generate(model, prompt: str, params) -> list[int]:
    """The reply's tokens, kept in the bench cache (the same model file, prompt and sampling give the same)."""
    from ponder.events import Finished, TextDelta

    key = json.dumps([Path(model.info.path).name, os.path.getsize(model.info.path), prompt, params.temperature,
                      params.top_p, params.seed, params.max_tokens])
    store = bench_cache() / "replies.json"
    replies = json.loads(store.read_text()) if store.exists() else {}
    if key in replies:
        return replies[key]
    model.streams.trim(0, 0)
    ids, end = [], None
    for event in model.stream(prompt, params):
        if isinstance(event, TextDelta):
            ids.extend(event.ids)
        elif isinstance(event, Finished):
            end = event
    if end.finish_reason == "stop":
        ids.append(-1)  # the end token: a call gives it too (no guess ever equals -1)
    replies[key] = ids
    store.write_text(json.dumps(replies))
    return ids


def parse_costs(text: str) -> dict[int, float]:
    return {int(k): float(v) for k, v in (pair.split(":") for pair in text.split(","))}


def main() -> None:
    from ponder.events import GenerationParams

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--costs", default="1:8.3,2:15.5,5:29,9:43,17:76", help="SmolLM2's call costs, k:ms")
    parser.add_argument("--tiny-costs", default="1:1.2,17:10.6", help="the tiny R1's call costs, k:ms")
    parser.add_argument("--sampled", action="store_true", help="also seeded replies at temperature 0.6")
    parser.add_argument("--seeds", type=int, default=1, help="how many seeded replies (seeds 1, 2, ...)")
    parser.add_argument("--cases", default="a,b,b2,c")
    parser.add_argument("--detail", action="store_true", help="acceptance and calls of every replay too")
    args = parser.parse_args()
    greedy = GenerationParams(temperature=0, max_tokens=args.tokens)
    rows = [("greedy", greedy)] + ([(f"T=0.6 seed {seed}", replace(greedy, temperature=0.6, top_p=0.95, seed=seed))
                                    for seed in range(1, args.seeds + 1)] if args.sampled else [])
    print(f"replayed speculation, {args.tokens} tokens a reply; call costs (ms): SmolLM2 {args.costs}, "
          f"tiny R1 {args.tiny_costs}")
    speeds: dict[tuple[str, str], list[float]] = {}
    columns: list[str] = []
    for case in [c for c in CASES if c.key in args.cases.split(",")]:
        model = load(case.path, args.threads)
        cost = cost_of(parse_costs(args.tiny_costs if "tiny" in case.path else args.costs))
        for label, params in rows:
            reply = generate(model, case.prompt(model), params)
            prompt = model.prompt_ids(case.prompt(model))
            columns.append(f"{case.key} {label.replace(' seed ', ' s')}")
            if args.detail:
                print(f" ({case.key}) {case.title}, {label}: {len(reply)} tokens")
                print(f"  {'variant':24s} {'x plain':>8s} {'kept':>10s} {'tok/call':>8s}"
                      f" {'guessed calls':>14s}")
            for name, (values, drafter, controller) in VARIANTS.items():
                with constants(values):
                    r = replay(prompt, reply, args.tokens, cost, drafter, controller)
                speeds.setdefault(name, []).append(r["speed"])
                if args.detail:
                    print(f"  {name:24s} {r['speed']:8.2f} {r['accepted']:>4d}/{r['drafted']:<5d}"
                          f" {(r['tokens'] - 1) / r['calls']:8.2f} {r['guessed']:>6d}/{r['calls']:<7d}")
        model.close()
    print("\npredicted speed against plain decode (x), each reply; the lowest of the open-ended text (c) last")
    print(f"  {'variant':24s}" + "".join(f"{c:>10s}" for c in columns) + f"{'worst c':>9s}")
    for name, values in speeds.items():
        worst = min((v for v, c in zip(values, columns) if c.startswith("c ")), default=float("nan"))
        print(f"  {name:24s}" + "".join(f"{v:10.2f}" for v in values) + f"{worst:9.2f}")

if __name__ == "__main__":
    main()
