"""`ask --json` and `--jsonl` stopped by Ctrl-C, SIGTERM or SIGHUP: a script still gets a last object, with
what arrived, marked interrupted (it used to get nothing at all from --json, and --jsonl no done line)."""

from __future__ import annotations

import json
import signal

import pytest

from tests.support.cli import signal_when_said

# `ponder ask`, held (announced on stderr) after the third piece of its answer, so the signal comes mid-answer.
HELD = """
import sys, time
from ponder import exchange
from ponder.events import AnswerDelta
real = exchange.generate_reply
def generate_reply(*args, **kwargs):
    pieces = 0
    for event in real(*args, **kwargs):
        yield event
        pieces += isinstance(event, AnswerDelta)
        if pieces == 3:
            print("[held]", file=sys.stderr, flush=True)
            time.sleep(120)
exchange.generate_reply = generate_reply
sys.argv[0] = "ponder"
from ponder.__main__ import main
main()
"""


def stopped_ask(tiny_r1, output: str, signum: int) -> tuple[int, str]:
    code, out, _ = signal_when_said(HELD, ["ask", "What is 12*7?", "--model", tiny_r1, "--temperature", "0", output],
                                    b"[held]", signum)
    return code, out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_json_gets_one_object_with_what_arrived(tiny_r1, signum):
    code, out = stopped_ask(tiny_r1, "--json", signum)
    assert code == 128 + signum
    reply = json.loads(out)
    assert reply["interrupted"] is True and reply["finish_reason"] == "cancelled" and reply["stats"] is None
    assert reply["reasoning"].strip() and "12 × 7 = 84, so the answer is 84.".startswith(reply["answer"])
    assert reply["answer"] and reply["reasoning_end"] is None  # (its reasoning had ended: the answer had begun)


def test_jsonl_ends_with_a_done_line_that_adds_up_the_answer_lines(tiny_r1):
    code, out = stopped_ask(tiny_r1, "--jsonl", signal.SIGINT)
    assert code == 130
    lines = [json.loads(line) for line in out.splitlines()]
    done = lines[-1]
    assert done["type"] == "done" and done["interrupted"] is True and done["finish_reason"] == "cancelled"
    answer = "".join(line["text"] for line in lines if line["type"] == "answer")
    assert answer and done["answer"] == answer.lstrip()
    assert done["reasoning"] == "".join(line["text"] for line in lines if line["type"] == "reasoning")
