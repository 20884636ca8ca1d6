"""Speculative decoding on llama.cpp: the n-gram drafter and its controller, and replies that are the same
text with speculation as without (greedy and seeded, through budgets, loop rescue, continuations, a
constraint and a cancelled reply).

The replies compared stay within the context's first 256 positions: past them, llama.cpp's CPU kernels give a
position slightly different logits depending on how many tokens one call computes (measured on SmolLM2 Q4_1:
up to 0.9 logits; see `test_llama_cpp_logits_past_256_positions_depend_on_the_call`), so a long reply can take
the other side of a near-tie, as a reused prompt cache already makes it do."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import llama_cpp as lib
import pytest

from ponder.constraint import from_options
from ponder.events import Continuation, Finished, GenerationParams, Message, TextDelta
from ponder.exchange import collect_reply, generate_reply
from ponder.prompt import render_prompt
from ponder.speculate import FIRST, LONGEST, SHORTEST, NgramDrafter, Speculation
from tests.support import tiny_r1 as tiny

GREEDY = GenerationParams(temperature=0, max_tokens=150)  # with the prompts here, within 256 positions
SEEDED = GenerationParams(temperature=0.8, top_p=0.95, seed=11, max_tokens=150)
CODE = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    total = 0\n    for _ in range(b):\n" \
       "        total = add(total, a)\n    return total\n"
COPY = [Message("user", f"Rewrite this code with the function mul renamed to times:\n{CODE}")]


# --- the drafter and the controller, alone ----------------------------------------------------------


def test_the_ngram_drafter_guesses_what_followed_the_texts_end_before():
    drafter = NgramDrafter()
    history = [1, 2, 3, 4, 5, 6, 9, 9, 2, 3, 4]
    assert drafter.propose(history, 3) == [5, 6, 9]  # after (2, 3, 4) came 5, 6, 9
    assert drafter.propose(history, 1) == [5]
    assert drafter.propose([7, 8], 4) == []  # nothing seen twice
    fresh = NgramDrafter()
    assert fresh.propose([1, 2, 3, 7, 2, 3, 8, 3], 2) == []  # (3,) alone is not looked up
    assert fresh.propose([1, 2, 3, 7, 2, 3, 8, 2, 3], 2) == [8, 2]  # the latest earlier (2, 3) wins


def test_the_ngram_drafter_prefers_the_longest_match_and_keeps_up_as_the_text_grows():
    drafter = NgramDrafter()
    history = [5, 1, 2, 40, 0, 1, 2, 50, 9, 0, 1, 2]
    assert drafter.propose(history, 1) == [50]  # (0, 1, 2) beats the later-ending... only (1, 2) -> 40 would
    history += [50, 9, 0, 1]
    assert drafter.propose(history, 3) == [2, 50, 9]


def test_guesses_shrink_after_a_rejection_grow_after_a_whole_acceptance_and_fit_the_room():
    speculation = Speculation(NgramDrafter())
    speculation.settle(0, 0, 0.01)
    speculation.settle(FIRST, 1, 0.01)
    assert speculation.length == max(SHORTEST, 2)
    for _ in range(5):
        speculation.settle(speculation.length, speculation.length, 0.01)
    assert speculation.length == LONGEST
    history = list(range(10)) * 4
    assert len(speculation.guess(history, 3)) == 3 and speculation.guess(history, 0) == []
    assert speculation.stats().accepted == 1 + sum([2, 4, 8, 16, 16])


# --- replies on the tiny R1 and SmolLM2 ---------------------------------------------------------------


def load(path: str):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    return LlamaCppModel(path, LoadOptions(context=2048))


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


def reply(model, messages, params, mode, answer_now=None):
    """A reply from an empty cache: a prompt processed in one chunk and a prompt token decoded again alone
    (a reused prefix) give slightly different logits, which is not what these tests compare."""
    model.streams.trim(0, 0)
    return collect_reply(generate_reply(model, messages, replace(params, speculate=mode), answer_now))


def same_text(model, messages, params, answer_now=None):
    plain, replies = reply(model, messages, params, "off", answer_now), {}
    for mode in ("ngram", "auto"):
        replies[mode] = guessed = reply(model, messages, params, mode, answer_now)
        assert (guessed.reasoning, guessed.answer, guessed.finish_reason) == \
               (plain.reasoning, plain.answer, plain.finish_reason), mode
        assert guessed.stats.reasoning_end == plain.stats.reasoning_end
        assert guessed.stats.reasoning_tokens == plain.stats.reasoning_tokens
        assert guessed.stats.speculation is not None and plain.stats.speculation is None
    return plain, replies["ngram"]


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_reply_is_the_same_text_with_speculation_as_without(r1, smol, params):
    _, copied = same_text(smol, COPY, params)
    same_text(r1, [Message("user", "What is 12*7?")], params)
    if params is GREEDY:  # it copies some of the code: some n-gram guesses are kept
        assert copied.stats.speculation.accepted > 0


def test_the_loop_rescue_and_the_budget_cut_come_at_the_same_token(r1):
    plain, _ = same_text(r1, [Message("user", tiny.LOOP_QUESTION)], GREEDY)
    assert plain.stats.reasoning_end == "loop" and tiny.LOOP_ANSWER in plain.answer
    plain, cut = same_text(r1, [Message("user", tiny.LONG_QUESTION)], replace(GREEDY, think_budget=tiny.BUDGET))
    assert plain.stats.reasoning_end == "budget" and plain.stats.reasoning_tokens in tiny.BUDGET_CUTS
    # the figures hold the calls before the cut too (each token but the first of each stream: a call's or a guess's)
    figures, generated = cut.stats.speculation, cut.stats.reasoning_tokens + cut.stats.answer_tokens
    assert figures.calls + figures.accepted >= generated - 2 > cut.stats.answer_tokens
    now = threading.Event()
    now.set()
    same_text(r1, [Message("user", tiny.LONG_QUESTION)], GREEDY, answer_now=now)


def test_a_constrained_answer_is_the_same_with_speculation(r1):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    params = replace(GREEDY, constraint=from_options(json.dumps(schema), None))
    plain, _ = same_text(r1, [Message("user", "What is 12*7?")], params)
    assert plain.parsed is not None


def stream(model, prompt, params, cancel=None):
    ids, finished = [], None
    for event in model.stream(prompt, params, cancel):
        if isinstance(event, TextDelta):
            ids.extend(event.ids)
        elif isinstance(event, Finished):
            finished = event
    return ids, finished


def test_a_continuation_and_a_run_that_hits_max_tokens_are_the_same(r1):
    prompt = render_prompt(r1.info.chat, [Message("user", tiny.LONG_QUESTION)])
    for params in (replace(GREEDY, max_tokens=7), SEEDED):
        r1.streams.trim(0, 0)
        plain, plain_end = stream(r1, prompt, params)
        r1.streams.trim(0, 0)
        guessed, end = stream(r1, prompt, replace(params, speculate="ngram"))
        assert guessed == plain and end.finish_reason == plain_end.finish_reason
    continued = Continuation(prompt, tuple(plain[:5]), "", "\n</think>\n\n")
    r1.streams.trim(0, 0)
    plain, _ = stream(r1, continued, GREEDY)
    r1.streams.trim(0, 0)
    assert stream(r1, continued, replace(GREEDY, speculate="ngram"))[0] == plain


def test_every_token_is_counted_once_in_the_speculation_figures(r1, smol):
    prompt = render_prompt(smol.info.chat, COPY)
    smol.streams.trim(0, 0)
    ids, end = stream(smol, prompt, replace(GREEDY, max_tokens=40, speculate="ngram"))
    figures = end.stats.speculation
    assert end.finish_reason == "length" and len(ids) == end.stats.generated_tokens == 40
    # the prompt's own call gives the first token; each later call gives its kept guesses and one more
    assert figures.accepted <= figures.drafted and len(ids) == 1 + figures.accepted + figures.calls
    prompt = render_prompt(r1.info.chat, [Message("user", "What is 12*7?")])
    r1.streams.trim(0, 0)
    ids, end = stream(r1, prompt, replace(GREEDY, speculate="ngram"))
    figures = end.stats.speculation
    assert end.finish_reason == "stop" and len(ids) == figures.accepted + figures.calls  # the last gave the end
    looping = render_prompt(r1.info.chat, [Message("user", tiny.LOOP_QUESTION)])
    r1.streams.trim(0, 0)
    ids, end = stream(r1, looping, replace(GREEDY, max_tokens=60, speculate="ngram"))
    assert end.stats.speculation.accepted > 20  # a reasoning that repeats itself: most guesses are kept


def test_a_reply_cancelled_mid_guess_leaves_the_cache_as_it_says(r1, tiny_r1):
    """The cache holds exactly the tokens the model says it does, so the next reply is the one a model
    that never speculated gives."""
    looping = render_prompt(r1.info.chat, [Message("user", tiny.LOOP_QUESTION)])
    next_one = [Message("user", "What is 12*7?")]

    def cancelled_then_next(model, mode):
        model.streams.trim(0, 0)
        cancel = threading.Event()
        given = 0
        for event in model.stream(looping, replace(GREEDY, speculate=mode), cancel):
            given += isinstance(event, TextDelta)
            if given == 40:
                cancel.set()
            if isinstance(event, Finished):
                assert event.finish_reason == "cancelled"
        held = lib.llama_memory_seq_pos_max(lib.llama_get_memory(model._ctx), 0) + 1
        assert held == len(model.streams.tokens[0])
        return collect_reply(generate_reply(model, next_one, GREEDY))

    fresh = load(tiny_r1)
    try:
        expected = cancelled_then_next(fresh, "off")
    finally:
        fresh.close()
    after = cancelled_then_next(r1, "ngram")
    assert (after.reasoning, after.answer) == (expected.reasoning, expected.answer)


def test_llama_cpp_logits_past_256_positions_depend_on_the_call(smol):
    """What the module's docstring says, measured: each position decoded alone, against the same positions
    each decoded with one more token after it (then cut, as a rejected guess is). Equal for the first 256
    positions; past them they differ. If llama.cpp makes them equal, this fails: say so in the README."""
    import ctypes

    import numpy as np

    smol.streams.trim(0, 0)
    prompt = smol.tokenize(render_prompt(smol.info.chat, COPY)) + smol.tokenize("x " * 150)[:150]
    assert 230 < len(prompt) < 250
    smol._prefill(prompt, threading.Event())
    alone, steps, token = [], 30, prompt[-1]
    fed = (lib.llama_token * 2)()
    for _ in range(steps):
        row = smol.logits(-1).copy()
        alone.append(row)
        token = int(np.argmax(row))
        fed[0] = token
        smol.decode(lib.llama_batch_get_one(fed, 1), "decode")
        smol.streams.tokens[0].append(token)
    smol.streams.trim(0, 0)
    smol._prefill(prompt, threading.Event())
    every_row = (ctypes.c_int8 * 2)(1, 1)
    paired = []
    for step in range(steps):
        row = smol.logits(0 if step else -1).copy()
        paired.append(row)
        fed[0], fed[1] = int(np.argmax(alone[step])), 0
        batch = lib.llama_batch_get_one(fed, 2)
        batch.logits = ctypes.cast(every_row, ctypes.POINTER(ctypes.c_int8))
        smol.decode(batch, "decode")
        smol.streams.tokens[0].extend([fed[0], 0])
        smol.streams.trim(0, len(smol.streams.tokens[0]) - 1)
    before = [i for i in range(steps) if len(prompt) + i < 256]
    assert all(np.array_equal(alone[i], paired[i]) for i in before)
    assert any(not np.array_equal(alone[i], paired[i]) for i in range(steps) if i not in before)
