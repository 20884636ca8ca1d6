"""Separating `<think>` reasoning from the answer, incrementally; pulling out `\\boxed{}` answers."""

from __future__ import annotations

from typing import Literal

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

Kind = Literal["reasoning", "answer"]
Segment = tuple[Kind, str]


def _held_back(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that could be the start of `tag` (shorter than the tag). Such a
    suffix starts with the tag's first character: only those places are tried (called on every token)."""
    start = text.find(tag[0], max(len(text) - len(tag) + 1, 0))
    while start >= 0:
        if tag.startswith(text[start:]):
            return len(text) - start
        start = text.find(tag[0], start + 1)
    return 0


class ThinkSplitter:
    """Splits streamed model output into reasoning and answer.

    Chunk-invariant: any split of a string into chunks yields the same reasoning and
    answer as feeding it whole. Rules:
    - `starts_in_reasoning`: the prompt ended with "<think>\\n", so output begins inside
      the reasoning; a repeated opening tag there is dropped.
    - otherwise a `<think>` opens reasoning only if nothing but whitespace precedes it;
      any other text makes the whole output the answer.
    - `</think>` ends the reasoning; everything after it is answer, tags included.
    - the answer is kept exactly as written, leading blank line included: earlier turns go
      back to the model as its template renders them (front ends trim it for display).
    - leading whitespace of the reasoning is dropped; a partial tag at a chunk end is held
      back until the next chunk (or `flush`) decides it.
    - no `</think>` at all (output cut off): everything is reasoning.
    """

    def __init__(self, starts_in_reasoning: bool = True):
        self.state: Literal["start", "reasoning", "answer"] = (
            "reasoning" if starts_in_reasoning else "start"
        )
        self._buf = ""
        self._leading = True  # nothing of the reasoning emitted yet

    @property
    def in_reasoning(self) -> bool:
        return self.state == "reasoning"

    def answer_from_here(self) -> None:
        """What follows is answer: a server said the reasoning ended (it splits reasoning itself)."""
        self.state = "answer"

    def feed(self, text: str) -> list[Segment]:
        self._buf += text
        out: list[Segment] = []
        while self._step(out):
            pass
        return out

    def flush(self) -> list[Segment]:
        """End of output: whatever is held back is literal text of the current part."""
        out: list[Segment] = []
        text, self._buf = self._buf, ""
        if self.state == "reasoning" and self._leading:
            text = text.lstrip()
        if text:
            out.append(("answer" if self.state == "start" else self.state, text))
        return out

    def _step(self, out: list[Segment]) -> bool:
        """Consume what can be decided from the buffer; True to go round again."""
        buf = self._buf
        if self.state == "answer":
            self._emit(out, "answer", buf)
            self._buf = ""
            return False
        if self._leading:
            stripped = buf.lstrip()
            if stripped.startswith(OPEN_TAG):
                self._buf = stripped[len(OPEN_TAG):]
                self.state = "reasoning"
                return True
            if not stripped or OPEN_TAG.startswith(stripped):
                return False  # only whitespace or a partial opening tag so far: wait
            if self.state == "start":
                self.state = "answer"  # no reasoning: the whole output is the answer, as written
                return True
            self._buf = buf = stripped
        end = buf.find(CLOSE_TAG)
        if end >= 0:
            self._emit(out, "reasoning", buf[:end])
            self._buf = buf[end + len(CLOSE_TAG):]
            self.state = "answer"
            return True
        keep = _held_back(buf, CLOSE_TAG)
        self._emit(out, "reasoning", buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep:]
        return False

    def _emit(self, out: list[Segment], kind: Kind, text: str) -> None:
        if text:
            self._leading = False
            out.append((kind, text))


def split_reasoning(text: str, starts_in_reasoning: bool = True) -> tuple[str, str]:
    """Reasoning and answer of a complete output."""
    splitter = ThinkSplitter(starts_in_reasoning)
    parts = {"reasoning": "", "answer": ""}
    for kind, chunk in splitter.feed(text) + splitter.flush():
        parts[kind] += chunk
    return parts["reasoning"], parts["answer"]


def strip_reasoning(content: str) -> str:
    """What of an assistant turn goes back to the model: the text after the last `</think>`,
    untouched, as DeepSeek-R1's template does (`content.split('</think>')[-1]`)."""
    return content.rsplit(CLOSE_TAG, 1)[-1]


class AnswerAsShown:
    """Answer deltas as shown: without the whitespace the answer starts with (R1 writes a blank
    line after </think>; the history keeps it, since later turns send it back as written)."""

    def __init__(self) -> None:
        self._begun = False

    def __call__(self, text: str) -> str:
        if not self._begun:
            text = text.lstrip()
            self._begun = bool(text)
        return text


_BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), or None (also for an empty box)."""
    best: tuple[int, str] | None = None
    for command in _BOX_COMMANDS:
        start = text.rfind(command)
        while start >= 0:
            content = _box_content(text, start + len(command))
            if content is not None:
                if best is None or start > best[0]:
                    best = (start, content)
                break
            start = text.rfind(command, 0, start)
    return best[1].strip() or None if best is not None else None  # (an empty box answers nothing)


def _box_content(text: str, i: int) -> str | None:
    """The argument of a box command whose name ends at index i."""
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{" and text[j - 1] != "\\":
                depth += 1
            elif text[j] == "}" and text[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[i + 1 : j]
        return None  # unbalanced: no complete answer here
    if i < len(text) and text[i] == " ":  # `\boxed 5`: the argument runs to whitespace or `$`
        rest = text[i + 1 :].lstrip(" ")
        arg = rest.split(None, 1)[0] if rest.strip() else ""
        arg = arg.split("$", 1)[0]
        return arg or None
    return None
