"""Every command that runs a model writes through the Terminal it is handed: run in-process with
swapped streams, solve, batch and ask put all their output there and none on the process's own."""

from __future__ import annotations

import io
import json
import os

import pytest

from ponder.cli.app import main
from ponder.cli.views.terminal import Terminal


@pytest.fixture(autouse=True)
def own_settings(monkeypatch, tmp_path):
    """No config file, a history of the test's own, no PONDER_* variable from outside."""
    for name in [name for name in os.environ if name.startswith("PONDER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PONDER_CONFIG", str(tmp_path / "config.toml"))
    monkeypatch.setenv("PONDER_DATA_DIR", str(tmp_path / "data"))


def ponder(capfd, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """`ponder ARGS` in-process on a Terminal of in-memory streams: (exit code, stdout, stderr).
    Fails if anything reached the real stdout or stderr, whether through Python or the descriptors."""
    term = Terminal(io.BytesIO(stdin), io.StringIO(), io.StringIO(), False, False, False, False)
    with pytest.raises(SystemExit) as exit:
        main(list(args), term=term)
    leaked = capfd.readouterr()
    assert (leaked.out, leaked.err) == ("", "")
    return exit.value.code, term.stdout.getvalue(), term.stderr.getvalue()


def test_solve_writes_answer_reasoning_and_closing_lines_to_the_terminal(tiny_r1, capfd):
    code, out, err = ponder(capfd, "solve", "--model", tiny_r1, "--stats", "What is 12*7?")
    assert code == 0, err
    assert "\\boxed{84}" in out and out.endswith("\nAnswer: 84\n")  # the reply, then the final line
    assert "decode" in err and "tokens/s" in err  # --stats
    assert "10*7 = 70" in err  # the reasoning, on stderr in a pipe


def test_solve_samples_and_vote_go_to_the_terminal(tiny_r1, capfd):
    code, out, err = ponder(capfd, "solve", "--model", tiny_r1, "--samples", "2", "--seed", "1", "What is 12*7?")
    assert code == 0, err
    assert out == "Answer: 84\nVotes (2 samples): 84 ×2\n"
    assert "sample 1/2: 84\n" in err and "sample 2/2: 84\n" in err


def test_solve_answer_only(tiny_r1, capfd):
    assert ponder(capfd, "solve", "--model", tiny_r1, "--answer-only", "What is 12*7?")[:2] == (0, "84\n")


def test_an_error_line_goes_to_the_terminal(tiny_r1, capfd):
    code, out, err = ponder(capfd, "solve", "--model", tiny_r1, "--answer-only", "Write hello world in Python.")
    assert (code, out) == (1, "")
    assert err.startswith("ponder: error: the model gave no \\boxed{} answer\n")


def test_batch_reads_tasks_from_the_terminal_and_writes_results_and_accuracy_to_it(tiny_r1, capfd):
    task = json.dumps({"id": 1, "problem": "What is 12*7?", "answer": "84"}).encode()
    code, out, err = ponder(capfd, "batch", "--model", tiny_r1, stdin=task + b"\n")
    assert code == 0, err
    result = json.loads(out)
    assert (result["id"], result["samples"][0]["boxed"], result["pass@1"]) == (1, "84", 1.0)
    assert err == "accuracy (pass@1): 100.0% over 1 problems\n"


def test_ask_closing_report_goes_to_the_terminal(tiny_r1, capfd):
    code, out, err = ponder(capfd, "ask", "--model", tiny_r1, "--stats", "What is 12*7?")
    assert code == 0, err
    assert "\\boxed{84}" in out
    assert err.rstrip("\n").splitlines()[-1].startswith("prompt ")  # the --stats line closes stderr

    code, out, err = ponder(capfd, "ask", "--model", tiny_r1, "--max-tokens", "4", "--hide-reasoning", "What is 12*7?")
    assert (code, out) == (3, "")  # cut off while reasoning: no answer
    assert err == ("ponder: warning: stopped after 4 tokens (the --max-tokens budget or the context is used up)\n"
                   "ponder: no answer: the token budget ran out while the model was still thinking\n")
