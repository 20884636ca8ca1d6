"""Samples drawn together, shown on a terminal: a line per sample (tokens so far, thinking or answering,
its boxed answer once done) and the running vote under them. Without a terminal, a line per finished
sample, as before."""

from __future__ import annotations

from dataclasses import dataclass

from ponder.cli.views.safe_text import visible
from ponder.events import AnswerDelta, ReasoningDelta, ReasoningDone, Reply
from ponder.parallel import Skipped
from ponder.solve import majority_vote

ALL_LINES = 16  # more samples than this: lines for the running ones only, and counts for the rest


@dataclass
class _Sample:
    state: str = "waiting"  # thinking, answering, done, ended early
    reasoning_tokens: int = 0
    answer_pieces: int = 0  # answer deltas so far: about its tokens, until the reply gives the count
    answer: str | None = None  # the boxed answer, once done
    note: str = ""

    @property
    def tokens(self) -> int:
        return self.reasoning_tokens + self.answer_pieces


class SampleBoard:
    def __init__(self, term, samples: int, lines: bool = True):
        """`lines`: without a terminal, print a line per finished sample (else nothing)."""
        self.term, self.samples, self.lines = term, samples, lines
        self.rows = [_Sample() for _ in range(samples)]
        self._live = None
        self._vote = majority_vote([])  # the finished answers' vote, counted again only when one more finishes
        self._changes = 0  # events so far: the board is drawn again only after one
        self._drawn: tuple | None = None

    def __enter__(self) -> SampleBoard:
        if self.term.stderr_is_tty:
            from rich.console import Console
            from rich.live import Live

            from ponder.cli.views.terminal import disable_echo

            console = Console(file=self.term.stderr, no_color=not self.term.color, highlight=False)
            # Drawn on each refresh (8 a second), not on each of the many events between.
            self._live = Live(console=console, get_renderable=self._render, refresh_per_second=8, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._restore_echo = disable_echo(self.term)
            try:
                self._live.start()
            except BaseException:
                self._restore_echo()
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            try:
                self._live.stop()
            finally:  # even when stopping the board failed (a closed stderr): keys must echo again
                self._restore_echo()

    def event(self, index: int, event) -> None:
        self._changes += 1
        row = self.rows[index]
        if isinstance(event, ReasoningDelta):
            row.state, row.reasoning_tokens = "thinking", event.tokens
        elif isinstance(event, ReasoningDone):
            row.state, row.reasoning_tokens = "answering", event.tokens
        elif isinstance(event, AnswerDelta):
            row.state = "answering"
            row.answer_pieces += 1
        elif isinstance(event, Reply):
            self._finished(index, event)
        elif isinstance(event, Skipped):
            row.state, row.note = "ended early", f"after {_tokens(event.tokens)}" if event.tokens else "not started"
            self._count_votes()
            if self._live is None and self.lines:
                print(f"sample {index + 1}/{self.samples}: ended early", file=self.term.stderr)

    def _finished(self, index: int, reply: Reply) -> None:
        from ponder.reasoning import extract_boxed

        row = self.rows[index]
        row.state, row.answer = "done", extract_boxed(reply.answer)
        row.reasoning_tokens, row.answer_pieces = reply.stats.reasoning_tokens, reply.stats.answer_tokens
        row.note = "" if reply.finish_reason == "stop" else f"({reply.finish_reason})"
        self._count_votes()
        if self._live is None and self.lines:
            shown = row.answer if row.answer is not None else "(no answer)"
            print(f"sample {index + 1}/{self.samples}: {shown}", file=self.term.stderr)  # (stderr: not a terminal)

    def _render(self):
        """The rows and the vote line, built again only after an event changed them (rich draws this 8 times a
        second, on its own thread). Plain lines in fixed columns: a rich Table took ~2 ms a frame for 8 rows."""
        if self._drawn is not None and self._drawn[0] == self._changes:
            return self._drawn[1]
        from rich.cells import cell_len
        from rich.console import Group
        from rich.text import Text

        shown = [(i, row) for i, row in enumerate(self.rows)
                 if self.samples <= ALL_LINES or row.state in ("thinking", "answering")]
        answers = [visible(row.answer if row.answer is not None else ("no answer" if row.state == "done" else ""))
                   for _, row in shown]  # (the model's: shown, never obeyed)
        width = max(map(cell_len, answers), default=0)  # the notes line up after the widest answer
        style = {"thinking": "dim", "answering": "", "done": "bold", "ended early": "dim", "waiting": "dim"}
        rows = Text(no_wrap=True, overflow="ellipsis")
        for (index, row), answer in zip(shown, answers):
            rows.append(f"#{index + 1}".ljust(4), "dim").append("  ")
            rows.append(row.state.ljust(11), style[row.state]).append("  ")
            rows.append((_tokens(row.tokens) if row.tokens else "").rjust(14) + "  ")
            rows.append(answer + " " * (width - cell_len(answer)), "bold green").append("  ")
            rows.append(row.note + "\n", "dim")
        rows.rstrip()
        board = Group(rows, Text(visible(self.vote_line()), style="cyan")) if shown else Text(
            visible(self.vote_line()), style="cyan")
        self._drawn = (self._changes, board)
        return board

    def _count_votes(self) -> None:
        """On the calling thread: math-verify's timeouts work only on the main one, not rich's refresh thread."""
        self._vote = majority_vote([row.answer for row in self.rows if row.state == "done"])

    def vote_line(self) -> str:
        done = [row.answer for row in self.rows if row.state == "done"]
        counts = {state: sum(row.state == state for row in self.rows)
                  for state in ("thinking", "answering", "waiting", "ended early")}
        vote = self._vote
        parts = [", ".join(f"{answer} ×{count}" for answer, count in vote.counts) or "no answer yet"]
        if vote.missing:
            parts.append(f"{vote.missing} without an answer")
        running = counts["thinking"] + counts["answering"]
        if running:
            parts.append(f"{running} running")
        if counts["waiting"]:
            parts.append(f"{counts['waiting']} waiting")
        if counts["ended early"]:
            parts.append(f"{counts['ended early']} ended early")
        return f"Vote ({len(done)} of {self.samples} done): " + " · ".join(parts)


def _tokens(count: int) -> str:
    return f"{count:,} token" + ("" if count == 1 else "s")
