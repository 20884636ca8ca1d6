"""Time to first token at turn 1 and at turn N of a chat, with the cache kept between turns.

    python benchmarks/chat_turns.py [--model PATH] [--turns 10] [--reply-tokens 200] [--runs 3]

Each turn sends a new message of the same length, as `ponder chat` does (earlier answers go back
without their reasoning). Prints time to first token of turn 1 and turn N, their ratio, and for
contrast turn N's prompt on a fresh model (the whole history processed again). Figures, not pass/fail.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def message(turn: int) -> str:
    return f"Question {turn:02d}: tell me a short story about the number {turn:02d}, in a few sentences."


def conversation_run(model, turns: int, reply_tokens: int) -> tuple[list[float], list, int]:
    from ponder.exchange import collect_reply
    from ponder.events import GenerationParams, Message
    from ponder.exchange import generate_reply

    params = GenerationParams(max_tokens=reply_tokens, seed=1)
    messages: list[Message] = []
    ttfts = []
    for turn in range(1, turns + 1):
        messages.append(Message("user", message(turn)))
        reply = collect_reply(generate_reply(model, messages, params))
        ttfts.append(reply.stats.time_to_first_token_s)
        messages.append(Message("assistant", reply.answer))
    return ttfts, messages[:-1], reply.stats.prompt_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reply-tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from ponder.backends import LoadOptions, get_backend, select_backend
    from ponder.exchange import collect_reply
    from ponder.events import GenerationParams
    from ponder.exchange import generate_reply

    if args.model is None:
        from tests.support.packages import smollm2_gguf

        args.model = str(smollm2_gguf())
    backend = get_backend(select_backend(args.model, args.backend))
    first, last, fresh = [], [], []
    for _ in range(args.runs):
        model = backend.load(args.model, LoadOptions(context=8192))
        ttfts, history, prompt_tokens = conversation_run(model, args.turns, args.reply_tokens)
        model.close()
        first.append(ttfts[0])
        last.append(ttfts[-1])
        cold = backend.load(args.model, LoadOptions(context=8192))  # turn N's prompt with nothing cached
        fresh.append(collect_reply(generate_reply(cold, history, GenerationParams(max_tokens=1))).stats
                     .time_to_first_token_s)
        cold.close()
    median = statistics.median
    print(f"model {Path(args.model).name} ({backend.name}), {args.turns} turns, replies up to {args.reply_tokens} "
          f"tokens, turn {args.turns} prompt {prompt_tokens} tokens, median of {args.runs} runs")
    print(f"  time to first token, turn 1:               {median(first) * 1000:7.1f} ms")
    print(f"  time to first token, turn {args.turns}:              {median(last) * 1000:7.1f} ms  "
          f"({median(last) / median(first):.2f}x turn 1)")
    print(f"  turn {args.turns}'s prompt without the cache:        {median(fresh) * 1000:7.1f} ms  "
          f"({median(fresh) / median(first):.2f}x turn 1)")


if __name__ == "__main__":
    main()
