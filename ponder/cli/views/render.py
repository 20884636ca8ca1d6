"""Showing a reply: a live rich view on a terminal, plain text in a pipe.

Both take the same calls, so commands stream through either without knowing which. What the model
wrote reaches a terminal only through safe_text.visible; in a pipe it is the user's data, byte for byte.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

from ponder.cli.views.safe_text import visible
from ponder.cli.views.terminal import Terminal, Ticker, disable_echo
from ponder.events import Reply
from ponder.reasoning import AnswerAsShown

ReasoningMode = Literal["collapse", "show", "hide"]

DIM, RESET = "\x1b[2m", "\x1b[0m"


def thought_summary(seconds: float, tokens: int, ending: str = "") -> str:
    """"Thought for 3.2 s · 57 tokens", and how it ended when the model did not close it ("no answer")."""
    return f"Thought for {seconds:.1f} s · {tokens} tokens" + (f" ({ending})" if ending else "")


class Renderer(Protocol):
    def reasoning(self, text: str, tokens: int) -> None: ...
    def reasoning_done(self, seconds: float, tokens: int) -> None: ...
    def answer(self, text: str) -> None: ...
    def finish(self, reply: Reply | None) -> None:
        """The reply ended (reply is None when interrupted): leave the screen clean."""


class PlainRenderer:
    """For pipes: the answer alone on stdout, reasoning on stderr unless hidden."""

    def __init__(self, term: Terminal, show_reasoning: bool = True):
        self.out, self.err = term.stdout, term.stderr
        self.show_reasoning = show_reasoning
        self.dim = term.stderr_is_tty and term.color
        # A terminal is shown the model's control sequences, not steered by them (ask -x to a terminal too).
        self._out_safe = visible if term.stdout_is_tty else str
        self._err_safe = visible if term.stderr_is_tty else str
        self._answer_ends_line = True
        self._reasoning_ends_line = True
        self._shown = AnswerAsShown()

    def reasoning(self, text: str, tokens: int) -> None:
        if self.show_reasoning:
            shown = self._err_safe(text)
            self.err.write(f"{DIM}{shown}{RESET}" if self.dim else shown)
            self.err.flush()
            self._reasoning_ends_line = text.endswith("\n")

    def reasoning_done(self, seconds: float, tokens: int) -> None:
        if self.show_reasoning and not self._reasoning_ends_line:
            self.err.write("\n")
            self._reasoning_ends_line = True

    def answer(self, text: str) -> None:
        text = self._shown(text)
        if not text:
            return
        self.out.write(self._out_safe(text))
        self.out.flush()
        self._answer_ends_line = text.endswith("\n")

    def finish(self, reply: Reply | None) -> None:
        self.reasoning_done(0.0, 0)
        if not self._answer_ends_line:
            self.out.write("\n")
        self.out.flush()


class TerminalRenderer:
    """Live view: dimmed reasoning under a running timer, collapsed to a summary line when
    `</think>` arrives, then the answer as Markdown. The model's text is kept as it came and made
    visible where it is handed to rich (_print_dim, _reasoning_tail, _markdown_lines).

    Repaints are throttled (FPS, and a CPU budget) and only the last TAIL_LINES of the answer stay live:
    lines above them are printed once, so cost per frame stays small however long the reply.
    """

    FPS = 8  # enough to read along
    # Rendering shares the CPU (and the GIL) with decoding: after a frame that took t seconds,
    # wait at least RENDER_BUDGET_FACTOR * t, so rendering stays under ~2% of one core.
    RENDER_BUDGET_FACTOR = 50
    MAX_FRAME_GAP_S = 0.5  # the first frame pays for imports: never let that stall the view
    TAIL_LINES = 6
    SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, term: Terminal, mode: ReasoningMode = "collapse", reasoning_model: bool = True,
                 answer_key: bool = False):
        from rich.console import Console
        from rich.live import Live

        from ponder.cli.views.answer_now import KEY_LABEL

        self.mode = mode
        self._waiting_label = "Thinking…" if reasoning_model else "Generating…"
        self._key_label = f" · {KEY_LABEL}" if answer_key and reasoning_model else ""
        self.console = Console(file=term.stdout, force_terminal=True, no_color=not term.color, highlight=False)
        self._started = time.perf_counter()
        self._thinking = True
        self._reasoning = ""  # in "show" mode: only the part not yet printed
        self._thought: list[str] = []  # all of it, to show when no answer follows
        self._tokens = 0
        self._answer = ""
        self._block_start = 0  # the answer before this index is printed for good
        self._printed = 0  # rendered lines of the current block printed for good
        self._printed_any = False
        self._answer_lines: list = []  # rendered lines of the current block not yet printed
        self._next_frame = 0.0
        self._tail_key: tuple = ()  # what the reasoning tail was last wrapped from, and the lines it gave
        self._tail_lines: list = []
        _prepare_markdown(self.console)
        # Refreshed by the main thread after each answer frame; the ticker only keeps the status line's
        # spinner and timer moving while no answer shows (rich's own thread repaints unchanged lines too).
        self._live = Live(_LiveView(self), console=self.console, auto_refresh=False, transient=True,
                          redirect_stdout=False, redirect_stderr=False)
        self._ticker = Ticker(self._tick, 1 / self.FPS)
        self._restore_echo = disable_echo(term)
        try:
            self._live.start()
            self._ticker.start()
        except BaseException:
            self._restore_echo()
            raise

    # --- events -----------------------------------------------------------------

    def reasoning(self, text: str, tokens: int) -> None:
        self._tokens = tokens
        if self.mode == "hide":
            return
        self._thought.append(text)
        self._reasoning += text
        if self.mode == "show" and "\n" in text:
            done, _, rest = self._reasoning.rpartition("\n")
            self._reasoning = rest
            self._print_dim(done)
        elif len(self._reasoning) > 8192:  # the live tail needs only the end
            self._reasoning = self._reasoning[-4096:]

    def reasoning_done(self, seconds: float, tokens: int, ending: str = "") -> None:
        """The reasoning closed (or, with `ending`, stopped unclosed): in "collapse" mode it folds to a
        summary line, unless no answer follows: then what the model thought stays on screen."""
        if not self._thinking:
            return
        self._thinking = False
        if self.mode == "show" and self._reasoning.strip():
            self._print_dim(self._reasoning)
        elif self.mode == "collapse" and ending and "".join(self._thought).strip():
            self._print_dim("".join(self._thought).strip())
        self._reasoning = ""
        self._print_dim(thought_summary(seconds, tokens, ending))

    def answer(self, text: str) -> None:
        if self._thinking:  # a model that does not reason, or reasoning already closed
            self._thinking = False
        self._answer += text
        now = time.perf_counter()
        if now >= self._next_frame:
            self._render_answer(final=False)
            self._live.refresh()
            spent = time.perf_counter() - now
            gap = min(self.MAX_FRAME_GAP_S, max(1 / self.FPS, self.RENDER_BUDGET_FACTOR * spent))
            self._next_frame = now + gap

    def finish(self, reply: Reply | None) -> None:
        try:
            if reply is None and self._thinking and self._thought:  # stopped (Ctrl-C) mid-thought
                self.reasoning_done(time.perf_counter() - self._started, self._tokens, "stopped")
            elif reply is not None and self._thinking and reply.reasoning:
                self.reasoning_done(reply.stats.thinking_s, reply.stats.reasoning_tokens, "no answer")
            elif reply is not None and not reply.answer.strip() and self.mode == "collapse" and reply.reasoning.strip():
                self._print_dim(reply.reasoning.strip())  # closed, then nothing: show what it thought
            self._render_answer(final=True)
        finally:
            try:
                self._ticker.stop()
            finally:
                try:
                    self._live.stop()
                finally:  # even when stopping the view failed (a closed stdout): keys must echo again
                    self._restore_echo()

    def _tick(self) -> bool:
        """On the ticker's thread: repaint the status line (and the reasoning's tail) until the answer shows."""
        if not self._thinking:
            return False  # (it never comes back: the ticker ends)
        self._live.refresh()
        return True

    # --- drawing ----------------------------------------------------------------

    def _print_dim(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(visible(text.rstrip("\n")), style="dim"))

    def _render_answer(self, final: bool) -> None:
        """Print what is settled, keep the rest live. Complete Markdown blocks (up to a blank
        line outside a code fence) are rendered and printed once, so each frame renders only
        the block being written; within a long block, all but its last TAIL_LINES are printed."""
        text = self._answer
        cut = len(text) if final else _settled_blocks_end(text, self._block_start)
        if cut > self._block_start:
            self._print_lines(self._markdown_lines(text[self._block_start : cut])[self._printed :])
            self._block_start, self._printed = cut, 0
        lines = self._markdown_lines(text[self._block_start :]) if not final else []
        stable = max(self._printed, len(lines) - self.TAIL_LINES)
        if stable > self._printed:
            self._print_lines(lines[self._printed : stable])
            self._printed = stable
        self._answer_lines = lines[self._printed :]

    def _markdown_lines(self, source: str) -> list:
        from rich.markdown import Markdown

        from ponder.latex import render_math

        # hyperlinks=False: a link shows where it goes, "text (url)", rather than hiding a model's URL under its text.
        markdown = Markdown(visible(render_math(source)), hyperlinks=False)
        lines = self.console.render_lines(markdown, pad=False, new_lines=False)
        blank = lambda line: not any(seg.text.strip() for seg in line)  # noqa: E731
        while lines and blank(lines[-1]):
            lines.pop()
        while lines and blank(lines[0]):
            lines.pop(0)
        return lines

    def _print_lines(self, lines: list) -> None:
        if not lines:
            return
        if self._printed == 0 and self._printed_any:
            self.console.print()  # the blank line Markdown puts between blocks
        self.console.print(_Lines(lines))
        self._printed_any = True

    def _status(self):
        from rich.text import Text

        elapsed = time.perf_counter() - self._started
        frame = self.SPINNER[int(elapsed * self.FPS) % len(self.SPINNER)]
        return Text(f"{frame} {self._waiting_label} {elapsed:.1f} s · {self._tokens} tokens{self._key_label}",
                    style="cyan")

    def _reasoning_tail(self, width: int):
        """The last TAIL_LINES lines of the reasoning, wrapped again only when it grew (a slow model's ticks
        mostly find it unchanged), and from its last few lines' worth of text only."""
        from rich.segment import Segment
        from rich.text import Text

        key = (len(self._thought), len(self._reasoning), width)
        if key != self._tail_key:
            text = Text(visible(self._reasoning.lstrip("\n")[-(width * (self.TAIL_LINES + 1)) :]), style="dim")
            lines = text.wrap(self.console, width)
            dim = self.console.get_style("dim")  # Text.render leaves the text's own style to its caller
            self._tail_lines = [list(Segment.apply_style(line.render(self.console), dim))
                                for line in lines[-self.TAIL_LINES :]]
            self._tail_key = key
        return _Lines(self._tail_lines)


def _prepare_markdown(console) -> None:
    """Import and run the Markdown renderer (and the LaTeX converter) once, before the model decodes: at the
    first answer frame, their imports held the GIL for 0.1-0.3 s while the model thread waited for it."""
    from rich.markdown import Markdown

    from ponder.latex import render_math

    console.render_lines(Markdown(render_math("*a* `b` $x^2$"), hyperlinks=False), pad=False, new_lines=False)


def _settled_blocks_end(text: str, start: int) -> int:
    """Index just past the last blank line after `start` that lies outside a code fence
    (`start` if none): Markdown before it can no longer change as text arrives."""
    end = start
    in_fence = False
    position = start
    for line in text[start:].splitlines(keepends=True):
        position += len(line)
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and not line.strip() and line.endswith("\n") and text[position:].strip():
            end = position
    return end


class _LiveView:
    """What the live region shows now; drawn by rich's refresh thread."""

    def __init__(self, renderer: TerminalRenderer):
        self.r = renderer

    def __rich_console__(self, console, options):
        r = self.r
        if r._thinking:
            yield r._status()
            if r.mode != "hide" and r._reasoning.strip():
                yield r._reasoning_tail(options.max_width)
        elif r._answer_lines:
            yield _Lines(r._answer_lines)


class _Lines:
    """Pre-rendered lines of segments, printed as they are."""

    def __init__(self, lines):
        self.lines = lines

    def __rich_console__(self, console, options):
        from rich.segment import Segment

        for line in self.lines:
            yield from line
            yield Segment.line()


OutputFormat = Literal["text", "json", "jsonl"]


def make_renderer(term: Terminal, mode: ReasoningMode, info, output: OutputFormat = "text",
                  answer_key: bool = False) -> Renderer:
    """The renderer for where stdout goes and what format was asked for. `info`: the ModelInfo;
    `answer_key`: the live line names the key that ends the reasoning (AnswerNowKey)."""
    if output != "text":
        from ponder.cli.views.json_output import JsonlRenderer, JsonRenderer

        return (JsonRenderer if output == "json" else JsonlRenderer)(term.stdout, info)
    if term.stdout_is_tty:
        return TerminalRenderer(term, mode, info.chat.reasoning, answer_key)
    return PlainRenderer(term, show_reasoning=mode != "hide")
