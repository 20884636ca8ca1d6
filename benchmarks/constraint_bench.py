"""What `--schema` and `--choice` cost, as figures (not pass/fail).

    python benchmarks/constraint_bench.py [--threads N] [--rounds N] [--tokens N]

1. The answer mask on DeepSeek-R1's 152k-token vocabulary (the tiny R1 test model), in microseconds a
   constrained token, median and p90, for four constraints: llguidance's fill (the token bitmask),
   ponder's draw (among the allowed tokens near the best; every logit masked first only where the best is
   forbidden) and `took` (the drawn token fed
   to the matcher), timed inside the real `LlamaCppModel.stream` loop (the prompt ends with --no-think's
   closing text: the mask is on from the first token). Also the one-time costs: llguidance's view of
   the vocabulary (once a model) and a matcher (once a reply). Goal (issue 21): 100 µs a token or less
   in the median.
2. Where the time goes: the same tokens replayed through a fresh matcher, each step's fill and apply
   timed alone, with other ways to apply the bits (checked to give the same logits) and the check that
   drawing first would need (llama.cpp's way: one token validated, the mask only where it is refused).
3. SmolLM2-135M decode tokens/s with a schema against without, in interleaved rounds (median of each,
   the order alternating), the same prompt, sampling and max tokens; and how often the token drawn
   from the unmasked logits is one the grammar allows. Goal: a ratio of 0.9 or more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONCISE = "name, age int, tags list"  # its strings unbounded: llguidance's fast path
MASK_SCHEMAS = {
    "bounded string": {  # a string with maxLength costs llguidance far more a token than an unbounded one
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"], "additionalProperties": False,
    },
    "nested object": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
            "status": {"enum": ["open", "closed", "pending review"]},
            "owner": {
                "type": "object",
                "properties": {"name": {"type": "string", "maxLength": 16},
                               "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"}},
                "required": ["name", "email"], "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 1, "maxItems": 4},
            "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "maxItems": 6},
            "note": {"type": "string", "maxLength": 40},
        },
        "required": ["id", "status", "owner", "tags", "scores"], "additionalProperties": False,
    },
}
CHOICES = ("positive", "negative", "neutral", "mixed feelings")
MASK_PROMPT = "Describe the ticket as JSON."

# Long enough that both runs stop at max tokens: 40 items or more, some 15 tokens each.
DECODE_SCHEMA = {
    "type": "array", "minItems": 40, "maxItems": 60,
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 1, "maximum": 99},
                       "city": {"enum": ["Paris", "London", "Berlin", "Madrid", "Rome"]}},
        "required": ["name", "age", "city"], "additionalProperties": False,
    },
}
DECODE_PROMPT = "Write a very long story about a dragon who learns to bake bread."  # SmolLM2 writes on to max tokens


def us(values: list[float], q: float = 0.5) -> float:
    """The q-quantile of seconds, in microseconds (q=0.5: the median)."""
    return float(np.quantile(values, q)) * 1e6


class Timed:
    """Every AnswerMask the model makes, its steps timed: a [fill, draw, took, masked whole] a draw, in seconds
    (draw: llguidance's fill, then the sampler's draw among the allowed tokens, with every logit masked
    first only where the best token is not allowed: the last column counts those)."""

    def __init__(self, model):
        self.steps: list[list[float]] = []
        self.matchers: list[float] = []
        self._answer_mask = model.answer_mask
        model.answer_mask = self.answer_mask

    def answer_mask(self, prompt, params):
        from ponder.sampling import Sampler

        start = time.perf_counter()
        mask = self._answer_mask(prompt, params)
        self.matchers.append(time.perf_counter() - start)
        fill, draw, took, apply = mask._fill, mask.draw, mask.took, mask._apply

        def timed_fill(matcher, bits):
            start = time.perf_counter()
            fill(matcher, bits)
            self.steps[-1][0] = time.perf_counter() - start

        def timed_draw(sampler, logits):
            self.steps.append([0.0, 0.0, 0.0, 0.0, 0.0])
            twin, row = Sampler(sampler.temperature, sampler.top_p, 0), logits.copy()
            start = time.perf_counter()
            twin.sample(row)  # what the draw costs unconstrained, on the same logits
            self.steps[-1][4] = time.perf_counter() - start
            start = time.perf_counter()
            token = draw(sampler, logits)
            self.steps[-1][1] = time.perf_counter() - start
            return token

        def counted_apply(logits):
            self.steps[-1][3] = 1.0
            apply(logits)

        def timed_took(token, text):
            start = time.perf_counter()
            done = took(token, text)
            self.steps[-1][2] = time.perf_counter() - start
            return done

        mask._fill, mask.draw, mask.took, mask._apply = timed_fill, timed_draw, timed_took, counted_apply
        return mask


def mask_costs(args, model, constraints: dict) -> dict[str, list[tuple[int, ...]]]:
    """Part 1; returns the tokens each constraint's replies drew, for the replay."""
    from ponder.events import GenerationParams, Message, TextDelta
    from ponder.exchange import model_prompt
    from ponder.thinking import NO_THINKING

    prompt = model_prompt(model, [Message("user", MASK_PROMPT)]) + NO_THINKING
    start = time.perf_counter()
    model.answer_mask(prompt, GenerationParams(constraint=constraints["concise form"]))  # builds the vocabulary
    first = time.perf_counter() - start
    timed, drawn = Timed(model), {}
    print(f"1. answer mask, {model._n_vocab:,}-token R1 vocabulary ({Path(model.info.path).name}), in the stream loop, "
          f"{args.tokens} constrained tokens each; µs a token, median / p90")
    print(f"  {'constraint':14s} {'fill':>13s} {'draw':>13s} {'free draw':>13s} {'took':>13s} {'mask costs':>13s}"
          "  matcher  replies  masked whole")
    for name, constraint in constraints.items():
        timed.steps.clear(), timed.matchers.clear()
        drawn[name] = []
        while len(timed.steps) < args.tokens:  # a reply ends when its grammar is complete: as many as it takes
            params = GenerationParams(temperature=1.0, top_p=1.0, max_tokens=args.tokens, seed=len(drawn[name]),
                                      constraint=constraint)
            drawn[name].append(tuple(i for e in model.stream(prompt, params) if isinstance(e, TextDelta) for i in e.ids))
        steps = timed.steps[: args.tokens]
        columns = [[s[0] for s in steps], [s[1] - s[0] for s in steps], [s[4] for s in steps], [s[2] for s in steps],
                   [s[1] - s[4] + s[2] for s in steps]]
        cells = " ".join(f"{us(c):6.1f} /{us(c, 0.9):6.1f}" for c in columns)
        whole = sum(s[3] for s in steps) / len(steps)
        print(f"  {name:14s} {cells} {statistics.median(timed.matchers) * 1e3:5.2f} ms {len(drawn[name]):6d}"
              f"  {whole:6.0%}")
    print("  (draw: the sampler's work on the masked logits; free draw: the same logits unconstrained; mask costs:"
          " fill + draw + took - free draw, what a constrained token costs more)")
    matcher = statistics.median(timed.matchers)
    print(f"  llguidance's vocabulary, once a model: {(first - matcher) * 1e3:.0f} ms (the first mask's time less a matcher's)")
    del model.answer_mask  # the model's own again
    return drawn


def unpack(bits, n):
    return np.unpackbits(bits.view(np.uint8), count=n, bitorder="little").view(bool)


def apply_plain(bits, logits, n):  # every logit through the unpacked mask (AnswerMask's before c06adb6)
    allowed = unpack(bits, n)
    if allowed.any():
        np.copyto(logits, -np.inf, where=~allowed)


def apply_inverted(bits, logits, n):  # the bytes inverted before unpacking (19k, not 152k)
    forbidden = np.unpackbits(~bits.view(np.uint8), count=n, bitorder="little").view(bool)
    if not forbidden.all():
        np.copyto(logits, -np.inf, where=forbidden)


def apply_putmask(bits, logits, n):
    forbidden = np.unpackbits(~bits.view(np.uint8), count=n, bitorder="little").view(bool)
    if not forbidden.all():
        np.putmask(logits, forbidden, -np.inf)


APPLY = {"unpack, ~, copyto": apply_plain, "unpack inverted bytes, copyto": apply_inverted,
         "unpack inverted bytes, putmask": apply_putmask}
NOW = "AnswerMask._apply, as it is"


def replay(model, constraints: dict, drawn: dict, prompt: str) -> None:
    """Part 2: each constraint's tokens again, through a fresh matcher, every step's parts timed alone."""
    from ponder.events import GenerationParams

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(model._n_vocab).astype(np.float32)
    names = ["fill", NOW, *APPLY, "logit bias (Rust bytes), copyto", "validate the drawn token"]
    print("2. the same tokens replayed, each part alone; µs a token, median / p90")
    print(f"  {'':34s}" + "".join(f"{name:>17s}" for name in constraints))
    rows: dict[str, dict[str, list[float]]] = {name: {c: [] for c in constraints} for name in names}
    differ = 0
    for cname, constraint in constraints.items():
        for tokens in drawn[cname]:
            mask = model.answer_mask(prompt, GenerationParams(constraint=constraint))
            matcher, bits, n = mask._matcher, mask._bits, model._n_vocab
            applies = {NOW: lambda bits, logits, n: mask._apply(logits), **APPLY}
            for token in tokens:
                start = time.perf_counter()
                mask._fill(matcher, bits)
                rows["fill"][cname].append(time.perf_counter() - start)
                expected = logits.copy()
                apply_plain(bits, expected, n)
                for name, apply in applies.items():
                    row = logits.copy()
                    start = time.perf_counter()
                    apply(bits, row, n)
                    rows[name][cname].append(time.perf_counter() - start)
                    differ += not np.array_equal(row, expected)
                row = logits.copy()
                start = time.perf_counter()
                bias = np.frombuffer(matcher.compute_logit_bias(), dtype=np.uint8, count=n)
                np.copyto(row, -np.inf, where=bias == 0)
                rows["logit bias (Rust bytes), copyto"][cname].append(time.perf_counter() - start)
                differ += not np.array_equal(row, expected)
                start = time.perf_counter()
                allowed = matcher.validate_tokens([token]) == 1
                rows["validate the drawn token"][cname].append(time.perf_counter() - start)
                differ += not allowed
                matcher.consume_token(token)
    for name in names:
        print(f"  {name:34s}" + "".join(f" {us(v):7.1f} /{us(v, 0.9):7.1f}" for v in rows[name].values()))
    print(f"  every way gave the same logits, every drawn token validated: {'yes' if not differ else f'NO ({differ})'}")


def decode_ratio(args) -> None:
    """Part 3."""
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.constraint import Constraint
    from ponder.events import GenerationParams, Message
    from ponder.exchange import model_prompt
    from ponder.sampling import Sampler
    from tests.support.packages import smollm2_gguf

    model = LlamaCppModel(str(smollm2_gguf()), LoadOptions(context=4096, threads=args.threads))
    prompt = model_prompt(model, [Message("user", DECODE_PROMPT)])
    constraint = Constraint(schema=DECODE_SCHEMA)

    def run(constrained: bool, temperature: float = 0.6):
        params = GenerationParams(temperature=temperature, top_p=0.95, max_tokens=args.tokens, seed=1,
                                  constraint=constraint if constrained else None)
        return list(model.stream(prompt, params))[-1].stats

    run(True), run(False)  # warm: the vocabulary built, the prompt cached
    rates: dict[bool, list[float]] = {True: [], False: []}
    counts: dict[bool, set[int]] = {True: set(), False: set()}
    for round_ in range(args.rounds):  # interleaved, the order alternating, so drift hits both alike
        for constrained in (True, False) if round_ % 2 == 0 else (False, True):
            stats = run(constrained)
            rates[constrained].append(stats.decode_tokens_per_s)
            counts[constrained].add(stats.generated_tokens)
    print(f"3. SmolLM2 decode ({Path(model.info.path).name}), {args.threads} thread{'s' if args.threads > 1 else ''}, {args.tokens} max tokens, "
          f"median of {args.rounds} interleaved rounds")
    for constrained, label in ((True, "with the schema"), (False, "without")):
        runs = ", ".join(f"{r:.1f}" for r in rates[constrained])
        generated = "/".join(str(n) for n in sorted(counts[constrained]))
        print(f"  {label:16s} {statistics.median(rates[constrained]):7.1f} tokens/s  ({generated} tokens)  runs: {runs}")
    print(f"  ratio {statistics.median(rates[True]) / statistics.median(rates[False]):.3f} (goal: 0.9 or more)")

    # How often a draw from the unmasked logits is allowed (drawing first would then skip the mask).
    for temperature in (0.6, 0.0):
        allowed, answer_mask, sampler = [], model.answer_mask, Sampler(temperature, 0.95, 2)

        def watched(prompt, params):
            mask = answer_mask(prompt, params)
            draw = mask.draw

            def draw_watched(own_sampler, logits):
                token = sampler.sample(logits)
                drawn = draw(own_sampler, logits)
                if mask.active:
                    mask._fill(mask._matcher, mask._bits)  # (the matcher has not moved yet: the same mask)
                    mask._apply(logits := logits.copy())
                    allowed.append(logits[token] != -np.inf)
                return drawn

            mask.draw = draw_watched
            return mask

        model.answer_mask = watched
        run(True, temperature)
        model.answer_mask = answer_mask
        print(f"  temperature {temperature}: the unmasked draw is allowed at {np.mean(allowed):.0%} of {len(allowed)} tokens")
    model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, help="llama.cpp threads [default: one a physical core]")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved decode rounds [default: 5]")
    parser.add_argument("--tokens", type=int, default=300,
                        help="constrained tokens timed a constraint, and each decode's max tokens [default: 300]")
    args = parser.parse_args()
    if args.rounds < 1 or args.tokens < 2 or (args.threads is not None and not 1 <= args.threads <= 512):
        parser.error("--rounds must be at least 1, --tokens at least 2, --threads from 1 to 512")
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel, physical_cores
    from ponder.constraint import Constraint, concise_schema
    from ponder.events import Message
    from ponder.exchange import model_prompt
    from ponder.thinking import NO_THINKING
    from tests.support.tiny_r1 import trained_gguf

    args.threads = args.threads or physical_cores()
    model = LlamaCppModel(str(trained_gguf()), LoadOptions(context=4096, threads=args.threads))
    constraints = {"concise form": Constraint(schema=concise_schema(CONCISE))}
    constraints.update((name, Constraint(schema=schema)) for name, schema in MASK_SCHEMAS.items())
    constraints["--choice"] = Constraint(choices=CHOICES)
    drawn = mask_costs(args, model, constraints)
    replay(model, constraints, drawn, model_prompt(model, [Message("user", MASK_PROMPT)]) + NO_THINKING)
    model.close()
    decode_ratio(args)


if __name__ == "__main__":
    main()
