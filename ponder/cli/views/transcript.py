"""Conversations as text: the Markdown transcript (chat's /save, `ponder history show`) and the
one-line summaries (`ponder history`, chat's /history)."""

from __future__ import annotations

import time


def summary_lines(summaries) -> list[str]:
    return [f"{s.id:>5}  {_when(s.updated)}  {s.kind:4}  {s.turns:>3} turns  {s.title}" for s in summaries]


def _when(timestamp: float) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))
    except (OverflowError, OSError, ValueError):  # a time no clock shows (the history is outside data)
        return "????-??-?? ??:??"


def transcript_markdown(conversation, model_name: str) -> str:
    parts = [f"# Conversation with {model_name}\n"]
    for turn in conversation.turns:
        if turn.role == "user":
            parts.append(f"## User\n\n{turn.content}\n")
            continue
        parts.append("## Assistant\n")
        if turn.reasoning.strip():
            parts.append(f"<details>\n<summary>Reasoning</summary>\n\n{turn.reasoning.strip()}\n\n</details>\n")
        parts.append(turn.content.strip() + ("\n\n*[interrupted]*" if turn.interrupted else "") + "\n")
    return "\n".join(parts)
