"""What of a conversation the model sees once it outgrows the context: the arithmetic, apart from any model.

A conversation is a list of whole turns (a user message and what answered it). When the next message plus
room for its reply does not fit, the oldest whole turns are left out, never the system message nor the new
message. Leaving out turns changes the prompt's beginning, so the model processes all of it again (no cached
prefix holds it); hence, once anything must go, enough goes that the conversation fills at most half of its
space, and the next turns add to a prompt whose beginning stays put (llama.cpp's context shift dropped half
of the context for the same reason). The callers count tokens: with the model's tokenizer, or, where a server
does not tokenize, `estimated_tokens`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ponder.events import Message

# Room kept for a reply, at most. A reasoning model without a think budget needs room to think: R1-style
# models reason for hundreds to thousands of tokens on an everyday question, so 2,048 lets most replies
# finish, while a quarter of a small context still leaves the conversation three quarters of it. An answer
# without reasoning (a plain model, or --no-think) gets up to 1,024 tokens, about 750 words, or an eighth
# of a small context. A think budget asks for itself, plus room for the answer.
REASONING_ROOM = 2048
ANSWER_ROOM = 1024
SUMMARY_ROOM = 1024  # a /compact summary: at most this, or an eighth of the context


def reply_room(context: int, max_tokens: int, think_budget: int | None, reasoning: bool) -> int:
    """Tokens to keep free after the prompt for the reply. Never more than `max_tokens` (the reply cannot
    be longer) nor half the context (a budget beyond it cannot be kept and must not leave out everything)."""
    answer = min(ANSWER_ROOM, context // 8)
    if not reasoning:
        room = answer
    elif think_budget is not None:
        room = think_budget + answer
    else:
        room = max(min(REASONING_ROOM, context // 4), answer)
    return max(1, min(room, max_tokens, context // 2))


def summary_room(context: int, max_tokens: int) -> int:
    """Tokens a summary may take (`context` 0: a server that does not say)."""
    return max(1, min(SUMMARY_ROOM, context // 8 if context else SUMMARY_ROOM, max_tokens))


def turn_starts(roles: Sequence[str], first: int, last: int) -> list[int]:
    """Where the model's view may begin, from `first` to `last` (the new message, which it always sees):
    at each user message, so that only whole turns are left out."""
    return [i for i in range(first, last) if roles[i] == "user"] + [last]


def fitting_start(starts: Sequence[int], tokens: Callable[[int], int], context: int, room: int) -> int | None:
    """Where the view begins: `starts[0]` while the prompt (`tokens(start)`: its tokens from that start)
    fits with `room`; else the first start from which it fills at most half of the conversation's space
    (context - room), or failing that all of it; None when even the new message alone (`starts[-1]`) has no
    room. `tokens` may cost a tokenization: it is asked a few times (a binary search), each start once."""
    counted: dict[int, int] = {}

    def count(start: int) -> int:
        if start not in counted:
            counted[start] = tokens(start)
        return counted[start]

    space = context - room
    if count(starts[0]) <= space:
        return starts[0]
    for limit in (space // 2, space):
        found = first_within(starts, count, limit)
        if found is not None:
            return found
    return None


def first_within(starts: Sequence[int], count: Callable[[int], int], limit: int) -> int | None:
    """The first start whose prompt has at most `limit` tokens (the count falls as the start moves on)."""
    if count(starts[-1]) > limit:
        return None
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high) // 2
        if count(starts[middle]) <= limit:
            high = middle
        else:
            low = middle + 1
    return starts[low]


def estimated_tokens(prompt: str | Sequence[Message]) -> int:
    """A generous token count where the model cannot tokenize (a server), for ordinary text: a third of each
    run of ASCII letters (BPE vocabularies hold most English words whole, a leading space included), each
    digit and ASCII symbol one (Qwen's and Llama 3's tokenizers split numbers into digits or threes), four
    fifths of each other character's UTF-8 bytes (CJK, Cyrillic, emoji), an eighth more for luck, 8 per
    message for the template's markers. Text that defeats BPE (base64) counts more than this says: a reply's
    real count then scales what follows (ponder.conversation), and the server's own refusal makes room."""
    if isinstance(prompt, str):
        return _estimate(prompt)
    return sum(_estimate(message.content) + 8 for message in prompt)


_PIECES = re.compile(r"[A-Za-z]+|\s+|[\x00-\x7f]|[^\x00-\x7f]")


def _estimate(text: str) -> int:
    count = 0
    for match in _PIECES.finditer(text):
        piece = match.group()
        if piece.isascii() and piece[0].isalpha():
            count += -(-len(piece) // 3)
        elif piece[0].isspace():
            count += (len(piece) + 2) // 4  # a single space goes with the next word
        elif piece.isascii():
            count += 1
        else:
            count += -(-len(piece.encode("utf-8", "replace")) * 4 // 5)
    return count + count // 8
