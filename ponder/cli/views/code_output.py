"""`ask -x`: the code of one block of the answer on stdout and nothing else, for pipelines.

The first block (or the first in `--lang`) streams a line at a time as it arrives, so that
`ponder ask -x … | head` sees lines early; the last (`--extract-last`) can only be known at the
end. The final word is CommonMark's (ponder.code_blocks): a block the line-by-line stream could
not see (inside a list, say) is printed at the end. Reasoning goes where `ask` sends it in a pipe;
on a terminal, collapsed reasoning is one summary line on stderr. Code printed to a terminal is
shown with its control sequences visible; into a pipe or a file it goes byte for byte.
"""

from __future__ import annotations

from ponder.cli.views.render import DIM, RESET, PlainRenderer, ReasoningMode, thought_summary
from ponder.cli.views.terminal import Terminal
from ponder.code_blocks import CodeStream, code_blocks, pick
from ponder.errors import PonderError
from ponder.events import Reply


class AloneRenderer(PlainRenderer):
    """A view that prints one thing of the answer alone on stdout (`ask -x`, `ask --schema`): reasoning where
    `ask` sends it in a pipe; on a terminal, collapsed reasoning is one summary line on stderr."""

    def __init__(self, term: Terminal, mode: ReasoningMode):
        collapsed_on_terminal = mode == "collapse" and term.stderr_is_tty
        super().__init__(term, show_reasoning=mode == "show" or (mode == "collapse" and not collapsed_on_terminal))
        self._summary = collapsed_on_terminal
        self.error: PonderError | None = None  # for the command to raise once the reply is logged

    def reasoning_done(self, seconds: float, tokens: int) -> None:
        super().reasoning_done(seconds, tokens)
        if self._summary and tokens:
            line = thought_summary(seconds, tokens)
            self.err.write(f"{DIM}{line}{RESET}\n" if self.dim else line + "\n")
            self.err.flush()

    def _write(self, text: str) -> None:
        if text:
            self.out.write(self._out_safe(text))
            self.out.flush()


class CodeRenderer(AloneRenderer):
    def __init__(self, term: Terminal, mode: ReasoningMode, lang: str | None = None, last: bool = False):
        super().__init__(term, mode)
        self._lang, self._last = lang, last
        self._stream = None if last else CodeStream(lang)
        self.cut_off = False  # the block had no closing fence: what arrived was printed, exit 1

    def answer(self, text: str) -> None:
        if self._stream is not None:
            self._write(self._stream.feed(text))

    def finish(self, reply: Reply | None) -> None:
        PlainRenderer.reasoning_done(self, 0.0, 0)  # ends the reasoning's line
        if reply is None:  # interrupted: what streamed stays
            self.out.flush()
            return
        if self._stream is not None and self._stream.found:
            self._write(self._stream.finish())
            self.cut_off = not self._stream.closed
        else:
            block = pick(code_blocks(reply.answer), self._lang, self._last)
            if block is None:
                what = f"no {self._lang} code block" if self._lang else "no code block"
                self.error = PonderError(f"the answer has {what}")
                return
            self._write(block.text)
            self.cut_off = not block.closed
        if self.cut_off:  # (the token limit's doing only where the reply ran into it)
            why = (" (--max-tokens raises the limit)" if reply.finish_reason == "length"
                   else ": the model ended its answer without closing it")
            self.err.write(f"ponder: warning: the code block was cut off before its closing fence{why}\n")
            self.err.flush()
