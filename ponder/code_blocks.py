"""Code blocks of an answer, for pipelines (`ask -x`), JSON and chat's /copy.

The final extraction parses the answer as CommonMark (markdown-it-py, which rich uses too), so
that fences inside lists or quotes, longer fences around shorter ones and indented fences all
count as Markdown says. `CodeStream` follows the first block as the answer streams, a line at a
time, by CommonMark's fence rules for a block at the top level.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An opening fence: up to 3 spaces, 3 or more backticks or tildes, an info string (no backtick
# after backticks).
OPENING = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}(?=[^`]*$)|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class CodeBlock:
    lang: str  # the info string's first word ("" when there is none)
    text: str  # the code, each line ending in a newline (a cut-off block's last line perhaps not)
    closed: bool  # False: the answer ended inside the block (cut off)


def code_blocks(markdown: str) -> list[CodeBlock]:
    """Every fenced code block of `markdown`, in order."""
    from markdown_it import MarkdownIt

    lines = markdown.splitlines()
    blocks = []
    for token in MarkdownIt("commonmark").parse(markdown):
        if token.type != "fence":
            continue
        last = lines[token.map[1] - 1] if token.map and token.map[1] - 1 > token.map[0] else ""
        closed = _closes(last.lstrip(" >-*+0123456789.)"), token.markup)
        blocks.append(CodeBlock(_language(token.info), token.content, closed))
    return blocks


def pick(blocks: list[CodeBlock], lang: str | None = None, last: bool = False) -> CodeBlock | None:
    """The block `ask -x` prints: the first (or `last`), or the first in language `lang`."""
    if lang is not None:
        blocks = [b for b in blocks if b.lang.lower() == lang.lower()]
    if not blocks:
        return None
    return blocks[-1] if last else blocks[0]


class CodeStream:
    """The first top-level code block (in `lang`, if given) of text that arrives in pieces:
    `feed` returns the code lines each piece completes; `finish` what is left at the end."""

    def __init__(self, lang: str | None = None):
        self.lang = lang
        self.found = False  # an opening fence was seen
        self.closed = False  # and its closing fence
        self._fence = ""
        self._indent = 0
        self._partial = ""

    def feed(self, text: str) -> str:
        if self.closed:
            return ""
        *complete, self._partial = (self._partial + text).split("\n")
        return "".join(self._line(line) for line in complete)

    def finish(self) -> str:
        """The last line, when the answer ends without a newline (a cut-off block's, say)."""
        line, self._partial = self._partial, ""
        code = self._line(line) if line else ""
        return code[:-1]  # that line had no newline of its own

    def _line(self, line: str) -> str:
        if self.closed:
            return ""
        if not self.found:
            opening = OPENING.match(line)
            if opening and (self.lang is None or _language(opening["info"]).lower() == self.lang.lower()):
                self.found, self._fence, self._indent = True, opening["fence"], len(opening["indent"])
            return ""
        if _closes(line, self._fence):
            self.closed = True
            return ""
        return _dedent(line, self._indent) + "\n"


def _language(info: str) -> str:
    words = info.strip().split()
    return words[0].strip("{}.") if words else ""


def _closes(line: str, fence: str) -> bool:
    """Whether `line` closes a block opened by `fence`: the same character, at least as many,
    up to 3 spaces before and nothing but spaces after."""
    indent = len(line) - len(line.lstrip(" "))
    if not fence or indent > 3:
        return False
    rest = line[indent:]
    run = len(rest) - len(rest.lstrip(fence[0]))
    return run >= len(fence) and not rest[run:].strip()


def _dedent(line: str, indent: int) -> str:
    """A code line of an indented fence loses up to the fence's own indentation (CommonMark)."""
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, indent):]
