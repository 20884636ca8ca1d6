"""--schema and --choice on llama.cpp, with the real tiny R1 (trained to answer in R1's shape) and SmolLM2:
the reasoning is free, the answer is what the constraint allows, checked again with jsonschema."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ponder.constraint import ConstraintBroken, from_options
from ponder.events import GenerationParams, Message
from ponder.exchange import collect_reply, generate_reply
from tests.support import tiny_r1 as tiny
from tests.support.cli import run_ponder

QUESTION = [Message("user", "What is 12*7?")]
GREEDY = GenerationParams(temperature=0, max_tokens=300)

SCHEMAS = {
    "nested object, enum, integer range": {
        "type": "object",
        "properties": {"result": {"type": "object", "properties": {"value": {"type": "integer", "minimum": 0,
                                                                             "maximum": 200},
                                                                   "unit": {"enum": ["none", "apples"]}},
                                  "required": ["value", "unit"], "additionalProperties": False},
                       "sure": {"type": "boolean"}},
        "required": ["result", "sure"], "additionalProperties": False,
    },
    "array with bounds": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                          "minItems": 2, "maxItems": 4},
    "optional keys and a pattern": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"},
                       "note": {"type": "string", "maxLength": 6}},
        "required": ["code"], "additionalProperties": False,
    },
}


def load(path: str, context: int = 2048):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    return LlamaCppModel(path, LoadOptions(context=context))


@pytest.fixture(scope="module")
def r1(tiny_r1):
    model = load(tiny_r1)
    yield model
    model.close()


@pytest.fixture(scope="module")
def smol(smollm2):
    model = load(smollm2)
    yield model
    model.close()


def constrained(model, messages, schema=None, choices=None, params=GREEDY, answer_now=None):
    constraint = from_options(json.dumps(schema) if schema is not None else None, choices)
    return collect_reply(generate_reply(model, messages, replace(params, constraint=constraint), answer_now))


@pytest.mark.parametrize("name", SCHEMAS)
def test_each_schema_gives_an_answer_that_validates_on_both_models(r1, smol, name):
    schema = SCHEMAS[name]
    for model, params in ((r1, GREEDY), (smol, GREEDY), (r1, replace(GREEDY, temperature=0.8, seed=3))):
        reply = constrained(model, QUESTION, schema, params=params)
        assert reply.finish_reason == "stop", reply.answer
        jsonschema.validate(json.loads(reply.answer), schema)  # the answer as written, not only ponder's value
        assert reply.parsed.value == json.loads(reply.answer)
        assert reply.answer.strip() == reply.answer.lstrip("\n")  # nothing after the document


LEAVES = st.one_of(
    st.builds(lambda low, span: {"type": "integer", "minimum": low, "maximum": low + span},
              st.integers(-50, 50), st.integers(0, 100)),
    st.lists(st.sampled_from(["red", "green", "blue", "x y", "\u00e9t\u00e9"]), min_size=1, max_size=4,
             unique=True).map(lambda values: {"enum": values}),
    st.just({"type": "boolean"}),
    st.integers(1, 8).map(lambda n: {"type": "string", "maxLength": n}),
    st.just({"type": "string", "pattern": "^[a-c]{1,3}$"}),
    st.integers(0, 2).map(lambda n: {"type": "array", "items": {"type": "boolean"}, "minItems": n,
                                     "maxItems": n + 2}),
)


def objects(children):
    return st.dictionaries(st.sampled_from(["a", "b", "c", "key"]), children, min_size=1, max_size=3).flatmap(
        lambda props: st.sets(st.sampled_from(sorted(props))).map(
            lambda required: {"type": "object", "properties": props, "required": sorted(required),
                              "additionalProperties": False}))


SCHEMA_FAMILY = objects(st.one_of(LEAVES, objects(LEAVES)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMA_FAMILY, seed=st.integers(0, 1000))
def test_schemas_drawn_from_a_family_all_validate(r1, schema, seed):
    reply = constrained(r1, QUESTION, schema, params=GenerationParams(temperature=0.7, seed=seed, max_tokens=400))
    assert reply.finish_reason == "stop", (schema, reply.answer)
    jsonschema.validate(json.loads(reply.answer), schema)


def test_the_grammar_does_not_reach_the_reasoning(r1):
    free = collect_reply(generate_reply(r1, QUESTION, GREEDY))
    for schema in SCHEMAS.values():
        reply = constrained(r1, QUESTION, schema)
        assert reply.reasoning == free.reasoning and reply.stats.reasoning_tokens == free.stats.reasoning_tokens
    assert free.answer.strip() == tiny.NO_THINKING_ANSWER or "84" in free.answer  # the free answer was prose


def test_a_choice_is_exactly_one_of_the_choices(r1, smol):
    for model in (r1, smol):
        for choices in (["yes", "no"], ["84", "eighty-four", "none of these"]):
            reply = constrained(model, QUESTION, choices=choices)
            assert reply.answer.strip() in choices and reply.parsed.value == reply.answer.strip()


@pytest.mark.parametrize("how", ["budget", "no thinking", "answer now", "loop"])
def test_every_early_end_of_the_reasoning_is_followed_by_a_constrained_answer(r1, how):
    schema = SCHEMAS["nested object, enum, integer range"]
    messages, params, now = [Message("user", tiny.LONG_QUESTION)], GREEDY, None
    if how == "budget":
        params = replace(GREEDY, think_budget=tiny.BUDGET)
    elif how == "no thinking":
        params = replace(GREEDY, think_budget=0)
    elif how == "answer now":
        now = threading.Event()
        now.set()
    else:
        messages = [Message("user", tiny.LOOP_QUESTION)]
    reply = constrained(r1, messages, schema, params=params, answer_now=now)
    assert reply.stats.reasoning_end == {"no thinking": "budget", "answer now": "user"}.get(how, how)
    assert reply.finish_reason == "stop"
    jsonschema.validate(json.loads(reply.answer), schema)


def test_the_reply_ends_with_the_document_and_a_cut_one_has_no_value(r1):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    reply = constrained(r1, QUESTION, schema)
    assert reply.stats.answer_tokens <= 8  # `{"n":7}` and the blank line: no tokens wasted after the brace
    cut = constrained(r1, QUESTION, {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]},
                      params=replace(GREEDY, max_tokens=reply.stats.reasoning_tokens + 3))
    assert cut.finish_reason == "length" and cut.parsed is None


def test_the_check_after_generation_catches_an_answer_the_grammar_let_through(r1, monkeypatch):
    from ponder.constraint import Constraint

    wrong = Constraint(choices=("[9, 9, 9, 9, 9, 9]",)).grammar()  # a grammar that breaks the schema's bounds
    monkeypatch.setattr(Constraint, "grammar", lambda self: wrong)
    with pytest.raises(ConstraintBroken, match="does not match the schema"):
        constrained(r1, QUESTION, SCHEMAS["array with bounds"])


# --- the command line ---------------------------------------------------------------------------------


def test_ask_prints_the_document_alone_for_jq_and_a_choice_for_if(tiny_r1, tmp_path):
    schema = tmp_path / "answer.json"
    schema.write_text(json.dumps(SCHEMAS["nested object, enum, integer range"]))
    out = run_ponder("ask", "-m", tiny_r1, "--temperature", "0", "--schema", str(schema), "What is 12*7?")
    assert out.returncode == 0, out.stderr
    document = out.stdout.decode()
    assert document.endswith("}\n") and document.count("\n") == 1
    jsonschema.validate(json.loads(document), SCHEMAS["nested object, enum, integer range"])
    choice = run_ponder("ask", "-m", tiny_r1, "--temperature", "0", "--choice", "yes,no", "Is 12*7 84?")
    assert choice.returncode == 0 and choice.stdout.decode() in ("yes\n", "no\n")
    concise = run_ponder("ask", "-m", tiny_r1, "--no-think", "--json", "--max-tokens", "60", "--schema",
                         "name: a short name, age int", "Who?")
    data = json.loads(concise.stdout)
    assert concise.returncode in (0, 1) and data["finish_reason"] in ("stop", "length")
    if data["finish_reason"] == "stop":
        assert set(data["parsed"]) == {"name", "age"} and isinstance(data["parsed"]["age"], int)


def test_a_cut_off_document_exits_1_with_what_arrived_on_stderr(tiny_r1):
    out = run_ponder("ask", "-m", tiny_r1, "--no-think", "--max-tokens", "6", "--schema",
                     '{"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}', "Say hi")
    assert out.returncode == 1 and out.stdout == b""
    assert "what arrived: {" in out.stderr.decode() and "finish_reason: length" in out.stderr.decode()


@pytest.mark.parametrize("args, message", [
    (["--schema", '{"type": "strin"}'], "--schema: not a valid JSON Schema"),
    (["--schema", "{not json"], "the --schema text is not JSON"),
    (["--schema", "[1, 2]"], "the --schema text is not a JSON Schema"),
    (["--schema", "/no/such/schema.json"], "schema file not found: /no/such/schema.json"),
    (["--schema", '{"type": "array", "uniqueItems": true}'], "ponder cannot constrain an answer to this"),
    (["--schema", "name, age integer"], "--schema: cannot read 'age integer'"),
    (["--schema", "{}", "-x"], "code extraction"),
    (["--schema", "{}", "--choice", "a,b"], "--schema and --choice cannot be used together"),
    (["--choice", "a,,b"], "has an empty choice"),
])
def test_bad_constraints_are_one_line_usage_errors_before_the_model_loads(args, message):
    out = run_ponder("ask", "-m", "/no/such/model.gguf", *args, "hi")
    err = out.stderr.decode()
    assert out.returncode == 2 and message in err, err
    assert "Traceback" not in err and "model not found" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize("share", [0.001, 0.05, 0.2, 0.5, 0.99])
def test_the_mask_keeps_exactly_the_allowed_logits_sparse_or_dense(r1, share):
    import numpy as np

    mask = r1.answer_mask("no reasoning here", GenerationParams(constraint=from_options(None, ["a", "b"])))
    mask.active = True
    rng = np.random.default_rng(int(share * 1000))
    words = np.where(rng.random(mask._bits.shape[1]) < share, rng.integers(-2**31, 2**31, mask._bits.shape[1]), 0)
    words[0] = 1  # at least one token allowed
    mask._fill = lambda matcher, bits: np.copyto(bits[0], words.astype(np.int32))
    logits = rng.standard_normal(r1._n_vocab).astype(np.float32)
    expected = logits.copy()
    allowed = np.unpackbits(words.astype(np.int32).view(np.uint8), count=r1._n_vocab, bitorder="little").astype(bool)
    expected[~allowed] = -np.inf
    mask._fill(mask._matcher, mask._bits)
    mask._apply(logits)  # (the mask alone: draw uses it only where the best token is forbidden)
    assert np.array_equal(logits, expected)
