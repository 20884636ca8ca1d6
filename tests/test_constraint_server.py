"""--schema and --choice through servers on loopback: llama-server's raw route with the real tiny R1 (the
reasoning free, the answer held to ponder's grammar around the schema's own), vLLM-like and Ollama-like
scripted servers (what each request carries; a plain refusal, before anything is generated, where a
server cannot constrain the answer alone)."""

from __future__ import annotations

import codecs
import copy
import json
import re
from dataclasses import replace

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ponder.backends.server import connect
from ponder.backends.server_constraint import compose
from ponder.constraint import Constraint, checked
from ponder.errors import UsageError
from ponder.events import GenerationParams, Message
from ponder.exchange import collect_reply, generate_reply, model_prompt
from ponder.prompt import ChatFormat
from ponder.reasoning import CLOSE_TAG
from tests.support.cli import run_ponder
from tests.support.scripted_server import Scripted, delta, send_events

QUESTION = [Message("user", "What is 12*7?")]
GREEDY = GenerationParams(temperature=0.0, max_tokens=300)
SCHEMA = {  # bounded every way, so that even a tiny model's answer ends
    "type": "object",
    "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 200},
                   "unit": {"enum": ["none", "apples"]},
                   "note": {"type": "string", "maxLength": 12},
                   "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2}},
    "required": ["answer", "unit", "note"],
    "additionalProperties": False,
}
SCHEMA_TEXT = json.dumps(SCHEMA)
CHOICES = ("yes", "no", "maybe")


def schema_constraint(schema: dict = SCHEMA) -> Constraint:
    return checked(Constraint(schema=schema, source="--schema"))


def choice_constraint() -> Constraint:
    return checked(Constraint(choices=CHOICES, source="--choice"))


def one_error(result, code: int) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, f"exit {result.returncode}\nstdout: {result.stdout!r}\nstderr: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("ponder: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- the grammar ponder puts around the server's (no server needed) ---------------------------------


def as_regex(grammar: str, rule: str = "root") -> str:
    """A Python regex for a GBNF rule of the subset ponder writes (literals, classes, groups, | * ?),
    its rule references inlined: the same language, to check the grammar's text against."""
    rules = dict(re.findall(r"(?m)^([\w-]+) ::= (.*)$", grammar))
    out = []
    for piece in re.findall(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[\w-]+|[()|*?]|\s+', rules[rule]):
        if piece.isspace():
            continue
        if piece.startswith('"'):
            out.append(re.escape(codecs.decode(piece[1:-1], "unicode_escape")))
        elif piece.startswith("["):
            out.append(piece)
        elif piece in "()":
            out.append("(?:" if piece == "(" else ")")
        elif piece in "|*?":
            out.append(piece)
        else:
            out.append(f"(?:{as_regex(grammar, piece)})")
    return "".join(out)


PIECES = ["<", "/", "t", "h", "i", "n", "k", ">", "x", "\n", "é", "</", "</thin", "</think", CLOSE_TAG, "<</think>"]


@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_the_reasoning_runs_free_up_to_the_first_closing_tag(text):
    grammar = compose('root ::= "yes" | "no"\n', free_reasoning=True)
    free = re.compile(as_regex(grammar, "ponder-free"), re.S)
    whole = re.compile(as_regex(grammar), re.S)
    assert bool(free.fullmatch(text)) == (CLOSE_TAG not in text)
    # The reply: free text, the tag, an optional blank line, the answer; nothing after the first tag but that.
    assert bool(whole.fullmatch(text + CLOSE_TAG + "\n\nyes")) == (CLOSE_TAG not in text)
    assert not whole.fullmatch(text + CLOSE_TAG + "yes" + CLOSE_TAG)


def test_the_servers_rules_keep_their_meaning_beside_ponders():
    # A schema's grammar with a rule named as ponder's would be, and `root` in a literal and a reference.
    theirs = 'root ::= "root" ponder-answer | "(" root ")"\nponder-answer ::= "x"\n'
    grammar = compose(theirs, free_reasoning=False)
    assert grammar.splitlines() == ['root ::= ponder-lead? ponder-answer-2', 'ponder-lead ::= "\\n" "\\n"?',
                                    'ponder-answer-2 ::= "root" ponder-answer | "(" ponder-answer-2 ")"',
                                    'ponder-answer ::= "x"']
    tricky = ('a "quoted" \\ choice', "two\nlines", "tab\there")
    choices = compose("root ::= " + " | ".join(_literal(c) for c in tricky) + "\n", free_reasoning=False)
    for choice in tricky:
        assert re.fullmatch(as_regex(choices), "\n\n" + choice, re.S) and re.fullmatch(as_regex(choices), choice)
    assert not re.fullmatch(as_regex(choices), "two")


def _literal(text: str) -> str:
    from ponder.backends.server_constraint import _literal as literal

    return literal(text)


# --- llama-server's raw route, the real tiny R1 -----------------------------------------------------


@pytest.fixture(scope="module")
def served(llama_server):
    model = connect(llama_server.url)
    assert model.facts.kind == "llama-server" and model.info.renders_prompt and model.info.chat.reasoning
    yield model
    model.close()


def test_a_schema_leaves_the_reasoning_as_it_was_and_the_answer_validates(served):
    free = collect_reply(generate_reply(served, QUESTION, GREEDY))
    params = replace(GREEDY, constraint=schema_constraint())
    path, body, _ = served.constrained_request(model_prompt(served, QUESTION), params)
    assert path == "/completions" and body["grammar"].startswith('root ::= ponder-free "</think>" ponder-lead?')
    assert "json_schema" not in body and "response_format" not in body
    reply = collect_reply(generate_reply(served, QUESTION, params))
    assert CLOSE_TAG not in reply.reasoning and reply.reasoning == free.reasoning  # byte for byte
    assert reply.finish_reason == "stop" and reply.parsed is not None
    jsonschema.validate(reply.parsed.value, SCHEMA)
    assert json.loads(reply.answer) == reply.parsed.value  # the answer is the document (a blank line before)
    for seed in (1, 2, 3):  # sampled answers too
        sampled = collect_reply(generate_reply(served, QUESTION, replace(params, temperature=0.8, seed=seed)))
        jsonschema.validate(sampled.parsed.value, SCHEMA)


def test_a_choice_is_exactly_one_of_them(served):
    reply = collect_reply(generate_reply(served, QUESTION, replace(GREEDY, constraint=choice_constraint())))
    assert reply.finish_reason == "stop" and reply.parsed.value in CHOICES
    assert reply.answer.strip() == reply.parsed.value


@pytest.mark.parametrize("budget", [5, 0], ids=["think-budget", "no-think"])
@pytest.mark.parametrize("shape", ["schema", "choice"])
def test_an_early_end_of_the_reasoning_is_followed_by_a_constrained_answer(served, budget, shape):
    constraint = schema_constraint() if shape == "schema" else choice_constraint()
    reply = collect_reply(generate_reply(served, QUESTION, replace(GREEDY, think_budget=budget, constraint=constraint)))
    assert reply.stats.reasoning_end == "budget" and reply.finish_reason == "stop"
    if shape == "schema":
        jsonschema.validate(reply.parsed.value, SCHEMA)
    else:
        assert reply.parsed.value in CHOICES


def test_a_document_cut_off_by_max_tokens_stays_length_without_a_value(served):
    free = collect_reply(generate_reply(served, QUESTION, GREEDY))
    room = free.stats.reasoning_tokens + 6  # the reasoning, its end, and a few tokens of the document
    reply = collect_reply(generate_reply(served, QUESTION, replace(GREEDY, max_tokens=room,
                                                                   constraint=schema_constraint())),
                          broken=lambda r: AssertionError(r.error))
    assert reply.finish_reason == "length" and reply.parsed is None and reply.answer.strip().startswith("{")


def test_llama_servers_chat_endpoint_is_refused_for_a_reasoning_model(served):
    chatting = copy.copy(served)
    chatting.info = replace(served.info, renders_prompt=False)
    with pytest.raises(UsageError, match=r"this server \(llama-server\) cannot constrain a reasoning model's "
                                         r"answer on its chat endpoint"):
        list(chatting.stream(QUESTION, replace(GREEDY, constraint=choice_constraint())))


def test_ask_through_llama_server_prints_the_document_alone(llama_server):
    base = ("ask", "--server", llama_server.url, "--temperature", "0")
    result = run_ponder(*base, "--schema", SCHEMA_TEXT, "What is 12*7?")
    assert result.returncode == 0, result.stderr.decode()
    jsonschema.validate(json.loads(result.stdout), SCHEMA)
    assert result.stdout.decode().count("\n") == 1  # one line: the document
    result = run_ponder(*base, "--choice", ",".join(CHOICES), "What is 12*7?")
    assert result.returncode == 0 and result.stdout.decode().strip() in CHOICES, result.stderr.decode()
    result = run_ponder(*base, "--schema", SCHEMA_TEXT, "--json", "What is 12*7?")
    jsonschema.validate(json.loads(result.stdout)["parsed"], SCHEMA)


# --- scripted servers: what is sent, and what is refused ----------------------------------------------


@pytest.fixture
def scripted():
    server = Scripted()
    yield server
    server.close()


def serve(scripted, model_id: str, owner: str, answer, version: str | None = None) -> list[dict]:
    """`scripted` as a server of one model, answering each POST with `answer(body)`'s events; the bodies."""
    bodies: list[dict] = []
    scripted.models = {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": owner}]}
    if version is not None:
        scripted.pages["/api/version"] = {"version": version}

    def answered(h, body):
        bodies.append(body)
        send_events(h, answer(body))

    scripted.answer = answered
    return bodies


R1 = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"
PARSED = [delta(None, reasoning="Twelve sevens are 84."), delta('{"answer": 84, "unit": "none", "note": "ok"}',
                                                                finish="stop")]


def test_vllm_gets_the_schema_as_response_format(scripted):
    bodies = serve(scripted, R1, "vllm", lambda body: PARSED)
    result = run_ponder("ask", "--server", scripted.url, "--schema", SCHEMA_TEXT, "What is 12*7?")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == {"answer": 84, "unit": "none", "note": "ok"}
    assert bodies[0]["response_format"] == {"type": "json_schema",
                                            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}


def test_a_choice_sent_to_vllm_as_an_enum_comes_back_as_the_choice(scripted):
    bodies = serve(scripted, R1, "vllm", lambda body: [delta(None, reasoning="Hmm."),
                                                       delta('"ma'), delta('ybe"', finish="stop")])
    result = run_ponder("ask", "--server", scripted.url, "--choice", ",".join(CHOICES), "Is it?")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode() == "maybe\n"
    assert bodies[0]["response_format"]["json_schema"]["schema"] == {"type": "string", "enum": list(CHOICES)}


def test_vllms_raw_route_constrains_a_continuation_from_its_first_token(scripted):
    def answer(body):
        if CLOSE_TAG in body["prompt"]:  # the continuation, after the budget's closing text
            return [{"choices": [{"index": 0, "text": '{"answer": 84, "unit": "none", "note": "ok"}',
                                  "finish_reason": "stop"}]}]
        words = "Let me see , twelve sevens , that is eighty four , I think".split()
        return [{"choices": [{"index": 0, "text": f" {w}", "finish_reason": None}]} for w in words]

    bodies = serve(scripted, R1, "vllm", answer)
    model = connect(scripted.url)
    model.info = replace(model.info, renders_prompt=True, chat=ChatFormat(
        "{% for m in messages %}<｜User｜>{{ m.content }}{% endfor %}<｜Assistant｜>", reasoning=True))
    reply = collect_reply(generate_reply(model, QUESTION, replace(GREEDY, think_budget=3,
                                                                  constraint=schema_constraint())))
    model.close()
    assert len(bodies) == 2 and bodies[0]["prompt"].endswith("<think>\n") and CLOSE_TAG in bodies[1]["prompt"]
    assert all(body["response_format"]["json_schema"]["schema"] == SCHEMA for body in bodies)
    assert reply.stats.reasoning_end == "budget" and reply.parsed.value["answer"] == 84


def test_a_server_without_a_reasoning_parser_is_told_apart_from_a_bug(scripted):
    # vLLM without --reasoning-parser constrains from the first token: no reasoning, no </think>.
    serve(scripted, R1, "vllm", lambda body: [delta('{"answer": 84, "unit": "none", "note": "ok"}', finish="stop")])
    result = run_ponder("ask", "--server", scripted.url, "--schema", SCHEMA_TEXT, "What is 12*7?")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "before its answer began" in err and "--reasoning-parser" in err and "bug" not in err, err


def test_ollama_is_refused_for_a_reasoning_model_before_anything_is_generated(scripted):
    serve(scripted, "deepseek-r1:7b", "library", lambda body: PARSED, version="0.9.0")
    for flags in (["--schema", SCHEMA_TEXT], ["--choice", "yes,no"]):
        result = run_ponder("ask", "--server", scripted.url, *flags, "What is 12*7?")
        line = one_error(result, 2)
        assert line.startswith("ponder: error: this server (Ollama) cannot constrain a reasoning model's answer: ")
    assert scripted.posts() == []


def test_a_plain_model_gets_response_format_where_the_server_takes_it_and_a_refusal_elsewhere(scripted):
    bodies = serve(scripted, "llama3.2:1b", "library", lambda body: [delta('{"answer": 7, "unit": "none", '
                                                                           '"note": ""}', finish="stop")],
                   version="0.9.0")
    result = run_ponder("ask", "--server", scripted.url, "--schema", SCHEMA_TEXT, "What is 3+4?")
    assert result.returncode == 0 and json.loads(result.stdout)["answer"] == 7, result.stderr.decode()
    assert bodies[0]["response_format"]["json_schema"]["schema"] == SCHEMA
    serve(scripted, "qwen2.5-7b-instruct", "organization_owner", lambda body: PARSED)  # LM Studio
    scripted.pages.clear()
    line = one_error(run_ponder("ask", "--server", scripted.url, "--choice", "yes,no", "Is it?"), 2)
    assert line.startswith("ponder: error: this server (LM Studio) cannot constrain an answer: ")
    assert len(scripted.posts()) == 1  # Ollama's only
