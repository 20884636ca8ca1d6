"""Reasoning in bounds: the budget cut (the closing message fed as tokens after exactly the tokens the
model generated), no thinking, loop detection and rescue, on both local backends with real models."""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace

import pytest

from ponder.events import Continuation, Finished, GenerationParams, Message, TextDelta
from ponder.exchange import collect_reply, generate_reply, model_prompt
from ponder.loops import LoopDetector
from ponder.thinking import BUDGET_MESSAGE, GRACE_TOKENS, NO_THINKING, STOP, Cut, ReasoningGuard
from tests.support import tiny_r1 as tiny
from tests.support.cli import run_ponder

QUESTION = [Message("user", "What is 12*7?")]
LONG = [Message("user", tiny.LONG_QUESTION)]  # the tiny R1 reasons long on it, and was taught the budget
LOOP = [Message("user", tiny.LOOP_QUESTION)]  # …and loops on this one
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


def test_no_cut_right_after_a_partial_character_even_before_punctuation():
    guard = ReasoningGuard(GenerationParams(think_budget=1), reasoning_model=True)
    guard.observe(True, 1)
    assert guard.before(delta("", 1)) is None
    assert guard.before(delta("，", 2)) is None  # it may complete the character the last delta began
    assert guard.before(delta(" x", 3)) == Cut("budget", BUDGET_MESSAGE)


def test_the_model_closing_its_reasoning_past_the_budget_is_let_through():
    guard = ReasoningGuard(GenerationParams(think_budget=1), reasoning_model=True)
    guard.observe(True, 1)
    assert guard.before(delta("</think>", 1)) is None and guard.cut is None


def test_an_answer_stops_only_after_a_long_run_of_repeats():
    guard = ReasoningGuard(GenerationParams(on_loop="continue"), reasoning_model=False)  # continue: reasoning only
    decisions = [guard.before(delta(str(t), t)) for t in [5, 6] * 200]
    assert decisions.index(STOP) >= 250 and not any(decisions[:250])


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
    uncut = collect_reply(generate_reply(r1, LONG, GenerationParams(temperature=0, max_tokens=200)))
    assert uncut.answer.strip() == tiny.LONG_ANSWER and uncut.stats.reasoning_end == "model"

    reply = collect_reply(generate_reply(r1, LONG, GenerationParams(temperature=0, think_budget=tiny.BUDGET,
                                                                    max_tokens=200)))
    assert reply.stats.reasoning_end == "budget"
    assert tiny.BUDGET <= reply.stats.reasoning_tokens <= tiny.BUDGET + GRACE_TOKENS
    assert reply.reasoning.startswith("Let me spell it out: s, t, r")  # the model's own start…
    assert reply.reasoning.endswith(BUDGET_MESSAGE.split("</think>")[0])  # …then the message
    # It answers as it learned to answer only after the message: the message reached the model.
    assert reply.answer.strip() == tiny.BUDGET_ANSWER


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
    assert reply.answer.strip() == tiny.NO_THINKING_ANSWER


def test_a_reasoning_loop_is_rescued_stopped_or_left_alone(r1):
    def reply_with(on_loop: str):
        return collect_reply(generate_reply(r1, LOOP, GenerationParams(temperature=0, max_tokens=150,
                                                                       on_loop=on_loop)))

    rescued = reply_with("answer")
    assert rescued.stats.reasoning_end == "loop" and rescued.answer.strip() == tiny.LOOP_ANSWER
    assert rescued.reasoning.startswith((tiny.LOOP_SENTENCE * 3).rstrip())  # cut within the third turn
    stopped = reply_with("stop")
    assert (stopped.finish_reason, stopped.stats.reasoning_end, stopped.answer) == ("loop", "loop", "")
    assert stopped.stats.reasoning_tokens < 60  # found within three turns of a 14-token span
    left = collect_reply(generate_reply(r1, LOOP, GenerationParams(temperature=0, max_tokens=60, on_loop="continue")))
    assert (left.finish_reason, left.stats.reasoning_end, left.stats.reasoning_tokens) == ("length", "length", 60)
    assert left.reasoning.startswith(tiny.LOOP_SENTENCE * 7)  # on, past where the others stopped


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


def test_the_cli_says_so(tiny_r1):
    out = run_ponder("ask", "--model", tiny_r1, "--temperature", "0", "--think-budget", str(tiny.BUDGET), "--json",
                     "--stats", tiny.LONG_QUESTION)
    data = json.loads(out.stdout)
    assert data["reasoning_end"] == "budget" and data["answer"] == tiny.BUDGET_ANSWER
    assert "reasoning end: budget" in out.stderr.decode()
    looped = run_ponder("ask", "--model", tiny_r1, "--temperature", "0", "--max-tokens", "150", tiny.LOOP_QUESTION)
    assert "the reasoning repeated itself; ponder ended it, and the model answered" in looped.stderr.decode()
    assert (looped.returncode, looped.stdout.decode()) == (0, tiny.LOOP_ANSWER + "\n")
    no_think = run_ponder("ask", "--model", tiny_r1, "--temperature", "0", "--no-think", "What is 12*7?")
    assert no_think.stdout.decode() == tiny.NO_THINKING_ANSWER + "\n"
    both = run_ponder("ask", "--model", tiny_r1, "--no-think", "--think-budget", "5", "hi")
    assert both.returncode == 2 and b"--no-think contradicts --think-budget 5" in both.stderr


def test_a_budget_sweep_writes_results_per_budget_a_table_and_a_plot(tiny_r1, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "r", "prompt": tiny.LONG_QUESTION, "answer": "3"}) + "\n"
                     + json.dumps({"id": "m", "prompt": "What is 12*7?", "answer": "84"}) + "\n")
    out = run_ponder("batch", str(tasks), "-o", str(tmp_path / "results.jsonl"), "--model", tiny_r1, "--temperature",
                     "0", "--think-budget", f"{tiny.BUDGET},0,none", "--plot", str(tmp_path / "curve.svg"))
    assert out.returncode == 0, out.stderr
    err = out.stderr.decode()
    lines = {budget: [json.loads(line) for line in (tmp_path / f"results.budget-{budget}.jsonl").read_text().splitlines()]
             for budget in (tiny.BUDGET, 0, "none")}
    assert {r["id"] for r in lines["none"]} == {"r", "m"} and all(r["pass@1"] == 1.0 for r in lines["none"])
    cut = next(r for r in lines[tiny.BUDGET] if r["id"] == "r")
    assert cut["samples"][0]["reasoning_end"] == "budget" and cut["pass@1"] == 1.0  # cut, and still right
    assert all(s["reasoning_end"] == "budget" and s["stats"]["reasoning_tokens"] == 0
               for r in lines[0] for s in r["samples"])
    assert "budget  accuracy  reasoning mean  reasoning p90  s/task  hit budget" in err
    assert re.search(rf"^\s+{tiny.BUDGET}\s+\d+\.\d%\s+\d+\s+\d+\s+[0-9.]+\s+2/2$", err, re.M)
    assert re.search(r"^\s+none\s+100.0%\s+\d+\s+\d+\s+[0-9.]+\s+0/2$", err, re.M)
    svg = (tmp_path / "curve.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and "mean reasoning tokens" in svg
    again = run_ponder("batch", str(tasks), "-o", str(tmp_path / "results.jsonl"), "--model", tiny_r1,
                       "--think-budget", f"{tiny.BUDGET},0,none")
    assert again.stderr.decode().count("resuming: 2 of 2 tasks") == 3  # each budget's file resumes on its own


def test_chat_sets_the_budget_and_shows_it(r1):
    from tests.support.cli import piped_repl

    repl, term = piped_repl(r1, f"/set think_budget {tiny.BUDGET}\n{tiny.LONG_QUESTION}\n/stats\n".encode(),
                            GenerationParams(temperature=0))
    repl.loop()
    output = term.stdout.getvalue()
    assert f"think_budget = {tiny.BUDGET}" in term.stderr.getvalue()  # (piped: a note, on stderr; /stats' figures on stdout)
    assert tiny.BUDGET_ANSWER in output and f"think_budget {tiny.BUDGET}" in output.split("reasoning end: budget")[1]


def loop_by_rescan(stream: list[int], min_length: int, max_span: int = 512) -> int | None:
    """The shortest span p whose last `needed` tokens each equal the token p before them: the definition."""
    for span in range(8, max_span + 1):
        needed = max(2 * span, min_length - span)
        if len(stream) >= span + needed and all(stream[-i] == stream[-i - span] for i in range(1, needed + 1)):
            return span
    return None


@pytest.mark.parametrize("seed, alphabet, min_length, max_span",
                         [(3, 4, 0, 512), (4, 30, 0, 512), (5, 3, 120, 512), (6, 10**6, 0, 512), (7, 5, 60, 25)])
def test_the_detector_agrees_with_a_rescan_token_by_token(seed, alphabet, min_length, max_span):
    rng = random.Random(seed)
    stream: list[int] = []
    while len(stream) < 3000:  # varied stretches, and loops of random spans and lengths between them
        if rng.random() < 0.5:
            stream += [rng.randrange(alphabet) for _ in range(rng.randrange(1, 200))]
        else:
            span = [rng.randrange(alphabet) for _ in range(rng.choice([3, 8, 9, 25, 100]))]
            stream += span * rng.randrange(1, 5)
    detector = LoopDetector(min_length=min_length, max_span=max_span)  # (25: spans at the window's edge, often)
    found = [detector.add(token) for token in stream]
    expected = [loop_by_rescan(stream[:n], min_length, max_span) for n in range(1, len(stream) + 1)]
    assert found == expected and any(expected)
    assert len(detector.places) <= 4 * max_span  # (10**6 symbols: the tokens gone from the window were forgotten)


def test_a_loop_across_the_moment_old_tokens_are_forgotten_is_still_found():
    span = list(range(10**6, 10**6 + 20))  # new tokens: the 2048th distinct one comes inside the first copy
    found = feed(LoopDetector(), list(range(2041)) + span * 3)
    assert found[-1] == 20 and not any(found[:-1])
