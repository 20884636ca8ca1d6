"""Parts 3 and 4 of benchmarks/speculative_bench.py: what the controller decided call by call (why a ratio is
what it is), and draft-model speculation against llama-speculative-simple."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import replace
from pathlib import Path

from benchmarks.speculative_runs import CONTEXT, interleaved, load, load_text, ponder_run, same_text, table
from benchmarks.speculative_cases import CASES, smollm2, target_file
from benchmarks.speculative_tools import tool_run
from ponder.speculate import NGRAMS


class Recorder:
    """Every settle() of the replies' Speculation: (guessed, kept, seconds, the n-gram length that found the
    guess); and the plain calls made where the drafter had a guess (auto's choice)."""

    def __init__(self, model):
        self.calls: list[tuple[int, int, float, int]] = []
        self.matched: list[int] = []  # for each guess, the n-gram length it was found by (0: a draft model's)
        self.declined = 0  # plain calls where the drafter had a guess
        original = model._speculation

        def recorded(params):
            speculation = original(params)
            if speculation is None:
                return None
            settle, guess = speculation.settle, speculation.guess

            def settled(guessed, kept, seconds):
                self.calls.append((guessed, kept, seconds, self.matched[-1] if guessed else 0))
                settle(guessed, kept, seconds)

            def guessing(history, room):
                guessed = guess(history, room)
                seen = getattr(speculation.drafter, "_seen", None)  # NgramDrafter's index: which n found it
                self.matched.append(next((n for n in NGRAMS if seen and tuple(history[-n:]) in seen[n]), 0))
                self.declined += not guessed and bool(self.matched[-1]) and room > 0
                return guessed

            speculation.settle, speculation.guess = settled, guessing
            return speculation

        model._speculation = recorded

    def report(self, label: str) -> None:
        guessed = [c for c in self.calls if c[0]]
        plain = [c[2] for c in self.calls if not c[0]]
        lengths = Counter(c[0] for c in guessed)
        kept = sum(c[1] for c in guessed)
        whole = sum(c[1] == c[0] for c in guessed)
        by_length = {k: statistics.median(c[2] for c in guessed if c[0] == k) * 1e3 for k in sorted(lengths)}
        tokens = sum(c[1] + 1 for c in self.calls)
        paused = f", {self.declined} where the n-gram drafter had a guess" if self.declined else ""
        print(f"  {label:8s} calls {len(self.calls)} ({len(guessed)} with a guess, {len(plain)} plain{paused});"
              f" {tokens} tokens, {tokens / max(1, len(self.calls)):.2f} a call")
        if guessed:
            drafted = sum(c[0] for c in guessed)
            print(f"           kept {kept}/{drafted} guessed ({kept / drafted:.0%}), whole guesses kept"
                  f" {whole}/{len(guessed)}, kept a guessed call {kept / len(guessed):.2f}")
            print("           guesses by length: " + ", ".join(f"{k}: {n}" for k, n in sorted(lengths.items())))
            by_n = {n: [c for c in guessed if c[3] == n] for n in sorted({c[3] for c in guessed}, reverse=True)}
            if any(by_n):
                print("           kept by the n-gram that found the guess: " + ", ".join(
                    f"n={n}: {sum(c[1] for c in cs)}/{sum(c[0] for c in cs)} in {len(cs)} guesses"
                    for n, cs in by_n.items() if n))
            print("           ms a call by guess length (median): plain "
                  f"{statistics.median(plain) * 1e3 if plain else float('nan'):.2f}; "
                  + ", ".join(f"{k}: {ms:.2f}" for k, ms in by_length.items()))
        self.calls.clear()
        self.declined = 0


def trace_part(args) -> None:
    from ponder.events import GenerationParams

    print(f"\n3. the controller, call by call (one greedy pass each, {args.tokens} tokens; seconds include the guess"
          " and the draws)")
    greedy = GenerationParams(temperature=0, max_tokens=args.tokens)
    for case in [c for c in CASES if c.key in args.cases.split(",")]:
        model = load(case.path, args.threads)
        recorder = Recorder(model)
        print(f" ({case.key}) {case.title}   {load_text()}")
        for mode in ("ngram", "auto"):
            ponder_run(model, case.prompt(model), replace(greedy, speculate=mode))
            recorder.report(mode)
        model.close()


def draft_part(args, tools) -> None:
    """Part 4: the target alone, with SmolLM2 Q4_1 drafting through ponder, and llama-speculative-simple."""
    from ponder.events import GenerationParams

    target = args.target or target_file(tools, args.target_type)
    draft = smollm2()
    print(f"\n4. draft model: target {Path(target).name}, draft {Path(draft).name}, {args.tokens} tokens, "
          f"{args.threads} threads, k = {args.k} (ponder: LONGEST, adaptive from FIRST), median of {args.rounds}"
          " rounds")
    try:
        model = load(target, args.threads, draft=draft)
    except Exception as error:  # the draft support may not be there yet
        print(f"  ponder could not load the target with a draft: {error}")
        return
    greedy = GenerationParams(temperature=0, max_tokens=args.tokens)
    for case in [c for c in CASES if c.key in args.cases.split(",") and c.key != "b2"]:  # (b2: another vocabulary)
        case = replace(case, path=target)
        prompt = case.prompt(model)
        rows = {"ponder off": lambda: ponder_run(model, prompt, greedy)}
        for mode in ("draft", "auto"):
            rows[f"ponder {mode}"] = lambda mode=mode: ponder_run(model, prompt, replace(greedy, speculate=mode))
        common = dict(model=target, prompt=case.tool_prompt(model), tokens=args.tokens, threads=args.threads,
                      context=CONTEXT)
        if tools.available("llama-lookup"):
            rows["llama.cpp plain"] = lambda: tool_run(tools, "llama-lookup", ["--spec-draft-n-max", "0"], **common)
        if tools.available("llama-speculative-simple"):
            rows[f"llama.cpp draft k={args.k}"] = lambda: tool_run(
                tools, "llama-speculative-simple", ["--spec-type", "draft-simple", "--spec-draft-n-max", str(args.k)],
                draft=draft, **common)
            rows["llama.cpp draft k=3"] = lambda: tool_run(  # its default draft length
                tools, "llama-speculative-simple", ["--spec-type", "draft-simple", "--spec-draft-n-max", "3"],
                draft=draft, **common)
        print(f" ({case.key}) {case.title}   {load_text()}")
        runs = interleaved(rows, args.rounds)
        table(runs, "ponder off", f"llama.cpp draft k={args.k}")
        print(f"  greedy rows with ponder off's text: {same_text(runs)}")
        recorder = Recorder(model)
        ponder_run(model, prompt, replace(greedy, speculate="draft"))
        recorder.report("draft")
        model._speculation = type(model)._speculation.__get__(model)
        print(f"   {load_text()}")
    model.close()
