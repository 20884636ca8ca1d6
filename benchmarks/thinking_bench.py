"""What a thinking budget and loop rescue cost, as figures (not pass/fail).

    python benchmarks/thinking_bench.py [--model GGUF] [--backend llama.cpp|mlx] [--generated N] [--runs N]

- From the budget hit to the first answer token: the continuation ponder sends (the prompt, the
  generated tokens, the closing message) with the cache holding all but the message, against the same
  continuation on an empty cache; median of runs, interleaved.
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


def time_to_answer(model, continuation, warm: bool) -> tuple[float, int]:
    """(seconds to the first token after the message, prompt tokens processed) for one continuation."""
    from ponder.events import Finished, GenerationParams

    params = GenerationParams(temperature=0, max_tokens=1)
    if warm:  # the cache as the cut leaves it: the prompt and every generated token
        list(model.stream(continuation.prompt, GenerationParams(temperature=0, max_tokens=len(continuation.ids))))
    else:  # another prompt first: nothing of this one is cached
        list(model.stream("Hello", GenerationParams(temperature=0, max_tokens=1)))
    finished = [e for e in model.stream(continuation, params) if isinstance(e, Finished)][0]
    return finished.stats.time_to_first_token_s, finished.stats.prefilled_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a GGUF file or MLX directory [default: SmolLM2-135M from the test cache]")
    parser.add_argument("--backend", default="llama.cpp")
    parser.add_argument("--generated", type=int, default=1500, help="reasoning tokens before the cut")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from ponder.backends import get_backend
    from ponder.backends.base import LoadOptions
    from ponder.events import Continuation, GenerationParams, Message, TextDelta
    from ponder.exchange import model_prompt
    from ponder.loops import LoopDetector
    from ponder.thinking import BUDGET_MESSAGE

    path = args.model or str(__import__("tests.support.packages", fromlist=["x"]).smollm2_gguf())
    model = get_backend(args.backend).load(path, LoadOptions(context=4096))
    prompt = model_prompt(model, [Message("user", PROMPT)])
    events = list(model.stream(prompt, GenerationParams(temperature=0, max_tokens=args.generated)))
    ids = tuple(i for e in events if isinstance(e, TextDelta) for i in e.ids)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    continuation = Continuation(prompt, ids, text, BUDGET_MESSAGE)
    warm, cold = [], []
    for _ in range(args.runs):
        warm.append(time_to_answer(model, continuation, True))
        cold.append(time_to_answer(model, continuation, False))
    model.close()
    warm_s, warm_n = statistics.median(s for s, _ in warm), warm[0][1]
    cold_s, cold_n = statistics.median(s for s, _ in cold), cold[0][1]
    print(f"{Path(path).name} on {args.backend} · {len(ids)} generated tokens, then the budget message")
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
