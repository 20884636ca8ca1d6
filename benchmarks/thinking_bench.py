"""What a thinking budget and loop rescue cost, as figures (not pass/fail).

    python benchmarks/thinking_bench.py [--model GGUF] [--backend llama.cpp|mlx] [--generated N] [--runs N]

- From the budget hit to the first answer token: the continuation ponder sends (the prompt, the
  generated tokens, the closing message) with the cache as the cut leaves it, against the same
  continuation on an empty cache; median of runs (each a fresh generation), interleaved.
- The loop detector's cost per token, in microseconds (numpy, over 200,000 varied tokens).
Default model: SmolLM2-135M from the test cache, on llama.cpp.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Write a very long story about a dragon who learns to bake bread."


def answer_times(model, prompt: str, generated: int) -> tuple[tuple[float, int], tuple[float, int]]:
    """One cut, timed both ways: (seconds to the first token after the message, prompt tokens processed)
    with the cache as the cut leaves it, then for the same continuation on an empty cache."""
    from ponder.events import Continuation, Finished, GenerationParams, TextDelta
    from ponder.thinking import BUDGET_MESSAGE

    events = list(model.stream(prompt, GenerationParams(temperature=0, max_tokens=generated)))
    ids = tuple(i for e in events if isinstance(e, TextDelta) for i in e.ids)
    continuation = Continuation(prompt, ids, "".join(e.text for e in events if isinstance(e, TextDelta)),
                                BUDGET_MESSAGE)

    def first_token() -> tuple[float, int]:
        stats = [e for e in model.stream(continuation, GenerationParams(temperature=0, max_tokens=1))
                 if isinstance(e, Finished)][0].stats
        return stats.time_to_first_token_s, stats.prefilled_tokens

    warm = first_token()
    list(model.stream("Hello", GenerationParams(temperature=0, max_tokens=1)))  # nothing of the prompt cached
    return warm, first_token()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file or MLX directory [default: SmolLM2-135M from the test cache]")
    parser.add_argument("--backend", default="llama.cpp")
    parser.add_argument("--generated", type=int, default=1000, help="reasoning tokens before the cut")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from ponder.backends import get_backend
    from ponder.backends.base import LoadOptions
    from ponder.events import Message
    from ponder.exchange import model_prompt
    from ponder.loops import LoopDetector

    path = args.model or str(__import__("tests.support.packages", fromlist=["x"]).smollm2_gguf())
    model = get_backend(args.backend).load(path, LoadOptions(context=4096))
    prompt = model_prompt(model, [Message("user", PROMPT)])
    runs = [answer_times(model, prompt, args.generated) for _ in range(args.runs)]
    model.close()
    warm_s, warm_n = statistics.median(w[0] for w, _ in runs), runs[0][0][1]
    cold_s, cold_n = statistics.median(c[0] for _, c in runs), runs[0][1][1]
    print(f"{Path(path).name} on {args.backend} · {args.generated} generated tokens, then the budget message")
    print(f"  budget hit -> first answer token, cache kept   {warm_s * 1000:8.1f} ms  ({warm_n} tokens processed)")
    print(f"  same continuation, empty cache                {cold_s * 1000:8.1f} ms  ({cold_n} tokens processed)")
    print(f"  ratio {cold_s / warm_s:.1f}x")

    rng = random.Random(0)
    tokens = [rng.randrange(50_000) for _ in range(200_000)]
    detector = LoopDetector()
    started = time.perf_counter()
    for token in tokens:
        detector.add(token)
    per_token = (time.perf_counter() - started) / len(tokens)
    print(f"  loop detector: {per_token * 1e6:.1f} µs per token (spans 8-512, three repeats)")


if __name__ == "__main__":
    main()
