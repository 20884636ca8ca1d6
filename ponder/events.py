"""The small vocabulary shared by backends, the core and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

if TYPE_CHECKING:
    from ponder.constraint import Constraint, Parsed

Role = Literal["system", "user", "assistant"]
# "cancelled": the user stopped it; "interrupted": the backend failed mid-reply (a server's stream broke).
# "loop": ponder stopped a reply that kept repeating itself.
FinishReason = Literal["stop", "length", "cancelled", "interrupted", "loop"]
# How the reasoning ended: the model closed it; ponder closed it at --think-budget (budget), at the
# user's "answer now" (user) or to rescue a loop (loop); the token budget ran out (length); the user
# stopped the reply (cancelled) or the backend broke it off (also "cancelled": nothing chose to end it).
Speculate = Literal["auto", "ngram", "draft", "off"]
ReasoningEnd = Literal["model", "budget", "user", "loop", "length", "cancelled"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings. Defaults are DeepSeek's recommendations for R1 models."""

    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 32768
    seed: int | None = None
    think_budget: int | None = None  # reasoning tokens before ponder closes the reasoning; 0: no thinking
    budget_message: str | None = None  # the text that closes it (None: Qwen's documented message)
    on_loop: Literal["answer", "stop", "continue"] = "answer"  # a reasoning that repeats itself
    constraint: Constraint | None = None  # --schema / --choice: what the answer must be (ponder.constraint)
    # Speculative decoding (ponder.speculate): guesses of the next tokens checked by the model in one call.
    # "auto": n-gram guesses while they pay; "ngram": always; "draft": the draft model's (LoadOptions.draft).
    speculate: Speculate = "off"

    @property
    def repeatable(self) -> bool:
        """Whether the reply should be the same every run: greedy, or seeded."""
        return self.temperature <= 0 or self.seed is not None


# --- what a backend yields -------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """Decoded text of one or more generated tokens (text may be empty mid-UTF-8).

    `part` is None for the model's raw text, which the core splits at `</think>`; a server that
    separates the reasoning itself says which part the text belongs to.
    """

    text: str
    tokens: int = 1
    part: Literal["reasoning", "answer"] | None = None
    ids: tuple[int, ...] = ()  # the token ids, where the backend has them (local backends)


@dataclass(frozen=True)
class Continuation:
    """A prompt that goes on after what the model generated: the prompt, the generated tokens exactly
    as generated (`ids`; never re-tokenized from `text`, so a backend's cache holds them already), then
    `forced` text, fed as tokens rather than sampled (a budget's closing message)."""

    prompt: str
    ids: tuple[int, ...]
    text: str
    forced: str


@dataclass(frozen=True)
class SpeculationStats:
    """What speculative decoding did in a reply: tokens guessed, guesses the model kept, and model calls
    that produced the reply's tokens (each gives one token more than it accepted). A reply cut at its
    think budget counts both streams, the first's up to where it stopped (a few tokens past the cut)."""

    drafted: int
    accepted: int
    calls: int


@dataclass(frozen=True)
class BackendStats:
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    decode_tokens_per_s: float
    total_s: float
    peak_memory_bytes: int | None = None  # where the backend measures it (MLX)
    reasoning_tokens: int | None = None  # where the backend knows better than counting (a server's usage)
    prefilled_tokens: int | None = None  # prompt tokens processed, the rest came from the cache (local backends)
    route: str | None = None  # how a server was asked, e.g. "/v1/completions, prompt rendered by ponder"
    speculation: SpeculationStats | None = None  # where speculative decoding was on (local backends)


def decode_timing(generated: int, started: float, first: float, last: float) -> tuple[float, float]:
    """Time to the first token and the decode rate (tokens/s) of `generated` tokens, the first at `first`
    and the last at `last`, asked for at `started` (perf_counter seconds). The rate counts the tokens
    after the first over the time they took; each figure is 0 where the tokens cannot tell it."""
    span = last - first
    return (first - started if generated else 0.0,
            (generated - 1) / span if generated > 1 and span > 0 else 0.0)


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    stats: BackendStats
    error: str | None = None  # why, when "interrupted"


BackendEvent = Union[TextDelta, Finished]


# --- what the core yields to a front end -------------------------------------


@dataclass(frozen=True)
class ReasoningDelta:
    text: str
    tokens: int  # reasoning tokens so far, for a live count


@dataclass(frozen=True)
class AnswerDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDone:
    """The model closed its reasoning (`</think>`)."""

    seconds: float
    tokens: int


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    time_to_first_token_s: float
    decode_tokens_per_s: float
    thinking_s: float
    total_s: float
    peak_memory_bytes: int | None = None
    route: str | None = None  # BackendStats.route
    reasoning_end: ReasoningEnd | None = None  # None: the reply had no reasoning
    prefilled_tokens: int | None = None  # prompt tokens processed; the rest came from a cache (local backends)
    speculation: SpeculationStats | None = None  # BackendStats.speculation


@dataclass(frozen=True)
class Reply:
    """The end of one reply: everything the front ends need to finish."""

    reasoning: str
    answer: str
    finish_reason: FinishReason
    stats: Stats
    error: str | None = None  # why it was "interrupted": what arrived is kept, then the front end fails
    parsed: Parsed | None = None  # a constrained answer's value, checked (ponder.constraint)


ReplyEvent = Union[ReasoningDelta, AnswerDelta, ReasoningDone, Reply]
