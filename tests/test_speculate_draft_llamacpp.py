"""Speculative decoding on llama.cpp with a draft model (--draft): the tiny R1 drafted by a random-weight model
with its vocabulary (nonsense guesses, nearly all rejected) and SmolLM2 drafted by itself (every guess kept).
Either way a reply is the same text as without speculation; a draft that cannot serve is refused at load."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import jsonschema
import llama_cpp as lib
import pytest

from ponder.backends.base import LoadOptions
from ponder.backends.llamacpp import LlamaCppModel
from ponder.constraint import from_options
from ponder.errors import ModelError, UsageError
from ponder.events import Continuation, Finished, GenerationParams, Message, TextDelta
from ponder.exchange import collect_reply, generate_reply
from ponder.prompt import render_prompt
from ponder.speculate import AdaptiveSpeculation, NgramDrafter, speculation_for
from tests.support import tiny_r1 as tiny

GREEDY = GenerationParams(temperature=0, max_tokens=120)
SEEDED = GenerationParams(temperature=0.8, top_p=0.95, seed=7, max_tokens=120)
R1_QUESTIONS = ("What is 12*7?", tiny.LONG_QUESTION, "Write hello world in Python.")
SMOL_QUESTIONS = ("Write a short poem about the sea.", "What is 12*7?")


def load(path: str, draft: str | None = None) -> LlamaCppModel:
    """The model on one thread for every decode, a checked guess's too (llama.cpp gives a batch of several
    tokens all cores): on a busy shared machine, a thread barrier waits for a core at each operation (a
    checked guess took 20x a token's time at a load of 13 on 2 cores). Nothing compared here depends on it."""
    model = LlamaCppModel(path, LoadOptions(context=2048, draft=draft, threads=1))
    for ctx in (model._ctx, model._drafter and model._drafter._ctx):
        if ctx:
            lib.llama_set_n_threads(ctx, 1, 1)
    return model


@pytest.fixture(scope="module")
def r1(tiny_r1, tiny_r1_random):
    model = load(tiny_r1, draft=tiny_r1_random)
    yield model
    model.close()


@pytest.fixture(scope="module")
def smol(smollm2):
    model = load(smollm2, draft=smollm2)
    yield model
    model.close()


def stream(model, prompt, params, cancel=None):
    """A reply's token ids and its Finished, from an empty cache: a prompt processed in one chunk and a
    prompt token decoded again alone (a reused prefix) give slightly different logits, which is not what
    these tests compare."""
    model.streams.trim(0, 0)
    ids, finished = [], None
    for event in model.stream(prompt, params, cancel):
        if isinstance(event, TextDelta):
            ids.extend(event.ids)
        elif isinstance(event, Finished):
            finished = event
    return ids, finished


def counted_once(ids, end, complete_answer=False):
    """The figures add up: the prompt's call gives the first token, each later call its kept guesses and
    one token more, except a last call whose token was the end token (not a token of the reply)."""
    figures = end.stats.speculation
    assert figures is not None and 0 <= figures.accepted <= figures.drafted
    assert len(ids) == end.stats.generated_tokens
    by_end_token = end.finish_reason == "stop" and not complete_answer and ids
    assert len(ids) == figures.accepted + figures.calls + (0 if by_end_token or not ids else 1)
    return figures


def twins(model, messages, params, mode="draft"):
    """The reply without speculation and with it: the same tokens, ended the same way."""
    prompt = render_prompt(model.info.chat, messages)
    plain, plain_end = stream(model, prompt, replace(params, speculate="off"))
    guessed, end = stream(model, prompt, replace(params, speculate=mode))
    assert guessed == plain and end.finish_reason == plain_end.finish_reason, messages[0].content
    assert plain_end.stats.speculation is None
    return plain, counted_once(guessed, end)


def test_greedy_replies_are_the_same_with_a_draft_that_guesses_nonsense(r1):
    drafted = accepted = 0
    for question in R1_QUESTIONS:
        _, figures = twins(r1, [Message("user", question)], GREEDY)
        drafted, accepted = drafted + figures.drafted, accepted + figures.accepted
    assert drafted > 50 and accepted < drafted / 2  # guesses were made, and were mostly wrong


def test_greedy_replies_are_the_same_with_the_model_as_its_own_draft(smol):
    for question in SMOL_QUESTIONS:
        ids, figures = twins(smol, [Message("user", question)], GREEDY)
        assert figures.drafted > 0 and figures.accepted >= 0.9 * figures.drafted  # its own guesses hold
        assert figures.calls * 4 < len(ids)  # several tokens a call


def test_a_seeded_sampled_reply_is_its_unspeculated_twin(r1, smol):
    for model, question in ((r1, R1_QUESTIONS[0]), (r1, tiny.LONG_QUESTION), (smol, SMOL_QUESTIONS[0])):
        twins(model, [Message("user", question)], SEEDED)


def test_runs_that_hit_max_tokens_stop_at_the_same_token(r1, smol):
    for model, question in ((smol, SMOL_QUESTIONS[0]), (r1, tiny.LONG_QUESTION)):
        for limit in (1, 2, 7, 16, 23):  # within and at the end of a guess of 8 or 16 kept whole
            ids, _ = twins(model, [Message("user", question)], replace(GREEDY, max_tokens=limit))
            assert len(ids) == limit


def test_budget_loop_rescue_and_a_continuation_are_the_same_with_a_draft(r1):
    def reply(messages, params, mode):
        r1.streams.trim(0, 0)
        return collect_reply(generate_reply(r1, messages, replace(params, speculate=mode)))

    for messages, params, ending in (([Message("user", tiny.LOOP_QUESTION)], replace(GREEDY, max_tokens=400), "loop"),
                                     ([Message("user", tiny.LONG_QUESTION)],
                                      replace(GREEDY, think_budget=tiny.BUDGET), "budget")):
        plain, guessed = reply(messages, params, "off"), reply(messages, params, "draft")
        assert plain.stats.reasoning_end == ending
        assert (guessed.reasoning, guessed.answer, guessed.finish_reason, guessed.stats.reasoning_tokens) == \
               (plain.reasoning, plain.answer, plain.finish_reason, plain.stats.reasoning_tokens)
    prompt = render_prompt(r1.info.chat, [Message("user", tiny.LONG_QUESTION)])
    start, _ = stream(r1, prompt, replace(GREEDY, max_tokens=5))
    continued = Continuation(prompt, tuple(start), "", "\n</think>\n\n")
    plain, _ = stream(r1, continued, GREEDY)
    guessed, end = stream(r1, continued, replace(GREEDY, speculate="draft"))
    assert guessed == plain and end.stats.speculation.drafted > 0


def test_a_constrained_answer_is_valid_and_the_same_with_a_draft(r1, smol):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}  # else the answer goes on past "n" (until max_tokens)
    cases = ((r1, "What is 12*7?", from_options(json.dumps(schema), None)),
             (smol, "Which ocean is the largest?", from_options(None, ["the Pacific Ocean", "the Atlantic Ocean"])))
    for model, question, constraint in cases:
        replies = {}
        for mode in ("off", "draft"):
            model.streams.trim(0, 0)
            params = replace(GREEDY, constraint=constraint, speculate=mode)
            replies[mode] = collect_reply(generate_reply(model, [Message("user", question)], params))
        plain, guessed = replies["off"], replies["draft"]
        assert (guessed.reasoning, guessed.answer, guessed.finish_reason) == \
               (plain.reasoning, plain.answer, plain.finish_reason)
        assert guessed.parsed is not None and guessed.stats.speculation.drafted > 0
        if model is r1:
            jsonschema.validate(json.loads(guessed.answer), schema)
        else:
            assert guessed.answer.strip() in ("the Pacific Ocean", "the Atlantic Ocean")


def test_auto_guesses_with_the_draft_model_when_there_is_one(smol):
    drafter = smol._drafter
    auto = speculation_for("auto", drafter)
    assert auto.drafter is drafter and isinstance(auto, AdaptiveSpeculation)
    assert not isinstance(speculation_for("auto", drafter, repeatable=True), AdaptiveSpeculation)  # as "draft"
    assert isinstance(speculation_for("ngram", drafter).drafter, NgramDrafter)
    fixed = speculation_for("draft", drafter)
    assert fixed.drafter is drafter and not isinstance(fixed, AdaptiveSpeculation)
    ids, figures = twins(smol, [Message("user", SMOL_QUESTIONS[0])], GREEDY, mode="auto")
    assert figures.accepted >= 0.9 * figures.drafted > 0  # the draft model's guesses, kept as they are


def test_the_draft_proposes_the_models_own_continuation_and_its_cache_follows(smol):
    prompt = render_prompt(smol.info.chat, [Message("user", SMOL_QUESTIONS[0])])
    reply, _ = stream(smol, prompt, replace(GREEDY, max_tokens=12))
    drafter, tokens = smol._drafter, smol.prompt_ids(prompt)
    memory = lib.llama_get_memory(drafter._ctx)

    def held():
        assert lib.llama_memory_seq_pos_max(memory, 0) + 1 == len(drafter._cached)
        return list(drafter._cached)

    drafter._streams.trim(0, 0)
    guess = drafter.propose(tokens, 8)
    assert guess == reply[:8]  # the same model: its greedy continuation
    assert held() == tokens + guess[:-1]  # the last guess is never fed
    wrong = (guess[2] + 1) % 1000
    history = tokens + guess[:2] + [wrong]  # two kept, the third rejected: the target's own token instead
    again = drafter.propose(history, 4)
    assert len(again) == 4 and held() == history + again[:-1]
    assert drafter.propose(history, 4) == again  # the same guess from the same text
    assert drafter.propose(tokens, 8) == guess and held() == tokens + guess[:-1]  # back to a shorter history
    assert drafter.propose(history, 0) == []


def test_a_vocabulary_that_differs_is_refused_at_load_naming_both_models(smollm2, tiny_r1):
    for target, draft in ((smollm2, tiny_r1), (tiny_r1, smollm2)):
        with pytest.raises(UsageError) as refused:
            load(target, draft=draft)
        message = refused.value.message
        assert "vocabulary" in message and target in message and draft in message and "\n" not in message


def test_a_missing_or_broken_draft_is_refused_as_a_model_is(smollm2, tmp_path):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("not a model")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(Path(smollm2).read_bytes()[:-1000])
    expected = {str(tmp_path / "nowhere.gguf"): "draft model not found",
                str(tmp_path): "is a directory, not a GGUF file",
                str(not_gguf): "is not a GGUF file",
                str(cut): "could not load the draft model"}
    for draft, words in expected.items():
        with pytest.raises(ModelError) as refused:
            load(smollm2, draft=draft)
        assert words in refused.value.message and draft in refused.value.message and "\n" not in refused.value.message
    assert "truncated or corrupt" in refused.value.hint


@pytest.mark.parametrize("which", ["r1", "smol"])
def test_a_reply_cancelled_mid_guess_leaves_both_models_usable(which, request, tiny_r1, smollm2):
    """Both caches hold exactly the tokens they say they do, so the next reply is the one a model that never
    had a draft gives."""
    model = request.getfixturevalue(which)
    path = tiny_r1 if which == "r1" else smollm2
    first = [Message("user", tiny.LOOP_QUESTION if which == "r1" else SMOL_QUESTIONS[0])]
    next_one = [Message("user", "What is 12*7?")]

    def cancelled_then_next(model, mode):
        model.streams.trim(0, 0)
        cancel, given = threading.Event(), 0
        for event in model.stream(render_prompt(model.info.chat, first), replace(GREEDY, speculate=mode), cancel):
            given += isinstance(event, TextDelta)
            if given == 30:
                cancel.set()
            if isinstance(event, Finished):
                assert event.finish_reason == "cancelled"
        for ctx, tokens in ((model._ctx, model.streams.tokens[0]),) + (
                ((model._drafter._ctx, model._drafter._cached),) if mode == "draft" else ()):
            assert lib.llama_memory_seq_pos_max(lib.llama_get_memory(ctx), 0) + 1 == len(tokens)
        return collect_reply(generate_reply(model, next_one, replace(GREEDY, speculate=mode)))

    fresh = load(path)
    try:
        expected = cancelled_then_next(fresh, "off")
    finally:
        fresh.close()
    after = cancelled_then_next(model, "draft")
    assert (after.reasoning, after.answer) == (expected.reasoning, expected.answer)
    assert after.stats.speculation.drafted > 0


def test_close_frees_the_draft_too(smollm2):
    model = load(smollm2, draft=smollm2)
    drafter = model._drafter
    model.close()
    assert model._drafter is None and drafter._ctx is None and drafter._model is None
    model.close()  # twice is harmless


def test_a_guess_stops_at_the_replys_cancel(smol):
    """Ctrl-C stops a reply within one model call: the draft's guess (up to 16 decodes of its own) ends with
    the draw in progress once the reply is cancelled."""
    drafter = smol._drafter
    prompt = smol.tokenize(render_prompt(smol.info.chat, [Message("user", SMOL_QUESTIONS[0])]))
    cancel = threading.Event()
    assert drafter.prefill(prompt, cancel)
    assert len(drafter.propose(prompt, 16)) == 16
    cancel.set()
    assert len(drafter.propose(prompt + [42], 16)) == 1  # the draw in progress, no further decode
    drafter.prefill(prompt, threading.Event())  # (a later reply's cancel is its own)
    assert len(drafter.propose(prompt, 16)) == 16
