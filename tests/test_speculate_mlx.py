"""Speculative decoding on MLX (mlx-lm on CPU here): n-gram guesses and a draft model's, checked by the model
in one call, give token for token what decoding without them gives (greedy and seeded), through budgets,
loop rescue, continuations, constraints and Ctrl-C; with the real MLX conversions of the tiny R1 (trained to
answer in R1's shape; drafted by the random-weight tiny R1, a drafter of nonsense) and SmolLM2 (drafted by
itself: every guess right)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import replace

import jsonschema
import mlx.core as mx
import numpy as np
import pytest

from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.constraint import from_options
from ponder.errors import ModelError, UsageError
from ponder.events import Continuation, GenerationParams, Message, TextDelta
from ponder.exchange import collect_reply, generate_reply
from ponder.prompt import render_prompt
from ponder.thinking import BUDGET_MESSAGE
from tests.support import tiny_r1 as tiny
from tests.test_backend_mlx import CountingModel
from tests.test_constraint_llamacpp import SCHEMAS

GREEDY = GenerationParams(temperature=0, max_tokens=200)
SEEDED = replace(GREEDY, temperature=0.8, seed=3)
MODES = ("ngram", "draft", "auto")
CODE = '''def parse_config(path):
    """Read a key = value file into a dict, skipping comments and blank lines."""
    result = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, value = line.split("=", 1)
            result[key.strip()] = value.strip()
    return result
'''
COPY = ("Rewrite this function with the variable `handle` renamed to `stream`. Output only the code.\n\n"
        f"```python\n{CODE}```")


def load(path: str, draft: str | None = None, context: int = 2048):
    return get_backend("mlx").load(path, LoadOptions(context=context, draft=draft))


@pytest.fixture(scope="module")
def r1(tiny_r1_mlx, tiny_r1_random_mlx):
    """The trained tiny R1, drafted by the random-weight one (guesses that are nearly always wrong)."""
    model = load(tiny_r1_mlx, draft=tiny_r1_random_mlx)
    yield model
    model.close()


@pytest.fixture(scope="module")
def smol(smollm2_mlx):
    """SmolLM2 drafted by itself: a greedy guess is what the model draws."""
    model = load(smollm2_mlx, draft=smollm2_mlx)
    yield model
    model.close()


def prompt(model, question: str) -> str:
    return render_prompt(model.info.chat, [Message("user", question)])


def run(model, text, params: GenerationParams, cancel=None):
    """The text, token ids and Finished of one `model.stream`."""
    events = list(model.stream(text, params, cancel))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    return "".join(e.text for e in deltas), [i for e in deltas for i in e.ids], events[-1]


class Reach(CountingModel):
    """A model that notes the furthest position its cache reached."""

    furthest = 0

    def __call__(self, inputs, cache=None):
        logits = super().__call__(inputs, cache)
        self.furthest = max(self.furthest, cache[0].offset)
        return logits


def assert_consistent(finished, ids, ended_by_end_token: bool):
    """Each model call gives the tokens it accepted and one more; the first token comes from the prompt's."""
    spec = finished.stats.speculation
    assert 0 <= spec.accepted <= spec.drafted and spec.calls >= 0
    assert finished.stats.generated_tokens == len(ids) == spec.calls + spec.accepted + (not ended_by_end_token)


# --- MLX's logits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["r1", "smol"])
def test_a_position_has_the_same_logits_however_many_one_call_computes(which, request):
    """What exactness rests on: a row of a k-token call against the same position decoded alone."""
    model = request.getfixturevalue(which)
    ids = model.tokenize(prompt(model, "The quick brown fox jumps over the lazy dog, twice: the quick brown fox."))
    start = len(ids) - 17
    alone_cache, together_cache = model.new_cache(), model.new_cache()
    for cache in (alone_cache, together_cache):
        model.forward(mx.array(ids[:start])[None], cache)
    alone = [np.array(model.forward(mx.array([t])[None], alone_cache)[0, -1].astype(mx.float32)) for t in ids[start:]]
    together = np.array(model.forward(mx.array(ids[start:])[None], together_cache)[0].astype(mx.float32))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(alone, together))
    print(f"\n{which}: largest difference of a row over 17 positions: {worst} ({mx.default_device()})")
    if mx.default_device() == mx.cpu:
        assert worst == 0.0  # bit for bit on CPU
    else:  # (Metal may pick its kernels by shape: a rounding apart at most)
        assert worst < 1e-3 * float(np.abs(alone[0]).max())


# --- the same tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("question", [tiny.LOOP_QUESTION, "What is 12*7?", "Write hello world in Python."])
@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_every_drafter_gives_the_tokens_decoding_without_one_gives(r1, question, params):
    text = prompt(r1, question)
    plain_text, plain_ids, plain_end = run(r1, text, params)
    assert plain_end.stats.speculation is None
    for mode in MODES:
        got_text, got_ids, got_end = run(r1, text, replace(params, speculate=mode))
        assert (got_text, got_ids, got_end.finish_reason) == (plain_text, plain_ids, plain_end.finish_reason), mode
        assert_consistent(got_end, got_ids, ended_by_end_token=got_end.finish_reason == "stop")
    if question == tiny.LOOP_QUESTION:  # the loop repeats itself: n-gram guesses are kept, many a call
        spec = run(r1, text, replace(params, speculate="ngram"))[2].stats.speculation
        assert spec.accepted > len(plain_ids) // 2 and spec.calls < len(plain_ids) // 2


def test_the_trained_r1_still_answers_its_questions_with_nonsense_guesses(r1):
    for question in ("What is 12*7?", "Find all x with x^2 - 5x + 6 = 0"):
        text, _, finished = run(r1, prompt(r1, question), replace(GREEDY, speculate="draft"))
        assert text == tiny.TRAINING_PAIRS[question] and finished.finish_reason == "stop"
        assert finished.stats.speculation.drafted > 0


@pytest.mark.parametrize("params", [replace(GREEDY, max_tokens=30), replace(SEEDED, max_tokens=30)],
                         ids=["greedy", "seeded"])
def test_smollm2_drafted_by_itself_keeps_every_guess_and_gives_the_same_tokens(smol, params):
    text = prompt(smol, COPY)
    plain = run(smol, text, params)
    assert plain[2].finish_reason == "length"  # (at a reply's end the draft guesses past it: guesses lost)
    for mode in ("draft", "ngram"):
        got_text, got_ids, got_end = run(smol, text, replace(params, speculate=mode))
        assert (got_text, got_ids, got_end.finish_reason) == plain[:2] + (plain[2].finish_reason,), mode
        assert_consistent(got_end, got_ids, ended_by_end_token=got_end.finish_reason == "stop")
        if mode == "draft" and params.temperature == 0:
            spec = got_end.stats.speculation
            assert spec.accepted == spec.drafted > 0  # the draft's greedy guess is the model's greedy draw


def test_a_run_at_max_tokens_stops_there_with_guesses_never_past_it(r1, monkeypatch):
    text = prompt(r1, tiny.LOOP_QUESTION)
    for budget in (1, 2, 17, 40):
        params = replace(GREEDY, max_tokens=budget)
        plain = run(r1, text, params)
        for mode in MODES:
            reach = Reach(r1._model)
            monkeypatch.setattr(r1, "_model", reach)
            got_text, got_ids, got_end = run(r1, text, replace(params, speculate=mode))
            monkeypatch.undo()
            assert (got_text, got_ids) == plain[:2]
            assert got_end.finish_reason == "length" and got_end.stats.generated_tokens == budget
            assert_consistent(got_end, got_ids, ended_by_end_token=False)
            # Fed: the prompt, each token given but the last, and guesses never past the budget.
            assert reach.furthest == len(r1.tokenize(text)) + budget - 1


# --- continuations, budgets, loop rescue -----------------------------------------------------------------


def test_a_continuation_after_a_speculative_reply_reuses_exactly_its_tokens(r1):
    text = prompt(r1, tiny.LONG_QUESTION)
    forced = len(r1.tokenize(r1.info.chat.bos_token + BUDGET_MESSAGE)) - 1
    results = {}
    for mode in ("off",) + MODES:
        params = replace(GREEDY, max_tokens=tiny.BUDGET, speculate=mode)
        cut_text, cut_ids, _ = run(r1, text, params)
        continuation = Continuation(text, tuple(cut_ids), cut_text, BUDGET_MESSAGE)
        after_text, after_ids, finished = run(r1, continuation, replace(params, max_tokens=60))
        # Only the closing text is processed, and with speculation the last generated token (mlx-lm's
        # stream fed it already, computing one step ahead): the cache held the prompt and the tokens
        # generated, no rejected guess.
        assert finished.stats.prefilled_tokens == forced + (mode != "off")
        results[mode] = (cut_ids, after_text, after_ids)
    assert all(result == results["off"] for result in results.values())
    assert results["off"][1].strip() == tiny.BUDGET_ANSWER


@pytest.mark.parametrize("how", ["budget", "loop"])
@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_budget_and_a_loop_rescue_through_the_exchange_cut_at_the_same_token(r1, how, params):
    question = tiny.LONG_QUESTION if how == "budget" else tiny.LOOP_QUESTION
    if how == "budget":
        params = replace(params, think_budget=tiny.BUDGET)
    messages = [Message("user", question)]
    plain = collect_reply(generate_reply(r1, messages, params))
    assert plain.stats.reasoning_end == how and plain.answer.strip() == tiny.BUDGET_ANSWER
    for mode in MODES:
        reply = collect_reply(generate_reply(r1, messages, replace(params, speculate=mode)))
        assert (reply.reasoning, reply.answer, reply.finish_reason) == (plain.reasoning, plain.answer,
                                                                        plain.finish_reason), mode
        assert reply.stats.reasoning_end == how
        assert reply.stats.reasoning_tokens == plain.stats.reasoning_tokens
        assert reply.stats.speculation is not None


# --- constraints ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_constrained_answer_is_the_same_and_valid(r1, params):
    messages = [Message("user", "What is 12*7?")]
    for schema in (SCHEMAS["nested object, enum, integer range"], {"type": "integer"}):
        constrained = replace(params, constraint=from_options(json.dumps(schema), None))
        plain = collect_reply(generate_reply(r1, messages, constrained))
        for mode in MODES:
            reply = collect_reply(generate_reply(r1, messages, replace(constrained, speculate=mode)))
            assert (reply.reasoning, reply.answer, reply.finish_reason) == (plain.reasoning, plain.answer, "stop")
            jsonschema.validate(json.loads(reply.answer), schema)
    choice = replace(params, constraint=from_options(None, ["84", "eighty-four"]))
    for mode in ("off",) + MODES:
        reply = collect_reply(generate_reply(r1, messages, replace(choice, speculate=mode)))
        assert reply.answer.strip() in ("84", "eighty-four") and reply.finish_reason == "stop"


def test_a_constrained_answer_of_smollm2_with_every_guess_kept(smol):
    messages = [Message("user", "Give a number from 0 to 9 as JSON.")]
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    params = replace(GREEDY, max_tokens=40, constraint=from_options(json.dumps(schema), None))
    plain = collect_reply(generate_reply(smol, messages, params))
    reply = collect_reply(generate_reply(smol, messages, replace(params, speculate="draft")))
    assert (reply.answer, reply.finish_reason) == (plain.answer, "stop")
    jsonschema.validate(json.loads(reply.answer), schema)


# --- stopping -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["ngram", "draft"])
def test_cancel_stops_before_the_next_model_call_and_the_next_reply_equals_a_fresh_one(
        r1, tiny_r1_mlx, monkeypatch, mode):
    text = prompt(r1, tiny.LOOP_QUESTION)
    params = replace(GREEDY, max_tokens=300, speculate=mode)
    counting = CountingModel(r1._model)
    monkeypatch.setattr(r1, "_model", counting)
    drafting = CountingModel(r1._drafter._network)
    monkeypatch.setattr(r1._drafter, "_network", drafting)
    cancel, seen, calls_then = threading.Event(), [], None
    for event in r1.stream(text, params, cancel):
        if isinstance(event, TextDelta):
            seen.extend(event.ids)
            if len(seen) >= 30 and calls_then is None:
                cancel.set()
                calls_then = (len(counting.shapes), len(drafting.shapes))
        else:
            finished = event
    monkeypatch.undo()
    assert finished.finish_reason == "cancelled" and finished.stats.generated_tokens == len(seen) < 60
    assert (len(counting.shapes), len(drafting.shapes)) == calls_then  # no model call after the stop
    held = r1.prompt_cache
    assert len(held.tokens) == held.cache[0].offset and held.tokens == (r1.tokenize(text) + seen)[:len(held.tokens)]
    fresh = load(tiny_r1_mlx)
    try:
        for question in (tiny.LOOP_QUESTION, "What is 12*7?"):
            expected = run(fresh, prompt(fresh, question), GREEDY)[:2]
            assert run(r1, prompt(r1, question), replace(GREEDY, speculate=mode))[:2] == expected
            assert run(r1, prompt(r1, question), GREEDY)[:2] == expected
    finally:
        fresh.close()


def test_a_stream_closed_mid_call_leaves_the_cache_holding_only_what_was_given(r1, monkeypatch):
    """The exchange stops a stream at the token it cuts after, maybe mid-call, with kept guesses not given yet."""
    text = prompt(r1, tiny.LOOP_QUESTION)
    counting = CountingModel(r1._model)
    monkeypatch.setattr(r1, "_model", counting)
    stream = r1.stream(text, replace(GREEDY, max_tokens=300, speculate="ngram"))
    seen = []
    for event in stream:
        seen.extend(event.ids)
        if len(seen) == 45:
            break
    stream.close()
    monkeypatch.undo()
    fed = sum(shape[1] for shape in counting.shapes)
    assert fed > len(r1.tokenize(text)) + len(seen)  # the model had computed more than it had given
    held = r1.prompt_cache
    assert len(held.tokens) == held.cache[0].offset
    assert held.tokens == (r1.tokenize(text) + seen)[:len(held.tokens)] and len(held.tokens) > len(r1.tokenize(text))
    plain = run(r1, text, GREEDY)
    assert run(r1, text, replace(GREEDY, speculate="ngram"))[:2] == plain[:2]


def test_cancel_before_the_prompt_is_processed(r1):
    cancel = threading.Event()
    cancel.set()
    events = list(r1.stream(prompt(r1, "Say something new."), replace(GREEDY, speculate="draft"), cancel))
    assert len(events) == 1 and events[0].finish_reason == "cancelled"


# --- loading ------------------------------------------------------------------------------------------


def test_a_draft_with_another_vocabulary_is_refused_at_load(tiny_r1_mlx, smollm2_mlx):
    with pytest.raises(UsageError) as refused:
        load(tiny_r1_mlx, draft=smollm2_mlx)
    assert "vocabulary" in refused.value.message and "\n" not in refused.value.one_line()
    assert smollm2_mlx in refused.value.message


def test_a_missing_or_broken_draft_gets_the_errors_a_model_gets(tiny_r1_mlx, tiny_r1_random_mlx, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_r1_random_mlx, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: os.path.getsize(weights) // 3])
    for bad in (tmp_path / "missing", broken, tmp_path):
        with pytest.raises(ModelError) as as_model:
            load(str(bad))
        with pytest.raises(ModelError) as as_draft:
            load(tiny_r1_mlx, draft=str(bad))
        assert as_draft.value.one_line() == as_model.value.one_line() and "\n" not in as_draft.value.one_line()


def test_draft_speculation_without_a_draft_model_is_a_usage_error(tiny_r1_random_mlx):
    model = load(tiny_r1_random_mlx)
    try:
        with pytest.raises(UsageError, match="draft model"):
            list(model.stream(prompt(model, "Hi"), replace(GREEDY, speculate="draft")))
        assert run(model, prompt(model, "Hi"), replace(GREEDY, max_tokens=4))[2].finish_reason == "length"
    finally:
        model.close()


def test_a_cache_that_cannot_be_cut_back_gets_no_guesses():
    from mlx_lm.models.cache import ArraysCache, KVCache, RotatingKVCache

    from ponder.backends.mlx_decode import _cuttable

    def filled(layer, tokens: int):
        layer.update_and_fetch(mx.zeros((1, 2, tokens, 8)), mx.zeros((1, 2, tokens, 8)))
        return layer

    assert _cuttable([filled(KVCache(), 40)], 17)
    window = filled(RotatingKVCache(max_size=64), 40)
    assert _cuttable([window], 17) and not _cuttable([window], 24)  # not once the window is full
    assert not _cuttable([filled(RotatingKVCache(max_size=32), 40)], 1)
    assert not _cuttable([KVCache(), ArraysCache(2)], 1)  # a recurrent layer's state


# --- speed ---------------------------------------------------------------------------------------------


def test_tokens_per_second_with_and_without_on_a_copy_heavy_prompt(smol):
    """Figures, not asserts (the machine is shared): SmolLM2 rewriting a function with one change."""
    text = prompt(smol, COPY)
    params = replace(GREEDY, max_tokens=32)
    rates = {}
    for round_ in range(2):  # interleaved
        for mode in ("off", "ngram", "draft"):
            got_text, _, finished = run(smol, text, replace(params, speculate=mode))
            rates.setdefault(mode, []).append(finished.stats.decode_tokens_per_s)
            if round_ == 0 and mode == "off":
                plain = got_text
            assert got_text == plain
            print(f"\nSmolLM2 8-bit, copy-heavy, {mode:5s}: {finished.stats.decode_tokens_per_s:6.1f} tokens/s "
                  f"{finished.stats.speculation} load {os.getloadavg()}")
    for mode, values in rates.items():
        print(f"{mode:5s}: {max(values) / max(rates['off']):.2f}x of off (best of 2)")
