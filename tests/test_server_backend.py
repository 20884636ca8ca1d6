"""ponder over real OpenAI-compatible servers on loopback: each way a server hands back reasoning,
the prompt ponder renders reaching the model token for token, several choices in one request, and
the front ends end to end (pipes, JSON, chat history, batch in flight)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pytest

from ponder.backends.server import connect
from ponder.events import GenerationParams, Message, TextDelta
from ponder.exchange import collect_reply, generate_reply, model_prompt
from ponder.samples import draw
from tests.support.cli import piped_repl, ponder_env, run_ponder
from tests.support.fault_proxy import FaultProxy

QUESTION = [Message("user", "What is 12*7?")]
GREEDY = GenerationParams(temperature=0.0, max_tokens=200)
ANSWER = "12 × 7 = 84, so the answer is \\boxed{84}."
REASONING = "Okay, 12 times 7. 10*7 = 70 and 2*7 = 14, so 70 + 14 = 84."


@pytest.fixture(scope="module")
def local_reply(tiny_r1):
    """The tiny R1's greedy reply through ponder's own llama.cpp backend: what a server must match."""
    from ponder.backends.llamacpp import LlamaCppBackend
    from ponder.backends.base import LoadOptions

    model = LlamaCppBackend().load(tiny_r1, LoadOptions(context=2048))
    prompt_tokens = len(model.tokenize(model_prompt(model, QUESTION)))
    reply = collect_reply(generate_reply(model, QUESTION, GREEDY))
    model.close()
    return prompt_tokens, reply


@pytest.fixture(scope="module")
def plain_llama_server(tiny_r1):
    """llama-server with the GGUF's own R1 template, whose generation prompt lacks "<think>\\n"."""
    from tests.support.servers import llama_server

    with llama_server(tiny_r1) as server:
        yield server


def backend_events(model, params=GREEDY):
    return list(model.stream(model_prompt(model, QUESTION), params))


def test_llama_server_completes_the_prompt_ponder_renders_token_for_token(plain_llama_server, local_reply):
    prompt_tokens, local = local_reply
    model = connect(plain_llama_server.url)
    assert model.facts.kind == "llama-server" and model.info.renders_prompt
    reply = collect_reply(generate_reply(model, QUESTION, GREEDY))
    assert reply.stats.prompt_tokens == prompt_tokens  # BOS once, "<think>\n" forced: the local prompt exactly
    assert (reply.reasoning, reply.answer) == (local.reasoning, local.answer)
    assert reply.stats.route == "/v1/completions, prompt rendered by ponder"

    # What its chat endpoint would have done: the server's template, without "<think>\n".
    model.info = replace(model.info, renders_prompt=False)
    through_chat = collect_reply(generate_reply(model, QUESTION, GREEDY))
    assert through_chat.stats.prompt_tokens < prompt_tokens and ANSWER not in through_chat.answer
    model.close()


def test_reasoning_content_from_llama_servers_deepseek_format(llama_server, local_reply):
    model = connect(llama_server.url)
    model.info = replace(model.info, renders_prompt=False)  # its chat endpoint, where the server splits
    events = backend_events(model)
    assert {e.part for e in events if isinstance(e, TextDelta)} == {"reasoning", "answer"}
    reply = collect_reply(generate_reply(model, QUESTION, GREEDY))
    assert reply.reasoning.strip() == local_reply[1].reasoning.strip() == REASONING
    assert reply.answer.strip() == ANSWER
    assert reply.stats.route == "/v1/chat/completions, prompt rendered by the server"
    model.close()


def test_raw_content_with_the_opening_tag_is_split_by_ponder(tiny_r1):
    from tests.support.servers import llama_server, r1_think_template

    with llama_server(tiny_r1, "--reasoning-format", "none", chat_template=r1_think_template(tiny_r1)) as server:
        model = connect(server.url)
        model.info = replace(model.info, renders_prompt=False)
        events = backend_events(model)
        assert {e.part for e in events if isinstance(e, TextDelta)} == {None}  # nothing split by the server
        assert "".join(e.text for e in events if isinstance(e, TextDelta)).startswith("<think>")
        reply = collect_reply(generate_reply(model, QUESTION, GREEDY))
        model.close()
    assert reply.reasoning.strip() == REASONING and reply.answer.strip() == ANSWER


def test_the_reasoning_field_from_mlx_lm_server(mlx_lm_server):
    model = connect(mlx_lm_server.url)
    assert model.facts.kind == "mlx_lm.server" and not model.info.renders_prompt
    events = backend_events(model)
    assert "reasoning" in {e.part for e in events if isinstance(e, TextDelta)}
    reply = collect_reply(generate_reply(model, QUESTION, GREEDY))
    model.close()
    assert reply.reasoning.strip() == REASONING and reply.answer.strip() == ANSWER


def test_a_plain_model_behind_a_raw_server_keeps_its_answer(llama_cpp_python_server_smollm2):
    model = connect(llama_cpp_python_server_smollm2.url)
    assert model.facts.kind == "llama-cpp-python" and not model.info.chat.reasoning
    reply = collect_reply(generate_reply(model, [Message("user", "Say hello.")], GREEDY))
    model.close()
    assert reply.reasoning == "" and len(reply.answer.strip()) > 3

    # --model-kind says otherwise: the same text is then taken for unfinished reasoning.
    out = run_ponder("ask", "--server", llama_cpp_python_server_smollm2.url, "--model-kind", "reasoning",
                     "--temperature", "0", "--max-tokens", "40", "--json", "--no-log", "Say hello.")
    data = json.loads(out.stdout)
    assert data["answer"] == "" and data["reasoning"]


def test_samples_are_the_choices_of_one_request_where_the_server_takes_n(llama_server):
    with FaultProxy(llama_server.url) as proxy:
        model = connect(proxy.url)
        replies = draw(model, QUESTION, GenerationParams(temperature=0.8, max_tokens=200, seed=1), 4)
        model.close()
        posts = [r for r in proxy.requests if r.method == "POST"]
    assert len(replies) == 4 and all("\\boxed{84}" in r.answer for r in replies)
    assert len(posts) == 1 and posts[0].json()["n"] == 4


def test_samples_are_separate_requests_where_the_server_ignores_n(llama_cpp_python_server_smollm2):
    with FaultProxy(llama_cpp_python_server_smollm2.url) as proxy:
        model = connect(proxy.url)
        replies = draw(model, [Message("user", "Say hello.")], GenerationParams(max_tokens=20, seed=5), 3)
        model.close()
        bodies = [r.json() for r in proxy.requests if r.method == "POST"]
    assert len(replies) == 3 and all(r.answer for r in replies)
    assert bodies[0]["n"] == 3 and sorted(b["seed"] for b in bodies[1:]) == [6, 7]  # seeds step from --seed


def test_an_early_stop_through_a_server_sends_no_more_requests_once_settled(llama_server):
    with FaultProxy(llama_server.url) as proxy:
        model = connect(proxy.url)
        events = []
        replies = draw(model, QUESTION, GenerationParams(temperature=0, max_tokens=200), 6, concurrency=1,
                       on_event=lambda index, event: events.append((index, type(event).__name__)),
                       settle=lambda done, remaining: len(done) == 2)
        model.close()
        posts = [r for r in proxy.requests if r.method == "POST"]
    assert [reply is not None for reply in replies] == [True, True, False, False, False, False]
    assert len(posts) == 2 and "n" not in posts[0].json()  # no request for n choices: it could not be stopped
    assert events == [(0, "Reply"), (1, "Reply"), (2, "Skipped"), (3, "Skipped"), (4, "Skipped"), (5, "Skipped")]


def test_solve_through_a_server_reports_each_sample(llama_server, tmp_path):
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path), PONDER_SERVER=llama_server.url)
    out = run_ponder("solve", "-n", "3", "--temperature", "0", "What is 12*7?", env=env)
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stderr.decode().splitlines() if line.startswith("sample")] == \
        ["sample 1/3: 84", "sample 2/3: 84", "sample 3/3: 84"]
    assert out.stdout.decode().splitlines() == ["Answer: 84", "Votes (3 samples): 84 ×3"]


def test_ask_in_a_pipe_and_as_json(llama_server, tmp_path):
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path), PONDER_SERVER=llama_server.url)
    piped = run_ponder("ask", "--temperature", "0", "What is 12*7?", env=env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode() == ANSWER + "\n"  # the answer alone; reasoning went to stderr
    assert piped.stderr.decode() == REASONING + "\n"

    as_json = run_ponder("ask", "--temperature", "0", "--json", "--stats", "What is 12*7?", env=env)
    data = json.loads(as_json.stdout)
    assert data["reasoning"].strip() == REASONING and data["answer"] == ANSWER
    assert data["backend"] == "server (llama-server)" and data["stats"]["route"].startswith("/v1/completions")
    assert data["stats"]["prompt_tokens"] == 13 and data["stats"]["tokens_per_s"] > 0
    assert "via /v1/completions, prompt rendered by ponder" in as_json.stderr.decode()
    with sqlite3.connect(tmp_path / "history.db") as db:
        stored = db.execute("SELECT content, reasoning, finish_reason FROM turns WHERE role = 'assistant'").fetchall()
    assert len(stored) == 2 and stored[0][0].strip() == ANSWER and stored[0][1].strip() == REASONING


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_chat_sends_earlier_turns_without_their_reasoning(llama_server, route):
    with FaultProxy(llama_server.url) as proxy:
        model = connect(proxy.url)
        model.info = replace(model.info, renders_prompt=route == "completions")
        repl, term = piped_repl(model, b"What is 12*7?\nWhat is 2+2?\n", GREEDY)
        repl.loop()
        output = term.stdout.getvalue()
        model.close()
        second = [r.json() for r in proxy.requests if r.method == "POST"][1]
    assert output.startswith(ANSWER + "\n")
    sent = second["prompt"] if route == "completions" else json.dumps(second["messages"], ensure_ascii=False)
    assert "\\boxed{84}" in sent and "10*7" not in sent  # turn one's answer, not its reasoning


def test_batch_keeps_requests_in_flight_and_writes_each_task_once(llama_server, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "problem": "What is 12*7?", "answer": "84"}) + "\n"
                             for i in range(6)))
    results = tmp_path / "results.jsonl"
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path))
    out = run_ponder("batch", str(tasks), "-o", str(results), "--server", llama_server.url, "--parallel", "3",
                     "--samples", "2", "--temperature", "0", env=env)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == list(range(6))
    assert all(len(r["samples"]) == 2 and r["pass@1"] == 1.0 for r in lines)
    assert "accuracy (pass@1): 100.0% over 6 problems" in out.stderr.decode()


def test_batch_resumes_exactly_after_a_kill_mid_flight(llama_server, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "prompt": f"Tell me about the number {i}."}) + "\n"
                             for i in range(12)))
    results = tmp_path / "results.jsonl"
    args = [sys.executable, "-m", "ponder", "batch", str(tasks), "-o", str(results), "--server", llama_server.url,
            "--parallel", "4", "--max-tokens", "300"]
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path))
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not results.exists() or results.read_text().count("\n") < 2):
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    written = results.read_text().count("\n")
    assert 2 <= written < 12  # killed with tasks in flight
    second = subprocess.run(args, env=env, capture_output=True, timeout=120)
    assert second.returncode == 0, second.stderr
    ids = [json.loads(line)["id"] for line in results.read_text().splitlines()]
    assert sorted(ids) == list(range(12))  # each task once: none lost, none twice


def test_backends_and_doctor_describe_the_server(llama_server):
    listed = run_ponder("backends", "--server", llama_server.url)
    assert f"server {llama_server.url}: reachable · llama-server" in listed.stdout.decode()
    rows = json.loads(run_ponder("backends", "--json", "--server", llama_server.url).stdout)
    server = next(r for r in rows if r["name"] == "server")
    assert server["kind"] == "llama-server" and len(server["models"]) == 1
    assert list(server["contexts"].values()) == [512]  # one slot's share of -c 2048 -np 4
    doctor = run_ponder("doctor", env=ponder_env(PONDER_SERVER=llama_server.url))
    assert "reachable · llama-server" in doctor.stdout.decode()


def test_the_server_named_in_the_config_file(llama_server, tmp_path):
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path), PONDER_CONFIG=str(tmp_path / "config.toml"))
    assert run_ponder("config", "set", "server", llama_server.url, env=env).returncode == 0
    out = run_ponder("solve", "--answer-only", "--temperature", "0", "What is 12*7?", env=env)
    assert (out.returncode, out.stdout.decode()) == (0, "84\n")


def test_a_thinking_budget_through_a_server_continues_its_raw_prompt(llama_server, tmp_path):
    env = ponder_env(PONDER_DATA_DIR=str(tmp_path), PONDER_SERVER=llama_server.url)
    from tests.support import tiny_r1 as tiny

    out = run_ponder("ask", "--temperature", "0", "--think-budget", str(tiny.BUDGET), "--json", tiny.LONG_QUESTION,
                     env=env)
    data = json.loads(out.stdout)
    assert data["reasoning_end"] == "budget" and data["reasoning"].startswith("Let me spell it out")
    assert "Considering the limited time by the user" in data["reasoning"]
    assert data["answer"] == tiny.BUDGET_ANSWER  # the server's model read the message after its own reasoning


def test_a_thinking_budget_is_refused_where_the_server_renders_the_prompt(mlx_lm_server, tmp_path):
    out = run_ponder("ask", "--server", mlx_lm_server.url, "--think-budget", "10", "What is 12*7?",
                     env=ponder_env(PONDER_DATA_DIR=str(tmp_path)))
    assert out.returncode == 1
    assert b"asked through its chat endpoint, where ponder cannot end the reasoning" in out.stderr
