"""`ponder solve`, `--json`/`--jsonl` and `ponder batch` through the real tiny R1 model."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.support.cli import final_screen, ponder_env, run_ponder

QUADRATIC = "Find all x with x^2 - 5x + 6 = 0"


def test_answer_only_prints_the_boxed_answer(tiny_r1):
    result = run_ponder("solve", "--model", tiny_r1, "--answer-only", "What is 12*7?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"84\n"


def test_answer_only_without_a_box_exits_1(tiny_r1):
    result = run_ponder("solve", "--model", tiny_r1, "--answer-only", "Write hello world in Python.")
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"no \\boxed{} answer" in result.stderr and b"Traceback" not in result.stderr


def test_solve_in_a_pipe_shows_answer_then_the_final_line(tiny_r1):
    result = run_ponder("solve", "--model", tiny_r1, QUADRATIC)
    assert result.returncode == 0
    assert result.stdout.decode() == "The roots are $x = 2$ and $x = 3$: \\boxed{\\{2, 3\\}}\nAnswer: \\{2, 3\\}\n"
    assert "Factor the quadratic" in result.stderr.decode()


def test_samples_vote(tiny_r1):
    result = run_ponder("solve", "--model", tiny_r1, "--samples", "3", "--seed", "1", QUADRATIC)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "Answer: \\{2, 3\\}\nVotes (3 samples): \\{2, 3\\} ×3\n"
    assert result.stderr.decode().count("sample ") == 3


def test_solve_on_a_terminal_renders_latex_and_a_prominent_answer(tiny_r1):
    screen = final_screen("solve", "--model", tiny_r1, QUADRATIC)
    assert "EXIT=0" in screen
    assert "The roots are x = 2 and x = 3: {2, 3}" in screen  # LaTeX made readable
    assert re.search(r"╭─ Answer ─+╮\n│ {2, 3} +│", screen)  # the panel
    assert "\\boxed" not in screen and "$" not in screen


REPLY_KEYS = {"model", "backend", "reasoning", "answer", "boxed", "code", "finish_reason", "reasoning_end", "error",
              "stats"}
STATS_KEYS = {"prompt_tokens", "speculation", "prefilled_tokens", "reasoning_tokens", "answer_tokens", "time_to_first_token_s", "tokens_per_s", "thinking_s",
              "total_s", "peak_memory_bytes", "route"}


def test_ask_json_shape(tiny_r1):
    result = run_ponder("ask", "--model", tiny_r1, "--json", "What is 12*7?")
    assert result.returncode == 0
    payload = json.loads(result.stdout)
    assert set(payload) == REPLY_KEYS and set(payload["stats"]) == STATS_KEYS
    assert payload["boxed"] == "84" and payload["finish_reason"] == "stop" and payload["backend"] == "llama.cpp"
    assert payload["answer"] == "12 × 7 = 84, so the answer is \\boxed{84}."
    assert payload["reasoning"].startswith("Okay, 12 times 7.")
    assert result.stderr == b""  # the reasoning is in the JSON, not on stderr


def test_ask_jsonl_events(tiny_r1):
    result = run_ponder("ask", "--model", tiny_r1, "--jsonl", "What is 2+2?")
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    types = [e["type"] for e in events]
    assert types[-1] == "done" and set(types) == {"reasoning", "answer", "done"}
    assert types.index("answer") > max(i for i, t in enumerate(types) if t == "reasoning")
    assert "".join(e["text"] for e in events if e["type"] == "answer") == events[-1]["answer"]
    assert set(events[-1]) == REPLY_KEYS | {"type"}


def test_jsonl_lines_are_flushed_as_they_happen(smollm2):
    proc = subprocess.Popen(
        [sys.executable, "-m", "ponder", "ask", "--model", smollm2, "--jsonl", "--max-tokens", "2000", "Write a long story."],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ponder_env(),
    )
    try:
        first = json.loads(proc.stdout.readline())
        assert first["type"] == "answer"
        assert proc.poll() is None  # still generating: the line came as it happened
    finally:
        proc.kill()
        proc.wait()


def test_solve_json_with_samples(tiny_r1):
    result = run_ponder("solve", "--model", tiny_r1, "--json", "--samples", "2", "What is 2+2?")
    payload = json.loads(result.stdout)
    assert set(payload) == {"model", "backend", "samples", "vote"}
    assert [s["boxed"] for s in payload["samples"]] == ["4", "4"]
    assert payload["vote"] == {"winner": "4", "counts": [["4", 2]], "missing": 0}


def write_tasks(path, count: int):
    problems = [("What is 12*7?", "84"), ("What is 2+2?", "4"), (QUADRATIC, "\\{3, 2\\}"), ("What is 2+2?", "5")]
    with path.open("w") as f:
        for i in range(count):
            problem, answer = problems[i % len(problems)]
            f.write(json.dumps({"id": f"t{i}", "problem": problem, "answer": answer}) + "\n")


def test_batch_reports_accuracy(tiny_r1, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks, 4)
    result = run_ponder("batch", str(tasks), "--model", tiny_r1, "--samples", "2")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [r["id"] for r in lines] == ["t0", "t1", "t2", "t3"]
    assert [r["pass@1"] for r in lines] == [1.0, 1.0, 1.0, 0.0]
    assert len(lines[0]["samples"]) == 2 and lines[0]["samples"][0]["boxed"] == "84"
    assert "accuracy (pass@1): 75.0% over 4 problems" in result.stderr.decode()


def test_batch_resumes_after_a_kill_without_duplicates_or_torn_lines(tiny_r1_random, tmp_path):
    tasks, out = tmp_path / "tasks.jsonl", tmp_path / "out.jsonl"
    write_tasks(tasks, 16)
    batch = ("batch", str(tasks), "-o", str(out), "--model", tiny_r1_random, "--temperature", "0")
    # The random model writes until --max-tokens, so every task takes as long: once two lines
    # are written, fourteen tasks' worth of work is left for the kill to land in.
    proc = subprocess.Popen(
        [sys.executable, "-m", "ponder", *batch, "--max-tokens", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ponder_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and finished_lines(out) < 2:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    kept = out.read_text()
    written = kept.count("\n")
    assert 2 <= written < 16, "the kill should land mid-run"
    with out.open("a") as f:
        f.write('{"id": "t15", "samp')  # as if killed mid-write (of a task not done yet: they run in order)
    result = run_ponder(*batch, "--max-tokens", "1")  # which tasks run is what counts here, not their answers
    assert result.returncode == 0, result.stderr
    assert f"resuming: {written} of 16 tasks already".encode() in result.stderr
    assert out.read_text().startswith(kept)  # finished lines stay as they were
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(f"t{i}" for i in range(16))  # each once, the torn line gone


def finished_lines(path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


@pytest.mark.parametrize("content, message", [("not json\n", "not JSON"), ('{"prompt": "x"}\n', '"id"'),
                                              ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "repeats id")])
def test_batch_bad_input(tmp_path, content, message, tiny_r1_random):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(content)
    result = run_ponder("batch", str(tasks), "--model", tiny_r1_random)
    assert result.returncode == 2 and message in result.stderr.decode() and b"Traceback" not in result.stderr
