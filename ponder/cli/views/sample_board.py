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
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        for width in (4, 11, 14):  # fixed, so the columns stand still from one frame to the next
            table.add_column(width=width, no_wrap=True)
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True)
        shown = [(i, row) for i, row in enumerate(self.rows)
                 if self.samples <= ALL_LINES or row.state in ("thinking", "answering")]
        for index, row in shown:
            answer = row.answer if row.answer is not None else ("no answer" if row.state == "done" else "")
            style = {"thinking": "dim", "answering": "", "done": "bold", "ended early": "dim", "waiting": "dim"}
            table.add_row(Text(f"#{index + 1}", style="dim"), Text(row.state, style=style[row.state]),
                          Text(_tokens(row.tokens) if row.tokens else "", justify="right"),
                          Text(visible(answer), style="bold green"),  # the model's: shown, never obeyed
                          Text(row.note, style="dim"))
        from rich.console import Group

        return Group(table, Text(visible(self.vote_line()), style="cyan"))

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
