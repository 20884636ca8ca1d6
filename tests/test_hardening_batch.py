"""`ponder batch` at its edges (issue 20): -o never rewrites a file that is not its results, resumes only
regular files, a task that fails alone gets an error line while the batch goes on, every task line is
checked before the model loads, results are always JSON, a closed stdout ends it with 141, and resuming
is linear in the results. The real `ponder` program, on the tiny models and a real llama-server."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import ponder_env, run_ponder
from tests.support.scripted_server import Scripted, delta, send_events, send_json

NO_MODEL = ("--model", "/nonexistent/model.gguf")  # anything checked before loading never gets to it
TWELVE = "What is 12*7?"  # the trained tiny R1 answers \boxed{84}
OLD = 1_000_000_000  # a modification time (2001) that any write would change


def write_tasks(path: Path, count: int, text: str = TWELVE) -> Path:
    path.write_text("".join(json.dumps({"id": f"t{i}", "prompt": text}) + "\n" for i in range(count)))
    return path


def result_line(task_id) -> str:
    sample = {"reasoning": "12*7 = 84", "answer": "\\boxed{84}", "boxed": "84", "finish_reason": "stop",
              "reasoning_end": "model", "stats": {"prompt_tokens": 20, "reasoning_tokens": 10, "answer_tokens": 5}}
    return json.dumps({"id": task_id, "samples": [sample]}) + "\n"


def lines_of(path: Path) -> list[dict]:
    # Split at "\n" alone: str.splitlines would also split at a U+2028 inside a JSON string.
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def frozen(path: Path) -> tuple[bytes, int]:
    """The file's bytes and modification time, after setting that time to OLD."""
    os.utime(path, ns=(OLD * 10**9, OLD * 10**9))
    return path.read_bytes(), path.stat().st_mtime_ns


def one_error_line(result, code: int) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, f"exit {result.returncode}: {err}"
    assert "Traceback" not in err and "unexpected error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ponder: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# --- 1: -o never rewrites a file that is not a results file of this batch ---------------------


NOT_RESULTS = {
    "notes without a final newline": (b"shopping list\nmilk\neggs", "line 1 is not JSON"),
    "JSON arrays": (b"[1, 2]\n[3]\n", "line 1 is not a JSON object"),
    "bytes that are not UTF-8": (b'{"id": "t0", "samples": []}\n\xff\xfe junk\n', "line 2 is not UTF-8"),
    "results of other tasks": (result_line("other").encode(), "not among the tasks"),
    "objects without samples": (b'{"id": "t0", "prompt": "x"}\n', 'neither "samples" nor an "error"'),
    "results, then a line a person added": (result_line("t0").encode() + b"note to self", "line 2 is not JSON"),
    "results, then a foreign object unended": (result_line("t0").encode() + b'{"id": "t1", "note"', "line 2"),
}


@pytest.mark.parametrize("case", sorted(NOT_RESULTS))
def test_o_refuses_a_file_that_is_not_results_of_this_batch_and_touches_nothing(tmp_path, case):
    content, why = NOT_RESULTS[case]
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 2), tmp_path / "notes.txt"
    out.write_bytes(content)
    before = frozen(out)
    result = run_ponder("batch", str(tasks), "-o", str(out), *NO_MODEL)
    line = one_error_line(result, 2)
    assert str(out) in line and why in line and "nothing was written" in line
    assert (out.read_bytes(), out.stat().st_mtime_ns) == before


def test_o_naming_the_input_file_is_refused_and_the_tasks_stay(tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 2)
    before = frozen(tasks)
    for target in (tasks, tmp_path / "link.jsonl"):
        if target != tasks:
            target.symlink_to(tasks)
        line = one_error_line(run_ponder("batch", str(tasks), "-o", str(target), *NO_MODEL), 2)
        assert "is the input file" in line
    assert (tasks.read_bytes(), tasks.stat().st_mtime_ns) == before


def test_a_torn_last_line_of_ours_is_cut_and_a_whole_unended_one_kept(tiny_r1_random, tmp_path):
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 3), tmp_path / "out.jsonl"
    kept = result_line("t0")
    out.write_text(kept + result_line("t1").rstrip("\n"))  # t1's line whole, but its newline never written
    result = run_ponder("batch", str(tasks), "-o", str(out), "--model", tiny_r1_random, "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert "resuming: 2 of 3 tasks already in" in result.stderr.decode()
    assert [r["id"] for r in lines_of(out)] == ["t0", "t1", "t2"]
    out.write_text(kept + '{"id": "t1", "samples": [{"reasoning": "Ok')  # killed mid-write
    result = run_ponder("batch", str(tasks), "-o", str(out), "--model", tiny_r1_random, "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert out.read_text().startswith(kept)
    assert sorted(r["id"] for r in lines_of(out)) == ["t0", "t1", "t2"]


def test_resume_reads_lines_holding_unicode_line_separators(tiny_r1_random, tmp_path):
    tasks, out = tmp_path / "tasks.jsonl", tmp_path / "out.jsonl"
    # Raw U+2028 and U+0085 are valid inside JSON strings (ponder writes results with ensure_ascii=False).
    tasks.write_text(json.dumps({"id": "a\u2028b", "prompt": TWELVE + "\u0085"}, ensure_ascii=False) + "\n"
                     + json.dumps({"id": 2, "prompt": TWELVE}) + "\n", encoding="utf-8")
    out.write_text(json.dumps({"id": "a\u2028b", "samples": [{"answer": "x\u2028y"}]}, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    result = run_ponder("batch", str(tasks), "-o", str(out), "--model", tiny_r1_random, "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    assert [r["id"] for r in lines_of(out)] == ["a\u2028b", 2]


# --- 2: only regular files are resumed; odd -o targets -----------------------------------------


def limited_memory():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # reading /dev/full would grow without end


def test_o_dev_full_is_not_read_and_a_full_disk_is_one_error_line(tiny_r1_random, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 2)
    result = subprocess.run([sys.executable, "-m", "ponder", "batch", str(tasks), "-o", "/dev/full", "--model",
                             tiny_r1_random,
                             "--max-tokens", "16"], capture_output=True, stdin=subprocess.DEVNULL, env=ponder_env(),
                            timeout=120, preexec_fn=limited_memory)
    line = one_error_line(result, 1)
    assert "cannot write to /dev/full" in line and "No space left" in line


def test_stdout_on_a_full_disk_is_one_error_line(tiny_r1_random, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 2)
    with open("/dev/full", "wb") as full:
        result = subprocess.run([sys.executable, "-m", "ponder", "batch", str(tasks), "--model", tiny_r1_random,
                                 "--max-tokens", "16"], stdout=full, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=ponder_env(), timeout=120)
    line = one_error_line(result, 1)
    assert "cannot write the results to stdout" in line and "No space left" in line


def test_o_dev_stdout_into_a_pipe_writes_there_without_reading_it(tiny_r1_random, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 2)
    result = run_ponder("batch", str(tasks), "-o", "/dev/stdout", "--model", tiny_r1_random, "--max-tokens", "16",
                        timeout=60)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in result.stdout.decode().splitlines()] == ["t0", "t1"]
    assert b"resuming" not in result.stderr


def test_o_a_fifo_is_written_as_a_stream(tiny_r1_random, tmp_path):
    tasks, fifo = write_tasks(tmp_path / "tasks.jsonl", 2), tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = run_ponder("batch", str(tasks), "-o", str(fifo), "--model", tiny_r1_random, "--max-tokens", "16",
                        timeout=60)
    reader.join(30)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in received[0].decode().splitlines()] == ["t0", "t1"]


@pytest.mark.parametrize("target, code, message", [
    ("{tmp}", 2, "is a directory"),
    ("{tmp}/missing/results.jsonl", 2, "there is no directory"),
    ("{tmp}/tasks.jsonl/results.jsonl", 2, "Not a directory"),
])
def test_o_that_cannot_be_a_results_file_is_one_error_line_before_the_model_loads(tmp_path, target, code, message):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 1)
    line = one_error_line(run_ponder("batch", str(tasks), "-o", target.format(tmp=tmp_path), *NO_MODEL), code)
    assert message in line


def test_o_an_immutable_file_is_one_error_line_before_the_model_loads(tmp_path):
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 2), tmp_path / "out.jsonl"
    out.write_text(result_line("t0"))
    if subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode != 0:
        if os.geteuid() == 0:
            pytest.skip("no chattr +i here, and root writes through any mode")
        out.chmod(0o444)
    try:
        line = one_error_line(run_ponder("batch", str(tasks), "-o", str(out), *NO_MODEL), 1)
        assert f"cannot write {out}" in line
        # With every task done nothing needs writing: the finished results still report.
        done = run_ponder("batch", str(write_tasks(tmp_path / "one.jsonl", 1)), "-o", str(out), *NO_MODEL)
        assert done.returncode == 0, done.stderr
    finally:
        subprocess.run(["chattr", "-i", str(out)], capture_output=True)
    assert out.read_text() == result_line("t0")


def test_a_results_file_in_use_by_another_batch_is_refused(tmp_path):
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 2), tmp_path / "out.jsonl"
    out.write_text(result_line("t0"))
    with open(out, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        line = one_error_line(run_ponder("batch", str(tasks), "-o", str(out), *NO_MODEL), 1)
    assert "another ponder batch is writing" in line
    assert out.read_text() == result_line("t0")


def test_a_new_results_file_is_not_left_empty_when_the_model_fails_to_load(tmp_path):
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 1), tmp_path / "out.jsonl"
    result = run_ponder("batch", str(tasks), "-o", str(out), *NO_MODEL)
    assert result.returncode != 0 and not out.exists()


# --- 3: a task that fails alone gets an error line, and the batch goes on ------------------------

OVER = "hello " * 1500  # some 1500 tokens: over a 512-token context


def samples(args: list[str]) -> int:
    return int(args[args.index("-n") + 1]) if "-n" in args else 1


def mixed_tasks(path: Path) -> Path:
    tasks = [{"id": 1, "problem": TWELVE, "answer": "84"}, {"id": 2, "prompt": OVER},
             {"id": 3, "problem": TWELVE, "answer": "84"}]
    path.write_text("".join(json.dumps(task) + "\n" for task in tasks))
    return path


@pytest.mark.parametrize("args", [["--parallel", "1"], ["--parallel", "3"], ["-n", "2", "--parallel", "4"],
                                  ["--parallel", "3", "--no-think"]],
                         ids=["one at a time", "decoded together", "samples decoded together", "no thinking"])
def test_a_prompt_over_the_context_fails_its_task_alone_and_a_rerun_tries_it_again(tiny_r1_random, tmp_path, args):
    tasks, out = mixed_tasks(tmp_path / "tasks.jsonl"), tmp_path / "out.jsonl"
    batch = ("batch", str(tasks), "-o", str(out), "--model", tiny_r1_random, "--ctx", "512", "--max-tokens", "24",
             *args)
    result = run_ponder(*batch)
    assert "1 of 3 tasks failed" in one_error_line(result, 1)
    err = result.stderr.decode()
    assert "ponder: task 2 failed: the prompt is" in err and "% over 2 problems" in err  # the others are scored
    by_id = {r["id"]: r for r in lines_of(out)}
    assert set(by_id) == {1, 2, 3} and len(lines_of(out)) == 3
    assert set(by_id[2]) == {"id", "error"} and "but the context holds" in by_id[2]["error"]
    assert [len(by_id[i]["samples"]) for i in (1, 3)] == [samples(args)] * 2 and "pass@1" in by_id[1]

    again = run_ponder(*batch)  # the failed task alone runs again; its new line goes after the old
    assert "1 of 3 tasks failed" in one_error_line(again, 1)
    assert "resuming: 2 of 3 tasks already in" in again.stderr.decode()
    assert "1 that failed run again" in again.stderr.decode()
    assert [r["id"] for r in lines_of(out)][3:] == [2] and len(lines_of(out)) == 4


@pytest.mark.parametrize("parallel", ["1", "3"])
def test_ctrl_c_stops_the_whole_batch_and_is_no_task_failure(tiny_r1_random, tmp_path, parallel):
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 12), tmp_path / "out.jsonl"
    child = subprocess.Popen([sys.executable, "-m", "ponder", "batch", str(tasks), "-o", str(out), "--model",
                              tiny_r1_random, "--max-tokens", "128", "--temperature", "0", "--parallel", parallel],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                             env=ponder_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert b"Traceback" not in err and b"failed" not in err
    assert all("samples" in r for r in lines_of(out)) and 1 <= len(lines_of(out)) < 12


def test_which_failures_are_a_tasks_own():
    from ponder.backends.server_http import ServerRefused, StreamBroken
    from ponder.cli.commands.batch_run import task_failure
    from ponder.errors import BackendError, ContextOverflow, ModelError
    from ponder.events import Reply
    from ponder.samples import BrokenSample

    broken = Reply(reasoning="so far", answer="", finish_reason="interrupted", stats=None,
                   error="the server closed the stream mid-reply")
    own = [ContextOverflow("the prompt is 900 tokens, but the context holds 512", hint="shorten it"),
           ServerRefused("the server answered 400 Bad Request: too long", status=400, said="too long"),
           ServerRefused("the server answered 422", status=422, said=""),
           ServerRefused("the server answered 500", status=500, said=""), BrokenSample(broken)]
    assert [task_failure(exc) is not None for exc in own] == [True] * 5
    assert task_failure(own[0]) == "the prompt is 900 tokens, but the context holds 512 (shorten it)"
    stops = [BackendError("cannot reach the server at http://127.0.0.1:9/v1: connection refused"),
             ServerRefused("the server answered 404: model 'x' not found", status=404, said="model 'x' not found"),
             ServerRefused("the server answered 401", status=401, said=""),
             StreamBroken("a stream broke (not a reply)"),
             ModelError("the model failed"), OSError(28, "No space left on device"), KeyboardInterrupt()]
    assert [task_failure(exc) for exc in stops] == [None] * len(stops)


def server_batch(url: str, tasks: Path, out: Path, *args: str):
    return run_ponder("batch", str(tasks), "-o", str(out), "--server", url, "--temperature", "0",
                      "--max-tokens", "200", *args, timeout=120)


@pytest.mark.parametrize("parallel", ["1", "2"])
def test_a_stream_cut_in_one_sample_fails_its_task_alone(fault_proxy, tmp_path, parallel):
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 2), tmp_path / "out.jsonl"
    fault_proxy.cut_after, fault_proxy.stream_faults = 3, 1
    result = server_batch(fault_proxy.url, tasks, out, "-n", "2", "--parallel", parallel)
    assert "1 of 2 tasks failed" in one_error_line(result, 1)
    failed = [r for r in lines_of(out) if "error" in r]
    assert len(failed) == 1 and "mid-reply" in failed[0]["error"]
    assert [len(r["samples"]) for r in lines_of(out) if "samples" in r] == [2]


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.close()


# llama-server's refusal of a prompt over its context
LLAMA_SERVER_OVERFLOW = {"error": {"code": 400, "message": "request (3000 tokens) exceeds the available context size "
                                   "(512 tokens), try increasing it", "type": "exceed_context_size_error",
                                   "n_prompt_tokens": 3000, "n_ctx": 512}}


def test_through_a_scripted_server_only_the_tasks_it_refuses_or_cuts_fail(scripted, tmp_path):
    """One task refused (400), one over the server's context, one answered with a 500, one whose stream is cut
    in one of its two samples: each gets its error line, the rest their results, whichever way they are sent."""
    cuts = []

    def answer(h, body):
        text = json.dumps(body)
        if "REFUSED" in text:
            send_json(h, 400, {"error": {"message": "invalid grammar"}})
        elif "LONG" in text:
            send_json(h, 400, LLAMA_SERVER_OVERFLOW)
        elif "CRASH" in text:
            send_json(h, 500, {"error": {"message": "the server fell over"}})
        elif "CUT" in text and not cuts:
            cuts.append(1)
            send_events(h, [delta("Hel")], cut=True)
        else:
            send_events(h, [delta("\\boxed{84}", finish="stop")])

    scripted.answer = answer
    words = ["fine", "REFUSED", "fine", "LONG", "CRASH", "CUT", "fine"]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "prompt": w}) + "\n" for i, w in enumerate(words)))
    for parallel in ("1", "3"):
        cuts.clear()
        out = tmp_path / f"out-{parallel}.jsonl"
        result = run_ponder("batch", str(tasks), "-o", str(out), "--server", scripted.url, "-n", "2",
                            "--parallel", parallel, timeout=60)
        assert "4 of 7 tasks failed" in one_error_line(result, 1)
        by_id = {r["id"]: r for r in lines_of(out)}
        assert len(lines_of(out)) == 7 and [len(by_id[i]["samples"]) for i in (0, 2, 6)] == [2, 2, 2]
        assert "invalid grammar" in by_id[1]["error"] and "the server's context holds 512" in by_id[3]["error"]
        assert "500" in by_id[4]["error"] and "closed the stream mid-reply" in by_id[5]["error"]
        if parallel == "3":  # samples sent as requests of their own: the error says which one broke
            assert by_id[5]["error"].startswith(("sample 1 of 2: ", "sample 2 of 2: "))
        assert all(set(by_id[i]) == {"id", "error"} for i in (1, 3, 4, 5))


def test_a_scripted_server_refusing_everything_alike_stops_the_batch_after_ten(scripted, tmp_path):
    scripted.answer = lambda h, body: send_json(h, 400, {"error": {"message": "this model does not take prompts"}})
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 40), tmp_path / "out.jsonl"
    line = one_error_line(run_ponder("batch", str(tasks), "-o", str(out), "--server", scripted.url, timeout=60), 1)
    assert "10 tasks in a row failed alike" in line and "does not take prompts" in line
    assert len(lines_of(out)) == 10 and len(scripted.posts()) == 10


def test_a_scripted_server_gone_mid_batch_stops_it_at_once(scripted, tmp_path):
    def answer(h, body):
        send_events(h, [delta("\\boxed{84}", finish="stop")])
        if len(scripted.posts()) == 2:
            threading.Thread(target=scripted.close).start()  # nothing listens once this reply is sent

    scripted.answer = answer
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 20), tmp_path / "out.jsonl"
    result = run_ponder("batch", str(tasks), "-o", str(out), "--server", scripted.url, timeout=60)
    line = one_error_line(result, 1)
    assert scripted.url in line  # "cannot reach the server at …", or "the request to … failed" (a kept-alive one)
    assert len(lines_of(out)) == 2 and all("samples" in r for r in lines_of(out))


# --- 4, 5: every task line checked before the model loads; results always JSON -----------------


BAD_TASKS = {
    "an id that is a list": ('{"id": [1], "prompt": "x"}', 'has an "id" that is a list'),
    "an id that is an object": ('{"id": {"a": 1}, "prompt": "x"}', 'has an "id" that is an object'),
    "an id with a point": ('{"id": 1.5, "prompt": "x"}', 'has an "id" that is a number with a point'),
    "an id of 1e999": ('{"id": 1e999, "prompt": "x"}', 'has an "id" that is a number out of range'),
    "an id that is true": ('{"id": true, "prompt": "x"}', 'has an "id" that is true or false'),
    "an id that is null": ('{"id": null, "prompt": "x"}', 'has an "id" that is null'),
    "a prompt that is a number": ('{"id": 2, "prompt": 42}', 'has a "prompt" that is a number'),
    "a problem that is a number": ('{"id": 2, "problem": 42, "answer": "42"}', 'has a "problem" that is a number'),
    "an empty prompt": ('{"id": 2, "prompt": "  "}', 'has an empty "prompt"'),
    "an answer that is a list": ('{"id": 2, "problem": "1+1", "answer": [2]}', 'has an "answer" that is a list'),
    "an answer of NaN": ('{"id": 2, "problem": "1+1", "answer": NaN}', 'has an "answer" that is a number out of'),
    "an answer of 1e999": ('{"id": 2, "problem": "1+1", "answer": 1e999}', 'has an "answer" that is a number out of'),
    "a line that is a list": ('[1, 2]', "is a list, not a JSON object"),
    "a line that is a number": ('7', "is a number, not a JSON object"),
    "a line that is a string": ('"task"', "is a string, not a JSON object"),
    "an id of 5000 digits": ('{"id": ' + "1" * 5000 + ', "prompt": "x"}', "is not JSON ponder can read"),
    "nesting too deep": ('{"id": 2, "prompt": "x", "m": ' + "[" * 100000 + "]" * 100000 + "}",
                         "is not JSON ponder can read"),
}


@pytest.mark.parametrize("case", sorted(BAD_TASKS))
def test_a_bad_task_line_refuses_the_input_before_the_model_loads(tmp_path, case):
    line, why = BAD_TASKS[case]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": 1, "prompt": TWELVE}) + "\n" + line + "\n")
    message = one_error_line(run_ponder("batch", str(tasks), *NO_MODEL), 2)
    assert f"input line 2 {why}" in message


def test_every_bad_line_is_named_and_bytes_that_are_not_utf8_too(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(b'{"id": 1, "prompt": "ok"}\n{"id": [1]}\n\n\xff\xfe\n{"id": 1, "prompt": "again"}\n')
    message = one_error_line(run_ponder("batch", str(tasks), *NO_MODEL), 2)
    assert "input line 2 needs" in message and "line 4 is not UTF-8 text" in message
    assert "line 5 repeats id 1" in message


def test_ids_are_written_back_as_the_json_they_came_as(tiny_r1_random, tmp_path):
    big = 10**30
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(f'{{"id": {big}, "problem": "{TWELVE}", "answer": 84}}\n{{"id": "x", "prompt": "{TWELVE}"}}\n')
    result = run_ponder("batch", str(tasks), "--model", tiny_r1_random, "--max-tokens", "16")
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.decode().splitlines()
    assert first.startswith(f'{{"id": {big}, "samples": [') and json.loads(first)["reference"] == 84
    assert second.startswith('{"id": "x", "samples": [')


# --- 6: a reader that closes stdout early -------------------------------------------------------


def test_a_reader_that_closes_stdout_early_ends_batch_quietly_with_141(tiny_r1_random, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 3)
    child = subprocess.Popen([sys.executable, "-m", "ponder", "batch", str(tasks), "--model", tiny_r1_random,
                              "--max-tokens", "16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             stdin=subprocess.DEVNULL, env=ponder_env())
    child.stdout.close()  # as `| true` does
    _, err = child.communicate(timeout=120)
    assert child.returncode == 141, err
    assert err == b""


def test_batch_piped_into_head_exits_141(tiny_r1_random, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 3)
    command = f"{sys.executable} -m ponder batch {tasks} --model {tiny_r1_random} --max-tokens 16 | head -c 1; " \
              "echo \" ${PIPESTATUS[0]}\""
    result = subprocess.run(["bash", "-c", command], capture_output=True, env=ponder_env(), timeout=120)
    assert result.stdout.decode() == "{ 141\n" and result.stderr == b""


def test_a_closed_stdout_is_one_error_line_before_the_model_loads(tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", 1)
    result = subprocess.run(["bash", "-c", f"{sys.executable} -m ponder batch {tasks} --model /nonexistent.gguf >&-"],
                            capture_output=True, env=ponder_env(), timeout=60)
    assert "stdout is closed" in one_error_line(result, 1)


def test_an_empty_input_says_so(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    result = run_ponder("batch", str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "out.jsonl"), *NO_MODEL)
    assert (result.returncode, result.stderr.decode()) == (0, f"ponder: no tasks in {tmp_path / 'empty.jsonl'}\n")
    assert not (tmp_path / "out.jsonl").exists()


# --- 7: resuming is linear in the results -------------------------------------------------------


def test_resuming_twenty_thousand_results_reads_each_line_once(tmp_path):
    count = 20_000
    tasks, out = tmp_path / "tasks.jsonl", tmp_path / "out.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "problem": "1+1", "answer": "2"}) + "\n" for i in range(count)))
    out.write_text("".join(json.dumps({"id": i, "samples": [{"correct": True}], "pass@1": 1.0}) + "\n"
                           for i in range(count)))
    result = run_ponder("batch", str(tasks), "-o", str(out), *NO_MODEL, timeout=60)  # all done: no model needed
    assert result.returncode == 0, result.stderr
    assert f"resuming: {count} of {count} tasks already in" in result.stderr.decode()
    assert "accuracy (pass@1): 100.0% over 20000 problems" in result.stderr.decode()


# --- the reader of results files, alone ---------------------------------------------------------


IDS = {"t0", "t1", 7, "é"}


@pytest.mark.parametrize("tail, ours", [
    (b"{", True), (b'{"id": ', True), (b'{"id": "t', True), (b'{"id": 7', True), (b'{"id": "\xc3', True),
    (b'{"id": "t1", "s', True), (b'{"id": "t1", "samples": [{"reasoning": "so', True),
    (b'{"id": 7, "error": "the pro', True),
    (b'{"id": "t9", "samples": [', False),  # not a task of this batch
    (b'{"id": "t1", "note": 1', False), (b'{"id": "x', False), (b'{"id":7, "samples": [', False),
    (b"note to self", False), (b" {", False), (b"\xff", False), (b'{"id": true, "samples": [', False),
])
def test_only_a_torn_line_ponder_was_writing_is_cut(tail, ours):
    from ponder.batch_results import read_results
    from ponder.errors import UsageError

    whole = result_line("t0").encode()
    if ours:
        found = read_results(whole + tail, IDS, "out.jsonl")
        assert (found.keep, found.unended, list(found.done)) == (len(whole), False, ["t0"])
    else:
        with pytest.raises(UsageError, match="out.jsonl is not a results file of this batch: line 2"):
            read_results(whole + tail, IDS, "out.jsonl")


def test_the_last_line_per_task_counts_and_a_result_wins_over_errors():
    from ponder.batch_results import read_results

    data = (json.dumps({"id": "t0", "error": "first try"}) + "\n" + result_line("t1") + "\n  \n"
            + json.dumps({"id": "t0", "error": "second try"}) + "\n" + json.dumps({"id": 7, "error": "x"}) + "\n"
            + result_line(7)).encode()
    found = read_results(data, IDS, "out.jsonl")
    assert sorted(found.done, key=str) == [7, "t1"] and found.failed == {"t0": {"id": "t0", "error": "second try"}}
    assert found.unended is False and found.keep == len(data)  # result_line ends in a newline
    found = read_results(data.rstrip(b"\n"), IDS, "out.jsonl")  # a whole last line without its newline: kept
    assert found.unended is True and found.keep == len(data) - 1 and 7 in found.done


def test_a_servers_error_text_reaches_the_terminal_inert(scripted, tmp_path):
    scripted.answer = lambda h, body: send_json(h, 400, {"error": {"message": "bad \x1b]0;owned\x07 \x1b[?1049h"}})
    tasks, out = write_tasks(tmp_path / "tasks.jsonl", 1), tmp_path / "out.jsonl"
    result = run_ponder("batch", str(tasks), "-o", str(out), "--server", scripted.url, timeout=60)
    assert "1 of 1 tasks failed" in one_error_line(result, 1)
    assert b"\x1b" not in result.stderr and b"\x07" not in result.stderr and b"0;owned" in result.stderr
    assert "0;owned" in lines_of(out)[0]["error"]
