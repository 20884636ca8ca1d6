"""--schema and --choice on MLX (mlx-lm, on CPU here), alone and in its batch decoder, with the real MLX
conversions of the tiny R1 (trained to answer in R1's shape) and SmolLM2: the reasoning is free, the answer is
what the constraint allows, checked again with jsonschema."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings

from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.constraint import Constraint, checked, from_options
from ponder.errors import BackendError
from ponder.events import Finished, GenerationParams, Message, TextDelta
from ponder.exchange import collect_reply, generate_reply, model_prompt
from ponder.reasoning import CLOSE_TAG
from tests.support import tiny_r1 as tiny
from tests.test_constraint_llamacpp import SCHEMA_FAMILY, SCHEMAS

QUESTION = [Message("user", "What is 12*7?")]
GREEDY = GenerationParams(temperature=0, max_tokens=300)
SEEDED = replace(GREEDY, temperature=0.8, seed=3)
NUMBER = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["n"], "additionalProperties": False}


def load(path: str, sequences: int = 1):
    return get_backend("mlx").load(path, LoadOptions(context=2048, sequences=sequences))


@pytest.fixture(scope="module")
def r1(tiny_r1_mlx):
    model = load(tiny_r1_mlx)
    yield model
    model.close()


@pytest.fixture(scope="module")
def smol(smollm2_mlx):
    model = load(smollm2_mlx)
    yield model
    model.close()


def constrained(model, messages, schema=None, choices=None, params=GREEDY, answer_now=None):
    constraint = from_options(json.dumps(schema) if schema is not None else None, choices)
    return collect_reply(generate_reply(model, messages, replace(params, constraint=constraint), answer_now))


def test_the_grammar_sees_every_token_the_model_can_draw(r1, smol):
    for model, logits in ((r1, 152064), (smol, 49152)):  # R1's embedding is wider than its tokenizer (151666)
        mask = model.answer_mask(model_prompt(model, QUESTION), replace(GREEDY, constraint=from_options("{}", None)))
        vocabulary = model._grammar_vocabulary
        assert vocabulary.vocab_size == logits and set(vocabulary.eos_tokens) == model.end_ids
        assert model.answer_mask("x", replace(GREEDY, constraint=from_options("{}", None))) is not None
        assert model._grammar_vocabulary is vocabulary  # built once a model
        text = '</think>\n\n{"a": [1, "é"]}'
        assert vocabulary.tokenize_str(text) == model._tokenizer.encode(text, add_special_tokens=False)
        assert mask.active == (model is smol)  # the R1's answer starts after its own </think>


@pytest.mark.parametrize("name", SCHEMAS)
def test_each_schema_gives_an_answer_that_validates_on_both_models(r1, smol, name):
    schema = SCHEMAS[name]
    for model, params in ((r1, GREEDY), (smol, GREEDY), (r1, SEEDED), (smol, SEEDED)):
        reply = constrained(model, QUESTION, schema, params=params)
        assert reply.finish_reason == "stop", reply.answer
        jsonschema.validate(json.loads(reply.answer), schema)  # the answer as written, not only ponder's value
        assert reply.parsed.value == json.loads(reply.answer)
        assert reply.answer.strip() == reply.answer.lstrip("\n")  # nothing after the document


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=SCHEMA_FAMILY)
def test_schemas_drawn_from_a_family_all_validate(r1, smol, schema):
    for model in (r1, smol):
        reply = constrained(model, QUESTION, schema, params=GenerationParams(temperature=0.7, seed=5, max_tokens=400))
        assert reply.finish_reason == "stop", (schema, reply.answer)
        jsonschema.validate(json.loads(reply.answer), schema)


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_the_grammar_does_not_reach_the_reasoning(r1, params):
    free = collect_reply(generate_reply(r1, QUESTION, params))
    assert free.reasoning and not free.answer.lstrip().startswith("{")  # the free answer was prose
    for schema in SCHEMAS.values():
        reply = constrained(r1, QUESTION, schema, params=params)
        assert reply.reasoning == free.reasoning and reply.stats.reasoning_tokens == free.stats.reasoning_tokens


def test_a_choice_is_exactly_one_of_the_choices(r1, smol):
    for model in (r1, smol):
        for choices in (["yes", "no"], ["84", "eighty-four", "none of these"]):
            for params in (GREEDY, SEEDED):
                reply = constrained(model, QUESTION, choices=choices, params=params)
                assert reply.finish_reason == "stop"
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


def test_the_reply_ends_with_the_document_even_on_the_budgets_last_token(r1, smol):
    for model in (r1, smol):
        reply = constrained(model, QUESTION, NUMBER)
        assert reply.finish_reason == "stop" and reply.stats.answer_tokens <= 8  # no tokens wasted after the brace
        tokens = reply.stats.reasoning_tokens + reply.stats.answer_tokens
        exact = constrained(model, QUESTION, NUMBER, params=replace(GREEDY, max_tokens=tokens))
        assert exact.finish_reason == "stop" and exact.answer == reply.answer  # complete, not cut: "stop"
        cut = constrained(model, QUESTION, NUMBER, params=replace(GREEDY, max_tokens=tokens - 1))
        assert cut.finish_reason == "length" and cut.parsed is None


def test_a_broken_grammar_is_one_error_and_the_model_goes_on(r1, monkeypatch):
    from ponder.grammar import AnswerMask

    def refuse(self, token, text):
        raise BackendError("the answer left its grammar: (test)", hint="this is a bug in ponder")

    with monkeypatch.context() as patch:
        patch.setattr(AnswerMask, "took", refuse)
        with pytest.raises(BackendError, match="left its grammar"):
            constrained(r1, QUESTION, NUMBER)
    reply = constrained(r1, QUESTION, NUMBER)
    assert reply.finish_reason == "stop" and isinstance(reply.parsed.value["n"], int)


# --- the batch decoder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny_r1_mlx", "smollm2_mlx"])
def three_slots(request):
    """A model loaded to decode three sequences at once (the R1 reasons first; SmolLM2 answers at once)."""
    model = load(request.getfixturevalue(request.param), sequences=3)
    yield model
    model.close()


def together(model, requests) -> list[tuple[list[int], str, Finished]]:
    """Each request's token ids, text and Finished, decoded on one BatchDecoder."""
    decoder = model.batch()
    try:
        slots = [decoder.add(text, params, threading.Event()) for text, params in requests]
        ids, texts, ends = {s: [] for s in slots}, {s: [] for s in slots}, {}
        while len(ends) < len(slots):
            for slot, event in decoder.step():
                if isinstance(event, TextDelta):
                    ids[slot] += event.ids
                    texts[slot].append(event.text)
                else:
                    ends[slot] = event
        return [(ids[s], "".join(texts[s]), ends[s]) for s in slots]
    finally:
        decoder.close()


def alone(model, text: str, params: GenerationParams) -> tuple[list[int], str, Finished]:
    events = list(model.stream(text, params))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    return [i for e in deltas for i in e.ids], "".join(e.text for e in deltas), events[-1]


def answer_of(model, text: str) -> str:
    return text.rsplit(CLOSE_TAG, 1)[-1] if model.info.chat.reasoning else text


def test_sequences_with_different_constraints_each_validate_token_for_token_as_alone(three_slots):
    model = three_slots
    schema = checked(Constraint(schema=SCHEMAS["nested object, enum, integer range"], source="test"))
    choice = checked(Constraint(choices=("two", "three", "four"), source="test"))
    requests = [(model_prompt(model, QUESTION), replace(GREEDY, constraint=schema)),
                (model_prompt(model, [Message("user", tiny.LONG_QUESTION)]), replace(SEEDED, constraint=choice)),
                (model_prompt(model, QUESTION), GREEDY)]  # a free one beside them stays free
    batched = together(model, requests)
    (_, text, end), (_, choice_text, choice_end), (_, free_text, _) = batched
    assert end.finish_reason == choice_end.finish_reason == "stop"  # ended by the grammar, within the budget
    jsonschema.validate(json.loads(answer_of(model, text)), SCHEMAS["nested object, enum, integer range"])
    assert schema.check(answer_of(model, text)).value == json.loads(answer_of(model, text))
    assert choice.check(answer_of(model, choice_text)).value in ("two", "three", "four")
    assert not answer_of(model, free_text).lstrip().startswith("{")
    if model.info.chat.reasoning:  # the reasoning ran free: the mask began after the model's own </think>
        assert CLOSE_TAG in text and CLOSE_TAG in choice_text
    for (text_in, params), got in zip(requests, batched):
        expected = alone(model, text_in, params)
        assert got[:2] == expected[:2]  # token for token, and the same text
        assert got[2].finish_reason == expected[2].finish_reason
        assert got[2].stats.generated_tokens == expected[2].stats.generated_tokens


def test_a_sequence_whose_grammar_breaks_ends_alone(three_slots, monkeypatch):
    model = three_slots
    number = checked(Constraint(schema=NUMBER, source="test"))
    made = model.answer_mask

    def breaking(prompt, params):  # the first sequence's grammar refuses the first answer token it sees
        mask = made(prompt, params)
        if params.seed == 1:
            def refuse(token, text, took=mask.took):
                if mask.active:
                    raise BackendError("the answer left its grammar: (test)", hint="this is a bug in ponder")
                return took(token, text)

            mask.took = refuse
        return mask

    monkeypatch.setattr(model, "answer_mask", breaking)
    text = model_prompt(model, QUESTION)
    (_, _, broken), (_, good_text, good) = together(
        model, [(text, replace(GREEDY, constraint=number, seed=1)), (text, replace(GREEDY, constraint=number, seed=2))])
    assert broken.finish_reason == "interrupted" and "left its grammar: (test)" in broken.error
    assert good.finish_reason == "stop" and number.check(answer_of(model, good_text)).value["n"] in range(10)


def test_ask_on_an_mlx_model_prints_the_document_alone_and_a_choice(tiny_r1_mlx):
    from tests.support.cli import run_ponder

    out = run_ponder("ask", "-m", tiny_r1_mlx, "--temperature", "0", "--schema", json.dumps(NUMBER), "What is 12*7?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(b"}\n") and out.stdout.count(b"\n") == 1
    jsonschema.validate(json.loads(out.stdout), NUMBER)
    choice = run_ponder("ask", "-m", tiny_r1_mlx, "--no-think", "--choice", "yes,no", "Is 12*7 84?")
    assert choice.returncode == 0 and choice.stdout in (b"yes\n", b"no\n"), choice.stderr
