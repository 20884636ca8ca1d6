"""The "auto" speculation controller (ponder.speculate.AdaptiveSpeculation) alone, on a made-up clock: it
guesses where guesses pay by what calls cost and how often guesses are kept, and not where they lose.

Each test drives the controller as a backend's token loop does (guess, then settle the call with its
seconds) over a known text: a guessed token is kept while it equals the text's next token."""

from __future__ import annotations

import random

from ponder.events import GenerationParams
from ponder.speculate import LONGEST, AdaptiveSpeculation, NgramDrafter, Speculation, speculation_for

GPU = lambda guessed: 1.0 + 0.02 * guessed  # noqa: E731  a call of many tokens costs what one does
CPU = lambda guessed: 1.0 + 0.95 + 0.5 * guessed  # noqa: E731  (measured on SmolLM2 Q4_1, 2 cores: 2x, then +0.5 a token)


def drive(speculation: Speculation, prompt: list[int], text: list[int], cost) -> dict:
    """Generate `text` after `prompt` through `speculation`, each call costing cost(guessed) plain calls;
    its first token comes from the prompt's own call, as in a backend."""
    history, done, spent, guesses = list(prompt) + text[:1], 1, 0.0, []
    while done < len(text):
        guess = speculation.guess(history, len(text) - done - 1)
        kept = 0
        while kept < len(guess) and guess[kept] == text[done + kept]:
            kept += 1
        seconds = 0.01 * (cost(len(guess)) if guess else 1.0)
        speculation.settle(len(guess), kept, seconds)
        guesses.append((len(guess), kept))
        history.extend(text[done : done + kept + 1])
        done += kept + 1
        spent += seconds
    return {"speed": 0.01 * (len(text) - 1) / spent, "guessed": [g for g in guesses if g[0]], "calls": len(guesses),
            "all": guesses}


def repeated(block: int, times: int, seed: int = 0) -> list[int]:
    """A block of distinct random tokens written out `times` times (code copied, a loop of reasoning)."""
    rng = random.Random(seed)
    return rng.sample(range(1000, 30000), block) * times


def noise(length: int, seed: int = 0) -> list[int]:
    """Text whose short n-grams recur but whose continuations do not (open-ended prose)."""
    rng = random.Random(seed)
    return [rng.choice(range(100, 140)) for _ in range(length)]


def test_auto_does_not_guess_before_it_has_timed_a_plain_call():
    assert AdaptiveSpeculation(NgramDrafter()).guess([1, 2, 1, 2, 1], 10) == []


def test_on_text_that_repeats_itself_auto_guesses_long_and_gains_even_where_calls_cost_their_tokens():
    text = repeated(40, 8)
    for cost, least in ((GPU, 4.5), (CPU, 1.5)):  # (the first 40 tokens have nothing to repeat)
        result = drive(AdaptiveSpeculation(NgramDrafter()), [], text, cost)
        assert result["speed"] >= least, (cost, result["speed"])
        assert max(g for g, _ in result["guessed"]) == LONGEST


def test_where_guesses_are_wrong_auto_stops_guessing_and_loses_next_to_nothing():
    text = noise(600)
    fixed = drive(Speculation(NgramDrafter()), [], text, CPU)
    auto = drive(AdaptiveSpeculation(NgramDrafter()), [], text, CPU)
    assert fixed["speed"] < 0.8  # guessing every time loses here
    assert auto["speed"] >= 0.97
    assert sum(1 for g, _ in auto["guessed"]) <= 5  # it learns from the guesses it did not make


class HalfRight:
    """A free drafter that knows the text but gets each position's token right only half the time."""

    free = True

    def __init__(self, text: list[int]):
        self.text = text

    def propose(self, history, limit):
        ahead = range(len(history), min(len(history) + limit, len(self.text)))
        return [self.text[j] if random.Random(j).random() < 0.5 else -1 for j in ahead]


def test_where_a_guess_is_kept_half_the_time_auto_guesses_on_a_gpu_and_not_on_a_cpu():
    text = noise(800)
    on_gpu = drive(AdaptiveSpeculation(HalfRight(text)), [], text, GPU)
    on_cpu = drive(AdaptiveSpeculation(HalfRight(text)), [], text, CPU)
    assert on_gpu["speed"] > 1.3 and len(on_gpu["guessed"]) > 200
    assert on_cpu["speed"] >= 0.97 and len(on_cpu["guessed"]) < 10


def test_it_follows_the_text_from_copying_to_new_prose_and_back_to_copying():
    copy, prose = repeated(50, 3, seed=1), noise(300, seed=2)
    text = copy + prose + copy
    auto = drive(AdaptiveSpeculation(NgramDrafter()), copy, text, CPU)
    fixed = drive(Speculation(NgramDrafter()), copy, text, CPU)
    assert auto["speed"] > 1.15 and auto["speed"] > fixed["speed"] + 0.1


class CostlyDrafter:
    """A draft model's drafter whose guesses are always right and cost `cost` plain calls a token."""

    free = False

    def __init__(self, text: list[int]):
        self.text, self.asked = text, 0

    def propose(self, history, limit):
        self.asked += 1
        return self.text[len(history) : len(history) + limit]


def test_with_a_draft_model_that_costs_too_much_auto_stops_asking_it_and_tries_again_later():
    text = repeated(1500, 1)
    result = drive(AdaptiveSpeculation(CostlyDrafter(text)), [], text, lambda g: 1.0 + 2.0 * g)  # a draft decode and more a token
    assert result["speed"] > 0.9
    at, when = 0, []
    for guessed, kept in result["all"]:
        if guessed:
            when.append(at)
        at += kept + 1
    assert 2 <= len(when) <= 30 and max(when) > 500  # tried, stopped, tried again later
    cheap = drive(AdaptiveSpeculation(CostlyDrafter(text)), [], text, lambda g: 1.0 + 0.1 * g)
    assert cheap["speed"] > 4


def test_a_prompt_of_40000_tokens_is_no_trouble():
    speculation = AdaptiveSpeculation(NgramDrafter())
    history = noise(40000)
    for _ in range(3):
        speculation.guess(history, 10)
        speculation.settle(0, 0, 0.01)
        history.append(7)
    result = drive(AdaptiveSpeculation(NgramDrafter()), noise(40000), repeated(30, 4), CPU)
    assert result["speed"] > 1.2


class FlipDrafter:
    """A free drafter that knows the text: right until position `until`, wrong after it."""

    free = True

    def __init__(self, text: list[int], until: int):
        self.text, self.until = text, until

    def propose(self, history, limit):
        ahead = range(len(history), min(len(history) + limit, len(self.text)))
        return [self.text[j] if j < self.until else -1 for j in ahead]


def test_old_successes_fade_once_guesses_start_failing():
    text = noise(1000)
    speculation = AdaptiveSpeculation(FlipDrafter(text, until=500))
    result = drive(speculation, [], text, CPU)
    guessed_late = [g for g in result["all"][-400:] if g[0]]
    assert result["speed"] > 1.15 and len(guessed_late) <= 3


def test_a_slow_first_plain_call_does_not_make_losing_guesses_look_cheap():
    text = noise(800)
    speculation = AdaptiveSpeculation(HalfRight(text))
    first = [True]
    original = speculation.settle

    def settle(guessed, kept, seconds):  # the first plain call, a warm-up, takes 3 times as long
        if not guessed and first[0]:
            first[0], seconds = False, seconds * 3
        original(guessed, kept, seconds)

    speculation.settle = settle
    assert drive(speculation, [], text, CPU)["speed"] >= 0.95


def test_a_repeatable_reply_guesses_the_same_whatever_the_calls_cost():
    """A greedy or seeded reply: auto decides from the text alone, so its calls (and, where an engine's logits
    depend on a call's size, its text) are the same every run, on a busy machine or an idle one."""
    text = repeated(40, 3) + noise(200) + repeated(40, 3, seed=4)
    runs = [drive(AdaptiveSpeculation(NgramDrafter(), repeatable=True), [], text, cost)["all"] for cost in (GPU, CPU)]
    assert runs[0] == runs[1] and sum(g for g, _ in runs[0]) > 100
    measured = [drive(AdaptiveSpeculation(NgramDrafter()), [], text, cost)["all"] for cost in (GPU, CPU)]
    assert measured[0] != measured[1]  # (what it would do otherwise)
    assert speculation_for("auto", None, repeatable=True).repeatable
    assert GenerationParams(temperature=0).repeatable and GenerationParams(seed=3).repeatable
    assert not GenerationParams().repeatable
