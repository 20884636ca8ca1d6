"""Reasoning in bounds: the budget cut (the closing message fed as tokens after exactly the tokens the
model generated), no thinking, loop detection and rescue, on both local backends with real models."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from ponder.events import Continuation, Finished, GenerationParams, Message, TextDelta
from ponder.exchange import collect_reply, generate_reply, model_prompt
from ponder.loops import LoopDetector
from ponder.thinking import BUDGET_MESSAGE, GRACE_TOKENS, NO_THINKING, STOP, Cut, ReasoningGuard
from tests.support.cli import run_ponder

QUESTION = [Message("user", "What is 12*7?")]
LOOPING = [Message("user", "List the numbers 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1")]  # SmolLM2 repeats "1, " on


# --- the loop detector ------------------------------------------------------------------------


def feed(detector: LoopDetector, tokens) -> list[int | None]:
    return [detector.add(t) for t in tokens]


def test_a_span_repeated_three_times_is_a_loop_at_its_last_token():
    rng = random.Random(1)
    noise = [rng.randrange(10**6) for _ in range(50)]
    span = list(range(100, 120))
    found = feed(LoopDetector(), noise + span * 3)
    assert found[-1] == 20 and not any(found[:-1])


@pytest.mark.parametrize("span_length, repeats, found", [(8, 3, 8), (512, 3, 512), (7, 3, None), (40, 2, None)])
def test_spans_from_8_to_512_tokens_three_times_in_a_row(span_length, repeats, found):
    rng = random.Random(span_length)
    span = [rng.randrange(10**6) for _ in range(span_length)]
    results = feed(LoopDetector(), [rng.randrange(10**6) for _ in range(10)] + span * repeats)
    assert results[-1] == found
    if span_length == 7:  # "1 2 3 4 5 6 7" over and over is also a 14- or 21-token loop, found a little later
        assert feed(LoopDetector(), span * 6)[-1] == 14


def test_varied_text_is_never_a_loop():
    rng = random.Random(2)
    assert not any(feed(LoopDetector(), [rng.randrange(50) for _ in range(3000)]))


# --- the guard, token by token ------------------------------------------------------------------


def delta(text: str, token: int = 0) -> TextDelta:
    return TextDelta(text, ids=(token,))


def test_the_budget_lets_the_word_finish_within_the_grace():
    guard = ReasoningGuard(GenerationParams(think_budget=3), reasoning_model=True)
    guard.observe(True, 3)
    assert guard.before(delta("ing", 1)) is None  # mid-word: goes on
    assert guard.before(delta("", 2)) is None  # mid-UTF-8
    assert guard.before(delta("é", 3)) is None  # never right after a partial character
    cut = guard.before(delta(" next", 4))
    assert cut == Cut("budget", BUDGET_MESSAGE) and guard.cut == cut


def test_the_grace_is_bounded():
    guard = ReasoningGuard(GenerationParams(think_budget=1), reasoning_model=True)
    guard.observe(True, 1)
    decisions = [guard.before(delta("x", i)) for i in range(GRACE_TOKENS + 2)]
    assert decisions.index(Cut("budget", BUDGET_MESSAGE)) == GRACE_TOKENS


def test_answer_now_and_no_thinking():
    import threading

    now = threading.Event()
    guard = ReasoningGuard(GenerationParams(), reasoning_model=True, answer_now=now)
    assert guard.before(delta("a")) is None
    now.set()
    assert guard.before(delta("b")) == Cut("user", BUDGET_MESSAGE)
    assert ReasoningGuard(GenerationParams(think_budget=0), reasoning_model=True).cut == Cut("budget", NO_THINKING)
    assert ReasoningGuard(GenerationParams(think_budget=0), reasoning_model=False).cut is None  # nothing to skip


@pytest.mark.parametrize("on_loop, expected", [("answer", Cut("loop", BUDGET_MESSAGE)), ("stop", STOP), ("continue", None)])
def test_a_loop_in_the_reasoning(on_loop, expected):
    guard = ReasoningGuard(GenerationParams(on_loop=on_loop), reasoning_model=True)
    decisions = [guard.before(delta(str(t), t)) for t in list(range(10)) * 3]
    assert decisions[-1] == expected and not any(decisions[:-1])


# --- on real models, through both backends -------------------------------------------------------


@pytest.fixture(scope="module", params=["llama.cpp", "mlx"])
def r1(request, tiny_r1, tiny_r1_mlx):
    from ponder.backends import get_backend
    from ponder.backends.base import LoadOptions

    model = get_backend(request.param).load(tiny_r1 if request.param == "llama.cpp" else tiny_r1_mlx,
                                            LoadOptions(context=1024))
    yield model
    model.close()


def test_a_budget_cuts_the_reasoning_feeds_the_message_and_the_model_answers(r1):
    reply = collect_reply(generate_reply(r1, QUESTION, GenerationParams(temperature=0, think_budget=10,
                                                                        max_tokens=200)))
    assert reply.stats.reasoning_end == "budget"
    assert 10 <= reply.stats.reasoning_tokens <= 10 + GRACE_TOKENS
    assert reply.reasoning.startswith("Okay, 12 times 7.")  # the model's own start, then the message
    assert reply.reasoning.endswith(BUDGET_MESSAGE.split("</think>")[0])
    assert reply.answer.strip() and reply.stats.answer_tokens > 0
    assert "Okay, 12 times 7. 10*7 = 70 and 2*7" not in reply.reasoning  # cut before the model finished


def test_the_continuation_processes_only_the_forced_tokens(r1):
    prompt = model_prompt(r1, QUESTION)
    params = GenerationParams(temperature=0, max_tokens=30)
    events = list(r1.stream(prompt, params))
    ids = [i for e in events if isinstance(e, TextDelta) for i in e.ids]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert len(ids) == 30
    cut = 12
    bos = r1.info.chat.bos_token  # a text that starts with it gets no second BOS: its tokens are the message's
    forced = len(r1.tokenize(bos + BUDGET_MESSAGE)) - 1
    continuation = Continuation(prompt, tuple(ids[:cut]), text, BUDGET_MESSAGE)
    finished = [e for e in r1.stream(continuation, replace(params, max_tokens=5)) if isinstance(e, Finished)][0]
    assert finished.stats.prefilled_tokens == forced  # the generated ids came from the cache
    assert finished.stats.prompt_tokens == len(r1.tokenize(prompt)) + cut + forced


def test_no_think_prefills_the_end_of_the_reasoning(r1):
    reply = collect_reply(generate_reply(r1, QUESTION, GenerationParams(temperature=0, think_budget=0,
                                                                        max_tokens=60)))
    assert reply.reasoning == NO_THINKING.split("</think>")[0]
    assert reply.stats.reasoning_end == "budget" and reply.stats.reasoning_tokens == 0
    assert reply.answer.strip()


@pytest.fixture(scope="module", params=["llama.cpp", "mlx"])
def smollm2_thinking(request, smollm2, smollm2_mlx):
    """SmolLM2 taken for a reasoning model: its reply is then all reasoning, and it loops on LOOPING."""
    from ponder.backends import get_backend
    from ponder.backends.base import LoadOptions

    model = get_backend(request.param).load(smollm2 if request.param == "llama.cpp" else smollm2_mlx,
                                            LoadOptions(context=1024))
    model.info = replace(model.info, chat=replace(model.info.chat, reasoning=True))
    yield model
    model.close()


def test_a_loop_in_the_reasoning_is_rescued_with_an_answer(smollm2_thinking):
    reply = collect_reply(generate_reply(smollm2_thinking, LOOPING, GenerationParams(temperature=0, max_tokens=300)))
    assert reply.stats.reasoning_end == "loop"
    assert reply.reasoning.endswith(BUDGET_MESSAGE.split("</think>")[0])
    assert reply.stats.reasoning_tokens < 100  # caught after three turns of the loop, not at max tokens
    assert reply.answer.strip()


def test_on_loop_stop_ends_the_reply(smollm2_thinking):
    reply = collect_reply(generate_reply(smollm2_thinking, LOOPING, GenerationParams(temperature=0, max_tokens=300,
                                                                                    on_loop="stop")))
    assert (reply.finish_reason, reply.stats.reasoning_end, reply.answer) == ("loop", "loop", "")
    assert reply.stats.reasoning_tokens < 100


def test_the_cli_says_so(tiny_r1, smollm2):
    out = run_ponder("ask", "--model", tiny_r1, "--temperature", "0", "--think-budget", "10", "--json", "--stats",
                     "What is 12*7?")
    data = json.loads(out.stdout)
    assert data["reasoning_end"] == "budget" and "reasoning end: budget" in out.stderr.decode()
    looped = run_ponder("ask", "--model", smollm2, "--model-kind", "reasoning", "--temperature", "0",
                        "--max-tokens", "300", LOOPING[0].content)
    assert "the reasoning repeated itself; ponder ended it, and the model answered" in looped.stderr.decode()
    assert looped.returncode == 0 and looped.stdout.strip()
    both = run_ponder("ask", "--model", tiny_r1, "--no-think", "--think-budget", "5", "hi")
    assert both.returncode == 2 and b"--no-think contradicts --think-budget 5" in both.stderr
