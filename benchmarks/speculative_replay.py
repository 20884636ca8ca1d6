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


def paused(first: int, start: int = 0):
    """A Speculation whose pauses last at least `first` tokens (as is: 16, doubling while guesses lose, back to
    16 after a winning one), and that guesses only after `start` tokens."""

    class Paused(spec.Speculation):
        def __init__(self, drafter, adaptive):
            super().__init__(drafter, adaptive)
            self._pause = max(self._pause, first)
            self._resume_at = start if adaptive else 0

        def settle(self, guessed, kept, seconds):
            super().settle(guessed, kept, seconds)
            self._pause = max(self._pause, first)

    return Paused


class CostAware(spec.Speculation):
    """A controller proposal: each guess as long as pays best by what the calls cost and how often guesses of
    the same kind (the n-gram order that found them) were kept. A call of 1 + g tokens is taken to cost
    plain + g * extra seconds (both moving averages of the calls themselves), a guessed token to be kept with
    probability p, each after the one before (so 1 + p + ... + p^g tokens a call); the length g from 0 to
    LONGEST with the most tokens a second wins, 0 (no guess) where none beats a plain call. p per n-gram order
    from decayed counts of kept tokens and of rejections, starting from a prior of 1 kept, 0.25 rejected
    (0.8); while no guess pays, the counts decay by half every 32 tokens, so a kind of guess is tried again."""

    def __init__(self, drafter, adaptive):
        super().__init__(drafter, adaptive)
        self._kept: dict[int, list[float]] = {}  # order -> [decayed kept tokens, decayed rejections]
        self._extra: float | None = None
        self._order = 0
        self._idle = 0

    def _p(self, order: int) -> float:
        kept, missed = self._kept.setdefault(order, [1.0, 0.25])
        return kept / (kept + missed)

    def guess(self, history, room):
        if room < 1 or self._plain_s is None or not self.adaptive:
            return super().guess(history, room) if not self.adaptive else []
        seen = getattr(self.drafter, "_seen", None)
        self.drafter.propose(history, 0)  # (indexes the text: the lookup below needs it)
        self._order = next((n for n in spec.NGRAMS if seen and tuple(history[-n:]) in seen[n]), 0) if seen else 0
        p, plain = self._p(self._order), self._plain_s
        extra = self._extra if self._extra is not None else 0.5 * plain
        best, best_rate = 0, 1.0 / plain
        for g in range(1, min(spec.LONGEST, room) + 1):
            rate = ((1 - p ** (g + 1)) / (1 - p) if p < 1 else g + 1) / (plain + extra * g)
            if rate > best_rate:
                best, best_rate = g, rate
        if not best:
            self._idle += 1
            if self._idle % 32 == 0:  # let the kinds that lost be tried again, slowly
                for counts in self._kept.values():
                    counts[1] *= 0.5
            return []
        return self.drafter.propose(history, best)[:best]

    def settle(self, guessed, kept, seconds):
        if not self.adaptive:
            return super().settle(guessed, kept, seconds)
        self.calls += 1
        self._given += kept + 1
        if not guessed:
            self._plain_s = seconds if self._plain_s is None else 0.8 * self._plain_s + 0.2 * seconds
            return
        self.drafted += guessed
        self.accepted += kept
        counts = self._kept.setdefault(self._order, [1.0, 0.25])
        counts[0], counts[1] = 0.9 * counts[0] + kept, 0.9 * counts[1] + (kept < guessed)
        extra = max(0.0, seconds - self._plain_s) / guessed
        self._extra = extra if self._extra is None else 0.8 * self._extra + 0.2 * extra


def patient(calls: int):
    """A Speculation that pauses only once `calls` guessed calls since it last resumed gave, together, fewer
    tokens than plain calls would have in their time (as is: the moving average of single calls, reset to
    1.0 at each resume, so one wrong guess pauses)."""

    class Patient(spec.Speculation):
        def __init__(self, drafter, adaptive):
            super().__init__(drafter, adaptive)
            self._window = [0, 0.0, 0]  # tokens given, seconds, guessed calls since the last resume

        def settle(self, guessed, kept, seconds):
            if not (self.adaptive and guessed and self._plain_s):
                return super().settle(guessed, kept, seconds)
            self.calls += 1
            self._given += kept + 1
            self.drafted += guessed
            self.accepted += kept
            self.length = min(spec.LONGEST, self.length * 2) if kept == guessed else max(spec.SHORTEST, kept + 1)
            window = self._window
            window[0] += kept + 1
            window[1] += seconds
            window[2] += 1
            gain = window[0] * self._plain_s / window[1]
            if window[2] >= calls and gain < 1.0:
                self._resume_at = self._given + self._pause
                self._pause = min(self._pause * 2, 1024)
                self._window = [0, 0.0, 0]
            elif gain > 1.2:
                self._pause = 16

    return Patient


# name -> (module constants, drafter class[, Speculation class])
VARIANTS = {
    "as is": ({}, spec.NgramDrafter),
    "cost-aware": ({}, spec.NgramDrafter, CostAware),
    "patient 3": ({}, spec.NgramDrafter, patient(3)),
    "FIRST 4, patient 3": ({"FIRST": 4}, spec.NgramDrafter, patient(3)),
    "pause 64": ({}, spec.NgramDrafter, paused(64)),
    "start at 32, pause 64": ({}, spec.NgramDrafter, paused(64, 32)),
    "NGRAMS (4, 3), pause 64": ({"NGRAMS": (4, 3)}, spec.NgramDrafter, paused(64)),
    "FIRST 4, pause 32": ({"FIRST": 4}, spec.NgramDrafter, paused(32)),
    "FIRST 4, NGRAMS (4, 3)": ({"FIRST": 4, "NGRAMS": (4, 3)}, spec.NgramDrafter),
    "NGRAMS (4, 3)": ({"NGRAMS": (4, 3)}, spec.NgramDrafter),
    "NGRAMS (4,)": ({"NGRAMS": (4,)}, spec.NgramDrafter),
    "LONGEST 8": ({"LONGEST": 8}, spec.NgramDrafter),
    "SHORTEST 4": ({"SHORTEST": 4}, spec.NgramDrafter),
    "FIRST 4": ({"FIRST": 4}, spec.NgramDrafter),
    "FIRST 16": ({"FIRST": 16}, spec.NgramDrafter),
    "cyclic": ({}, CyclicNgramDrafter),
    "NGRAMS (4, 3), cyclic": ({"NGRAMS": (4, 3)}, CyclicNgramDrafter),
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


def replay(prompt: list[int], reply: list[int], budget: int, cost, adaptive: bool, drafter_class,
           speculation_class=spec.Speculation) -> dict:
    """The calls LlamaCppModel.stream makes for `reply` (its end token last where it ended on one)."""
    speculation = speculation_class(drafter_class(), adaptive)
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
                print(f"  {'variant':24s} {'mode':6s} {'x plain':>8s} {'kept':>10s} {'tok/call':>8s}"
                      f" {'guessed calls':>14s}")
            for name, (values, *classes) in VARIANTS.items():
                for adaptive in (False, True):
                    if len(classes) > 1 and not adaptive:
                        continue  # (pauses are auto's alone)
                    with constants(values):
                        r = replay(prompt, reply, args.tokens, cost, adaptive, *classes)
                    speeds.setdefault((name, "auto" if adaptive else "ngram"), []).append(r["speed"])
                    if args.detail:
                        print(f"  {name:24s} {'auto' if adaptive else 'ngram':6s} {r['speed']:8.2f} "
                              f"{r['accepted']:>4d}/{r['drafted']:<5d} {(r['tokens'] - 1) / r['calls']:8.2f} "
                              f"{r['guessed']:>6d}/{r['calls']:<7d}")
        model.close()
    print("\npredicted speed against plain decode (x), each reply; the lowest of the open-ended text (c) last")
    print(f"  {'variant':24s} {'mode':6s}" + "".join(f"{c:>10s}" for c in columns) + f"{'worst c':>9s}")
    for (name, mode), values in speeds.items():
        worst = min((v for v, c in zip(values, columns) if c.startswith("c ")), default=float("nan"))
        print(f"  {name:24s} {mode:6s}" + "".join(f"{v:10.2f}" for v in values) + f"{worst:9.2f}")

if __name__ == "__main__":
    main()
