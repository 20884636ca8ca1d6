"""What the live views cost the decoding threads: nothing imported mid-reply, no repaint of what did not
change, no thread woken on a timer for nothing. (Their speed itself: benchmarks/decode.py.)"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
import time

import pexpect

from ponder.cli.views.terminal import Terminal, Ticker


def terminal(stdout: io.StringIO | None = None) -> Terminal:
    return Terminal(None, stdout or io.StringIO(), io.StringIO(), False, True, False, True)


def test_the_first_answer_frame_imports_nothing():
    """The Markdown renderer's imports (markdown-it, pygments) are made before the model decodes: at the first
    frame they held the GIL while the model thread waited for it."""
    code = textwrap.dedent("""
        import io, sys
        from ponder.cli.views.render import TerminalRenderer
        from ponder.cli.views.terminal import Terminal
        renderer = TerminalRenderer(Terminal(None, io.StringIO(), io.StringIO(), False, True, False, True))
        before = set(sys.modules)
        renderer.answer("The answer is **84**, and $x^2$ is `code`.")
        renderer.finish(None)
        print(sorted(set(sys.modules) - before))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_an_answer_that_does_not_change_is_not_repainted():
    from ponder.cli.views.render import TerminalRenderer

    out = io.StringIO()
    renderer = TerminalRenderer(terminal(out))
    try:
        renderer.answer("A first line of the answer")
        shown = out.getvalue()
        assert "A first line of the answer" in shown  # drawn with the frame, not at the next tick
        time.sleep(4 / TerminalRenderer.FPS)  # ticks come and go: nothing new to draw
        assert out.getvalue() == shown
    finally:
        renderer.finish(None)


def test_the_status_line_moves_while_the_model_thinks_without_events():
    """Before the first token (a long prompt) nothing arrives: the ticker still moves the timer and spinner."""
    from ponder.cli.views.render import TerminalRenderer

    out = io.StringIO()
    renderer = TerminalRenderer(terminal(out))
    try:
        time.sleep(3 / TerminalRenderer.FPS)
        frames = out.getvalue().count("Thinking…")
        time.sleep(3 / TerminalRenderer.FPS)
        assert frames >= 1 and out.getvalue().count("Thinking…") > frames
    finally:
        renderer.finish(None)
    assert "Thinking…" not in out.getvalue().rsplit("\x1b[2K", 1)[-1]  # the live region is gone at the end


def test_the_reasoning_tail_is_wrapped_again_only_when_it_grew():
    from ponder.cli.views.render import TerminalRenderer

    renderer = TerminalRenderer(terminal())
    try:
        renderer.reasoning("Okay, 12 times 7. " * 40, 10)
        first = renderer._reasoning_tail(80)
        assert renderer._reasoning_tail(80).lines is first.lines  # unchanged: the same lines, not wrapped again
        renderer.reasoning("So 84.", 11)
        grown = renderer._reasoning_tail(80)
        assert grown.lines is not first.lines and "So 84." in "".join(s.text for s in grown.lines[-1])
        assert len(grown.lines) == TerminalRenderer.TAIL_LINES
    finally:
        renderer.finish(None)


def test_a_ticker_ticks_until_stopped_and_never_after():
    ticks: list[float] = []
    ticker = Ticker(lambda: ticks.append(time.monotonic()), 0.01)
    ticker.start()
    while len(ticks) < 3:
        time.sleep(0.01)
    ticker.stop()
    stopped = len(ticks)
    time.sleep(0.05)
    assert len(ticks) == stopped


def test_a_ticker_ends_once_its_tick_says_so():
    ticks: list[int] = []

    def tick() -> bool:
        ticks.append(1)
        return len(ticks) < 3

    ticker = Ticker(tick, 0.005)
    ticker.start()
    ticker._thread.join(timeout=10)
    assert not ticker._thread.is_alive() and len(ticks) == 3


def test_a_ticker_whose_tick_fails_on_a_closed_terminal_ends_quietly():
    failures = []
    threading.excepthook, previous = (lambda args: failures.append(args)), threading.excepthook
    try:
        calls = []

        def tick():
            calls.append(1)
            raise OSError(5, "Input/output error")

        ticker = Ticker(tick, 0.005)
        ticker.start()
        ticker._thread.join(timeout=10)
        assert not ticker._thread.is_alive() and calls == [1] and failures == []
    finally:
        threading.excepthook = previous


def test_sample_board_rows_keep_their_columns_and_are_drawn_again_only_after_an_event():
    from rich.console import Console

    from ponder.cli.views.sample_board import SampleBoard
    from ponder.events import ReasoningDelta, Reply, Stats
    from ponder.parallel import Skipped

    stats = Stats(prompt_tokens=9, reasoning_tokens=50, answer_tokens=13, time_to_first_token_s=0.1,
                  decode_tokens_per_s=10.0, thinking_s=1.0, total_s=2.0)
    board = SampleBoard(Terminal(None, io.StringIO(), io.StringIO(), False, False, False, True), 4)
    board.event(0, ReasoningDelta("x", 12345))
    board.event(1, Reply("", "so \\boxed{84}", "stop", stats))
    board.event(2, Reply("", "so \\boxed{1/2}", "length", stats))
    board.event(3, Skipped(40))
    drawn = board._render()
    assert board._render() is drawn  # no event since: the same lines
    out = io.StringIO()
    Console(file=out, width=100).print(drawn)
    lines = [line.rstrip() for line in out.getvalue().splitlines()]
    assert lines[:4] == ["#1    thinking      12,345 tokens",
                         "#2    done              63 tokens  84",
                         "#3    done              63 tokens  1/2  (length)",
                         "#4    ended early                       after 40 tokens"]  # as rich's Table had them
    assert lines[4].startswith("Vote (2 of 4 done): ")
    board.event(0, ReasoningDelta("x", 12346))
    assert board._render() is not drawn


def test_the_answer_now_key_is_read_without_polling_and_lets_go_at_once():
    """Enter on the controlling terminal sets `pressed`; leaving without a key returns at once (the listener
    waits on the key or a wake-up, with no timeout to poll on)."""
    script = textwrap.dedent("""
        import time
        from ponder.cli.views.answer_now import AnswerNowKey
        with AnswerNowKey() as key:
            print("active", key.active, flush=True)
            pressed = key.pressed.wait(60)
        print("pressed", pressed, flush=True)
        with AnswerNowKey() as key:
            print("listening", key._thread.is_alive(), flush=True)
            key.stop_listening()
            key._thread.join(10)
            print("stopped", not key._thread.is_alive(), flush=True)
    """)
    child = pexpect.spawn(sys.executable, ["-c", script], encoding="utf-8", timeout=60)
    try:
        child.expect("active True")
        child.send("\r")
        child.expect("pressed True")
        child.expect("listening True")
        child.expect("stopped True")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_an_urgent_item_wakes_the_consumer_at_once_where_others_wait_for_the_poll():
    """The parallel driver waits on the consumer's answer to a Decide: it must not wait for the next poll."""
    from ponder.threads import ModelThread

    answered = threading.Event()
    seen: list[str] = []

    def produce(cancel):
        yield "ordinary"
        yield "urgent"
        seen.append("answered" if answered.wait(60) else "not answered")  # (a poll of an hour never comes)
        yield "last"

    for item in ModelThread().iterate(produce, poll_s=3600, urgent=lambda item: item == "urgent"):
        seen.append(item)
        if item == "urgent":
            answered.set()
    assert seen == ["ordinary", "urgent", "answered", "last"]
