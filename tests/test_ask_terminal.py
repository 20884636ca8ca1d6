"""`ponder ask` on a real terminal (a pty), as a person sees it."""

from __future__ import annotations

import json
import re
import time

import pexpect
import pytest

from tests.support.cli import TmuxSession, final_screen, ponder_env, run_ponder, spawn_in_pty, strip_ansi

FOREGROUND_OR_BACKGROUND = {str(n) for n in [*range(30, 39), *range(40, 49), *range(90, 98), *range(100, 108)]}


def test_reasoning_collapses_to_a_summary_and_answer_stays(tiny_r1):
    screen = final_screen("ask", "--model", tiny_r1, "What is 12*7?")
    assert "EXIT=0" in screen
    assert "Thought for " in screen and " tokens" in screen
    assert "12 × 7 = 84, so the answer is 84." in screen  # \boxed{84} rendered (bold) for a terminal
    assert "10*7 = 70" not in screen  # collapsed: the reasoning itself is gone
    assert "Thinking…" not in screen


def test_show_reasoning_keeps_it(tiny_r1):
    screen = final_screen("ask", "--model", tiny_r1, "--show-reasoning", "What is 12*7?")
    assert "Okay, 12 times 7. 10*7 = 70 and 2*7 = 14, so 70 + 14 = 84." in screen
    assert screen.index("10*7 = 70") < screen.index("Thought for ") < screen.index("the answer is")


def test_answer_renders_as_markdown_with_highlighted_code(tiny_r1):
    child = spawn_in_pty("ask", "--model", tiny_r1, "Write hello world in Python.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    raw = child.before
    assert "\x1b[" in raw  # styled for a terminal
    text = strip_ansi(raw)
    assert 'print("hello world")' in text
    assert "```" not in text  # the fence is rendered, not shown


def test_dimmed_reasoning_is_shown_while_it_streams(tiny_r1_random):
    """The random model never writes </think>: it reasons until stopped (its loops left alone), so
    the live view draws its reasoning however fast the machine."""
    args = ("ask", "--model", tiny_r1_random, "--temperature", "0", "--on-loop", "continue", "What is 12*7?")
    child = spawn_in_pty(*args, "--max-tokens", "5000")
    # A frame of the live view: the status line with its token count, then the reasoning, dimmed.
    child.expect(r"Thinking… [\d.]+ s · (\d+) tokens[^\r\n]*\r\n\x1b\[2m([^\x1b\s][^\x1b\r\n]*)")
    tokens, shown = int(child.match.group(1)), child.match.group(2).strip()
    child.sendintr()
    child.expect(pexpect.EOF)
    # Greedy decoding writes the same reasoning again; with room for tokens drawn after the count.
    reference = run_ponder(*args, "--max-tokens", str(2 * tokens + 16), "--json")
    assert shown in json.loads(reference.stdout)["reasoning"]


def test_no_color_is_honoured(tiny_r1):
    child = spawn_in_pty("ask", "--model", tiny_r1, "What is 2+2?", env=ponder_env(TERM="xterm-256color", NO_COLOR="1"))
    child.expect(pexpect.EOF)
    raw = child.before
    colours = [
        params for params in re.findall(r"\x1b\[([0-9;]*)m", raw)
        if any(p in FOREGROUND_OR_BACKGROUND for p in params.split(";"))
    ]
    assert colours == []  # NO_COLOR removes colour; dim and bold are styles and stay, as the spec allows
    assert "The answer is" in strip_ansi(raw)


def test_smollm2_streams_text_on_a_terminal(smollm2):
    child = spawn_in_pty("ask", "--model", smollm2, "--max-tokens", "40", "--seed", "2", "Tell me about cats.")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert len(strip_ansi(child.before).split()) >= 5


def test_ctrl_c_stops_promptly_and_leaves_terminal_clean(smollm2):
    child = spawn_in_pty("ask", "--model", smollm2, "--max-tokens", "5000", "--seed", "4", "Write a very long story.")
    child.expect("Generating…")
    child.expect(r"[a-z]+ [a-z]+ [a-z]+ [a-z]+")  # words of the story are streaming
    sent = time.monotonic()
    child.sendintr()
    child.expect(pexpect.EOF, timeout=10)
    stopped_after = time.monotonic() - sent
    child.close()
    assert child.exitstatus == 130
    assert stopped_after < 5
    assert "interrupted" in child.before
    assert "Traceback" not in child.before
    assert "\x1b[?25h" in child.before  # the cursor is shown again


def test_ctrl_c_while_loading_exits_at_once(smollm2):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    # A 64k-token context makes loading take a while (llama.cpp clears its whole KV cache).
    started = time.monotonic()
    LlamaCppModel(smollm2, LoadOptions(context=65536)).close()
    loading_s = time.monotonic() - started  # on this machine, now

    child = spawn_in_pty("ask", "--model", smollm2, "--ctx", "65536", "Write a very long story.")
    child.expect("Loading")
    child.sendintr()
    sent = time.monotonic()
    child.expect(pexpect.EOF, timeout=10)
    stopped_after = time.monotonic() - sent
    child.close()
    assert child.exitstatus == 130
    assert "Generating…" not in child.before  # the live view of a reply never started
    assert stopped_after < loading_s / 2  # at once, not once the load is done
    assert "Traceback" not in child.before and "Exception ignored" not in child.before


def test_long_answer_on_terminal_loses_and_repeats_nothing(smollm2):
    """The live view prints stable lines once and repaints only the tail: the final
    transcript must hold the same words as the pipe's plain answer, in order, once."""
    # (seeded: the two runs write the same text, speculation's guesses chosen from the text alone)
    args = ("ask", "--model", smollm2, "--max-tokens", "250", "--seed", "5", "--temperature", "0.8",
            "Tell me a story about a lighthouse keeper.")
    from tests.support.cli import run_ponder

    plain = run_ponder(*args).stdout.decode()
    screen = final_screen(*args, cols=80, rows=15, scrollback=True)
    words = lambda text: re.findall(r"[A-Za-z']+", text)  # Markdown styling changes symbols, not words
    shown = words(screen.split("EXIT=")[0].split("ponder: warning")[0])
    expected = words(plain)
    assert len(expected) > 60
    assert shown[-len(expected):] == expected


STORY_TOKENS = 300


@pytest.fixture(scope="module")
def story(smollm2):
    """The arguments of a long story, and the words of its first STORY_TOKENS tokens."""
    args = ("ask", "--model", smollm2, "--seed", "4", "Write a very long story.")
    result = run_ponder(*args, "--max-tokens", str(STORY_TOKENS), timeout=600)  # minutes on a busy machine
    assert f"stopped after {STORY_TOKENS} tokens".encode() in result.stderr  # the story goes on
    return args, result.stdout.decode().split()


# Words on screen before the Ctrl-C: all in the live region, or more than its TAIL_LINES hold.
@pytest.mark.parametrize("words", [10, 100])
def test_ctrl_c_leaves_no_stale_line_on_screen(story, words):
    """The terminal's "^C" echo used to shift the cursor inside the live region, which then
    left a copy of a line behind: what the screen shows must be exactly the start of the answer."""
    args, full = story
    session = TmuxSession(*args, "--max-tokens", "5000")
    try:
        session.wait_for(r"\s+".join(map(re.escape, full[:words])), timeout=300)  # the answer reached that word
        session.keys("C-c")
        screen = session.wait_for(r"EXIT=\d+")
    finally:
        session.close()
    assert "ponder: interrupted\nEXIT=130" in screen  # stopped by the Ctrl-C, not finished
    shown = screen.split("ponder: interrupted")[0].split()
    assert len(shown) >= words and " ".join(full).startswith(" ".join(shown))  # the last word may be cut


def test_a_reply_cut_off_while_thinking_keeps_its_reasoning_on_screen_and_says_why(tiny_r1):
    screen = final_screen("ask", "--model", tiny_r1, "--temperature", "0", "--max-tokens", "12", "What is 12*7?")
    assert "EXIT=3" in screen  # no answer: not a success
    assert "Okay, 12 times 7." in screen  # what the model thought, not folded away
    assert re.search(r"Thought for [0-9.]+ s · 12 tokens \(no answer\)", screen)
    assert "ponder: no answer: the token budget ran out while the model was still thinking" in screen


def test_ctrl_c_while_thinking_shows_what_was_thought(smollm2):
    # --on-loop continue: SmolLM2's story repeats itself about when Ctrl-C comes, and loop rescue would end
    # the reasoning first (a race that made this test fail one run in five).
    child = spawn_in_pty("ask", "--model", smollm2, "--model-kind", "reasoning", "--max-tokens", "2000", "--seed", "1",
                         "--on-loop", "continue", "Write a long story about a dragon.")
    # (not a clock: on a busy machine 2.3 s once held no token at all, and then nothing was thought to show)
    child.expect(r"Thinking… [0-9.]+ s · ([2-9]\d|\d{3,}) tokens", timeout=120)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    text = strip_ansi(child.before)
    assert child.exitstatus == 130
    assert re.search(r"Thought for [0-9.]+ s · \d+ tokens \(stopped\)", text)
    assert "dragon" in text.lower() or len(text.split("Thought for")[0].split()) > 5  # the reasoning itself, shown


def test_enter_while_thinking_ends_the_reasoning_and_the_model_answers(smollm2):
    # (600 tokens in all: what follows Enter is an answer to the end of them, which a loaded machine takes minutes for)
    child = spawn_in_pty("ask", "--model", smollm2, "--model-kind", "reasoning", "--max-tokens", "600", "--seed", "1",
                         "--stats", "--on-loop", "continue", "Write a long story about a dragon.")
    child.expect(r"Thinking… [0-9.]+ s · ([2-9]\d|\d{3,}) tokens · Enter: answer now", timeout=120)
    child.send("\r")
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    text = strip_ansi(child.before)
    assert "reasoning end: user" in text  # ended by the key, not by the model or the token budget
    assert re.search(r"reasoning (\d+) tokens", text) and int(re.search(r"reasoning (\d+) tokens", text)[1]) < 500
