"""Parallel samples: N replies decoded together on one local model (ponder.parallel), each kept in bounds
as a single reply is, with an early stop once the vote is settled; solve and batch through them. Real
models: the tiny trained R1 on llama.cpp (fast), and the same behaviours through the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.events import GenerationParams, Message, Reply
from ponder.exchange import collect_reply, generate_reply, model_prompt
from ponder.fitting import fit_context
from ponder.parallel import Job, Skipped
from ponder.samples import decode_jobs, draw
from ponder.solve import majority_confidence, vote_settled
from tests.support import tiny_r1 as tiny
from tests.support.cli import final_screen, ponder_env, run_ponder, spawn_in_pty

QUESTION = [Message("user", "What is 12*7?")]
LONG = [Message("user", tiny.LONG_QUESTION)]
LOOP = [Message("user", tiny.LOOP_QUESTION)]
SLOTS = 4


@pytest.fixture(scope="module")
def together(tiny_r1):
    """The tiny R1 loaded to decode SLOTS sequences at once."""
    model = get_backend("llama.cpp").load(tiny_r1, LoadOptions(context=1024, sequences=SLOTS))
    yield model
    model.close()


@pytest.fixture(scope="module")
def alone(tiny_r1):
    model = get_backend("llama.cpp").load(tiny_r1, LoadOptions(context=1024))
    yield model
    model.close()


def essence(reply: Reply) -> tuple:
    return reply.reasoning, reply.answer, reply.finish_reason, reply.stats.reasoning_end


# --- the driver -------------------------------------------------------------------------------------


def test_samples_decoded_together_are_the_samples_drawn_one_by_one(together, alone):
    params = GenerationParams(temperature=0.8, seed=11, max_tokens=200)
    batched = draw(together, QUESTION, params, 6)  # 6 samples on 4 slots: the last two wait for a free one
    sequential = draw(alone, QUESTION, params, 6)
    assert [essence(r) for r in batched] == [essence(r) for r in sequential]
    assert all(r.answer.strip().endswith("\\boxed{84}.") for r in batched)


@pytest.mark.parametrize("messages, params, answer, end", [
    (LONG, GenerationParams(temperature=0, think_budget=tiny.BUDGET), tiny.BUDGET_ANSWER, "budget"),
    (LOOP, GenerationParams(temperature=0, max_tokens=300), tiny.LOOP_ANSWER, "loop"),
    (QUESTION, GenerationParams(temperature=0, think_budget=0), tiny.NO_THINKING_ANSWER, "budget"),
], ids=["budget", "loop rescue", "no thinking"])
def test_each_sample_is_kept_in_bounds_as_a_single_reply_is(together, alone, messages, params, answer, end):
    single = collect_reply(generate_reply(alone, messages, params))
    replies = draw(together, messages, params, 3)
    assert [essence(r) for r in replies] == [essence(single)] * 3
    assert single.answer.strip() == answer and single.stats.reasoning_end == end


def test_a_seed_gives_the_same_samples_from_run_to_run(together):
    params = GenerationParams(temperature=4.0, top_p=1.0, seed=3, max_tokens=40)
    first = [essence(r) for r in draw(together, QUESTION, params, 4)]
    assert first == [essence(r) for r in draw(together, QUESTION, params, 4)]
    assert first != [essence(r) for r in draw(together, QUESTION, GenerationParams(temperature=4.0, top_p=1.0, seed=4,
                                                                                  max_tokens=40), 4)]


def test_the_early_stop_ends_the_running_and_the_waiting_samples_of_its_group(together):
    prompt = model_prompt(together, QUESTION)
    lengths = [5, 40, 40, 40, 40, 40]  # the first ends first; four run at once, two wait
    jobs = [Job(i, prompt, GenerationParams(temperature=0, max_tokens=n), group="q", group_size=len(lengths))
            for i, n in enumerate(lengths)]
    asked, ended, events = [], {}, []

    def settle(replies, remaining):
        asked.append((len(replies), remaining))
        return True

    decode_jobs(together, jobs, lambda key, reply: ended.__setitem__(key, reply),
                lambda key, event: events.append((key, event)), settle)
    assert asked == [(1, 5)]
    assert ended[0] is not None and ended[0].stats.answer_tokens + ended[0].stats.reasoning_tokens == 5
    assert [ended[i] for i in range(1, 6)] == [None] * 5
    skipped = {key: event.tokens for key, event in events if isinstance(event, Skipped)}
    assert skipped == {1: 5, 2: 5, 3: 5, 4: 0, 5: 0}  # three had run as long as the first; two never started


def test_interrupting_stops_every_sample_at_once_and_leaves_the_model_sound(together, alone):
    prompt = model_prompt(together, LOOP)
    jobs = [Job(i, prompt, GenerationParams(temperature=0, max_tokens=5000, on_loop="continue")) for i in range(SLOTS)]
    seen = []

    def on_event(key, event):
        seen.append(key)
        if len(seen) == 40:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        decode_jobs(together, jobs, lambda key, reply: None, on_event)
    assert time.monotonic() - started < 10
    assert len(set(seen)) == SLOTS  # all were running
    greedy = GenerationParams(temperature=0, max_tokens=60)
    assert essence(collect_reply(generate_reply(together, QUESTION, greedy))) == \
        essence(collect_reply(generate_reply(alone, QUESTION, greedy)))


# --- the vote's stopping rules ---------------------------------------------------------------------


def test_the_vote_settles_only_when_the_leader_cannot_be_caught():
    assert not vote_settled(["84", "84", "84"], 3)  # 3 against a possible 3: a tie is still possible
    assert vote_settled(["84", "84", "84"], 2)
    assert vote_settled(["84", "84", "84", "0.5", "1/2"], 0)
    assert not vote_settled(["84", "1/2", "0.5"], 1)  # 1/2 and 0.5 are one answer: it leads 2-1 with 1 to come
    assert not vote_settled([None, None], 1)


def test_the_confidence_rule_is_the_beta_posterior_of_the_two_leaders():
    # P(Beta(a, b) > 1/2), for whole a and b, from the binomial tail; checked against the integral.
    assert majority_confidence(3, 0) == 15 / 16
    assert majority_confidence(4, 0) == 31 / 32
    assert majority_confidence(2, 2) == 0.5
    steps = 200_000
    integral = sum(((k + 0.5) / steps) ** 5 * (1 - (k + 0.5) / steps) ** 2 for k in range(steps // 2, steps)) / steps
    assert majority_confidence(5, 2) == pytest.approx(integral * 168, rel=1e-6)  # 1/B(6, 3) = 168
    assert vote_settled(["7"] * 4, 60, confidence=0.95) and not vote_settled(["7"] * 3, 60, confidence=0.95)


# --- memory -----------------------------------------------------------------------------------------


@pytest.fixture
def budget(monkeypatch, tiny_r1):
    """Memory for the weights plus `tokens` tokens of the tiny R1's KV cache."""
    from ponder import fitting
    from ponder.plan import OVERHEAD_BYTES, kv_bytes_per_token, model_footprint

    shape, weights = model_footprint(tiny_r1)

    def give(tokens: int) -> None:
        room = weights + OVERHEAD_BYTES + int(kv_bytes_per_token(shape) * tokens)
        monkeypatch.setattr(fitting, "memory_budget", lambda backend: (room, "test memory"))

    return give


def test_samples_that_fit_are_loaded_as_asked(tiny_r1, budget):
    budget(8 * 32768)
    fit = fit_context(tiny_r1, "llama.cpp", LoadOptions(sequences=8))
    assert (fit.options, fit.note) == (LoadOptions(sequences=8), None)


def test_samples_that_do_not_fit_get_shorter_contexts_then_fewer_at_once_then_one_by_one(tiny_r1, budget):
    budget(8 * 16384)
    fit = fit_context(tiny_r1, "llama.cpp", LoadOptions(sequences=8), sample_context=16384)
    assert (fit.options.context, fit.options.sequences) == (16384, 8)
    assert "context set to 16384 tokens for each of 8 samples" in fit.note
    fit = fit_context(tiny_r1, "llama.cpp", LoadOptions(sequences=8), sample_context=32768)  # all it may generate
    assert (fit.options.context, fit.options.sequences) == (32768, 4)
    assert "4 of the 8 samples run at once, each with a 32768-token context" in fit.note
    budget(3 * 8192)
    fit = fit_context(tiny_r1, "llama.cpp", LoadOptions(sequences=8), sample_context=8192)
    assert (fit.options.context, fit.options.sequences) == (8192, 3)
    budget(8192)
    fit = fit_context(tiny_r1, "llama.cpp", LoadOptions(sequences=8), sample_context=16384)
    assert (fit.options.context, fit.options.sequences) == (8192, 1)  # one after another, as before
    assert "context set to 8192 tokens so that it fits" in fit.note


def test_parallel_samples_that_cannot_fit_are_an_error_naming_what_fits(tiny_r1, budget):
    from ponder.errors import UsageError

    budget(3 * 8192)
    with pytest.raises(UsageError) as raised:
        fit_context(tiny_r1, "llama.cpp", LoadOptions(context=8192, sequences=8), sequences_given=True)
    assert "8 samples at once with a 8192-token context each need about" in raised.value.message
    assert raised.value.hint == "what fits: --parallel 3 at this context or --ctx 3072 for 8 at once"
    fit = fit_context(tiny_r1, "llama.cpp", LoadOptions(context=8192, sequences=8))  # not asked for: fewer
    assert (fit.options.context, fit.options.sequences) == (8192, 3)


def test_plan_shows_the_cache_of_every_sample():
    out = run_ponder("plan", "--samples", "8", "--ctx", "16384", "--quant", "Q4_K_M", "--memory", "10")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert "8 sequences, a 16384-token cache each" in text
    assert "7.00 GiB" in text  # 56 KiB x 16384 tokens x 8
    assert "no (at most 11264 tokens of context each or 5 sequences of 16384 would)" in text


# --- through the commands ---------------------------------------------------------------------------


def solve(tiny_r1, *args: str):
    return run_ponder("solve", "What is 12*7?", "--model", tiny_r1, "--seed", "5", *args)


def test_solve_decodes_the_samples_together_and_votes(tiny_r1):
    out = solve(tiny_r1, "-n", "5", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert len(result["samples"]) == 5 and result["vote"]["winner"] == "84"
    one_by_one = json.loads(solve(tiny_r1, "-n", "5", "--parallel", "1", "--json").stdout)
    assert [s["answer"] for s in result["samples"]] == [s["answer"] for s in one_by_one["samples"]]


def test_solve_early_stop_reports_what_it_saved(tiny_r1):
    out = solve(tiny_r1, "-n", "8", "--parallel", "2", "--early-stop")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines() == ["Answer: 84", "Votes (6 of 8 samples, the rest ended early): 84 ×6"]
    assert "early stop: 2 of 8 samples ended once the vote was settled, about 126 tokens saved" in out.stderr.decode()
    result = json.loads(solve(tiny_r1, "-n", "8", "--parallel", "2", "--early-stop", "--json").stdout)
    assert result["vote"]["early_stop"] == {"samples_ended": 2, "tokens_spent_on_ended": 0,
                                            "tokens_saved_estimate": 126}
    assert [s.get("ended_early", False) for s in result["samples"]] == [False] * 6 + [True] * 2


def test_confidence_without_early_stop_is_a_usage_error(tiny_r1):
    out = solve(tiny_r1, "-n", "4", "--confidence", "0.9")
    assert out.returncode == 2
    assert "--confidence is a rule for --early-stop" in out.stderr.decode()


def test_solve_on_a_terminal_shows_a_line_per_sample_and_the_vote(tiny_r1):
    screen = final_screen("solve", "What is 12*7?", "--model", tiny_r1, "-n", "3", "--seed", "1")
    lines = [line.split() for line in screen.splitlines()]
    for number in (1, 2, 3):
        assert [f"#{number}", "done", "63", "tokens", "84"] in lines
    assert "Vote (3 of 3 done): 84 ×3" in screen
    assert "Votes (3 samples): 84 ×3" in screen and "EXIT=0" in screen


def test_ctrl_c_stops_every_sample_at_once(tiny_r1):
    import pexpect

    child = spawn_in_pty("solve", tiny.LOOP_QUESTION, "--model", tiny_r1, "-n", "4", "--on-loop", "continue",
                         "--max-tokens", "100000")
    child.expect("thinking")
    started = time.monotonic()
    child.sendintr()
    child.expect(pexpect.EOF, timeout=10)
    child.close()
    assert time.monotonic() - started < 5
    assert child.exitstatus == 130 or child.signalstatus == signal.SIGINT
    assert "Traceback" not in (child.before or "")


def write_tasks(path, count: int) -> None:
    path.write_text("".join(json.dumps({"id": i, "problem": "What is 12*7?", "answer": "84"}) + "\n"
                            for i in range(count)))


def test_batch_parallel_gives_the_results_of_one_at_a_time(tiny_r1, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks, 3)
    runs = {}
    for parallel in ("1", "4"):
        out = run_ponder("batch", str(tasks), "--model", tiny_r1, "-n", "2", "--parallel", parallel, "--seed", "9",
                         "--max-tokens", "200")
        assert out.returncode == 0, out.stderr
        runs[parallel] = sorted((json.loads(line) for line in out.stdout.decode().splitlines()), key=lambda r: r["id"])
    strip = lambda results: [[(s["reasoning"], s["answer"]) for s in r["samples"]] for r in results]  # noqa: E731
    assert strip(runs["4"]) == strip(runs["1"])
    assert [r["pass@1"] for r in runs["4"]] == [1.0] * 3


def test_batch_parallel_resumes_after_a_kill_with_every_task_once(tiny_r1, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "prompt": tiny.LOOP_QUESTION}) + "\n" for i in range(12)))
    results = tmp_path / "results.jsonl"
    args = [sys.executable, "-m", "ponder", "batch", str(tasks), "-o", str(results), "--model", tiny_r1,
            "--parallel", "3", "--on-loop", "continue", "--max-tokens", "400", "--seed", "1"]
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path))
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not results.exists() or results.read_text().count("\n") < 2):
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    kept = results.read_text().count("\n")
    assert 2 <= kept < 12
    second = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert second.returncode == 0, second.stderr
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == list(range(12))


@pytest.mark.parametrize("args", [["-n", "3", "--json"], ["-n", "3"], ["--answer-only"]])
def test_a_reader_that_closes_stdout_early_ends_solve_quietly_with_141(tiny_r1, args):
    child = subprocess.Popen([sys.executable, "-m", "ponder", "solve", "What is 12*7?", "--model", tiny_r1, *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ponder_env())
    child.stdout.close()  # as `| true` does
    _, err = child.communicate(timeout=120)
    assert child.returncode == 141, err
    assert b"Traceback" not in err and b"error" not in err
