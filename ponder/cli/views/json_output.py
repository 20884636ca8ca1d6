"""Machine-readable output: one JSON object (`--json`) or a stream of JSON lines (`--jsonl`)."""

from __future__ import annotations

from typing import Any, TextIO

from ponder.backends.base import ModelInfo
from ponder.events import Reply, SpeculationStats, Stats
from ponder.json_text import dumps
from ponder.code_blocks import code_blocks
from ponder.reasoning import AnswerAsShown, extract_boxed


def stats_json(stats: Stats) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "prefilled_tokens": stats.prefilled_tokens,  # processed; the rest came from a cache (null: not known)
        "reasoning_tokens": stats.reasoning_tokens,
        "answer_tokens": stats.answer_tokens,
        "time_to_first_token_s": round(stats.time_to_first_token_s, 4),
        "tokens_per_s": round(stats.decode_tokens_per_s, 2),
        "thinking_s": round(stats.thinking_s, 4),
        "total_s": round(stats.total_s, 4),
        "peak_memory_bytes": stats.peak_memory_bytes,
        "route": stats.route,
        "speculation": speculation_json(stats.speculation),  # null: no speculative decoding
    }


def speculation_json(speculation: SpeculationStats | None) -> dict[str, int] | None:
    if speculation is None:
        return None
    return {"drafted": speculation.drafted, "accepted": speculation.accepted, "calls": speculation.calls}


def reply_json(reply: Reply, info: ModelInfo) -> dict[str, Any]:
    """The stable shape of one reply (tests pin its keys)."""
    return {
        **_text_json(reply.reasoning, reply.answer, info),
        "finish_reason": reply.finish_reason,
        "reasoning_end": reply.stats.reasoning_end,  # model, budget, user, loop, length, cancelled; null: none
        "error": reply.error,  # why an "interrupted" reply broke off
        "stats": stats_json(reply.stats),
        **({"parsed": reply.parsed.value} if reply.parsed is not None else {}),  # --schema, --choice
    }


def _text_json(reasoning: str, answer: str, info: ModelInfo) -> dict[str, Any]:
    return {
        "model": info.name,
        "backend": info.backend,
        "reasoning": reasoning,
        "answer": answer.lstrip(),  # as shown: the blank line R1 writes after </think> is not for show
        "boxed": extract_boxed(answer),
        "code": [{"lang": block.lang, "text": block.text} for block in code_blocks(answer)],
    }


def stopped_reply_json(reasoning: str, answer: str, info: ModelInfo) -> dict[str, Any]:
    """What arrived of a reply that Ctrl-C, SIGTERM or SIGHUP stopped: reply_json's keys, marked "interrupted",
    with no figures (it never finished)."""
    return {
        **_text_json(reasoning, answer, info),
        "finish_reason": "cancelled",
        "reasoning_end": None if answer else "cancelled",
        "error": None,
        "stats": None,
        "interrupted": True,
    }


def write_json_line(out: TextIO, payload: dict[str, Any]) -> None:
    out.write(dumps(payload) + "\n")
    out.flush()


class JsonRenderer:
    """`--json`: nothing while generating, one object at the end."""

    def __init__(self, out: TextIO, info: ModelInfo):
        self.out, self.info = out, info

    def reasoning(self, text: str, tokens: int) -> None:
        pass

    def reasoning_done(self, seconds: float, tokens: int) -> None:
        pass

    def answer(self, text: str) -> None:
        pass

    def finish(self, reply: Reply | None) -> None:
        if reply is not None:
            self.out.write(dumps(reply_json(reply, self.info), indent=2) + "\n")
            self.out.flush()


class JsonlRenderer(JsonRenderer):
    """`--jsonl`: an event per line as it happens: reasoning and answer deltas, then done."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shown = AnswerAsShown()  # the deltas add up to the "answer" of the done line

    def reasoning(self, text: str, tokens: int) -> None:
        write_json_line(self.out, {"type": "reasoning", "text": text})

    def answer(self, text: str) -> None:
        text = self._shown(text)
        if not text:
            return
        write_json_line(self.out, {"type": "answer", "text": text})

    def finish(self, reply: Reply | None) -> None:
        if reply is not None:
            write_json_line(self.out, {"type": "done", **reply_json(reply, self.info)})
