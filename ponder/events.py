"""The small vocabulary shared by backends, the core and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]


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


# --- what a backend yields -------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """Decoded text of one or more generated tokens (text may be empty mid-UTF-8)."""

    text: str
    tokens: int = 1


@dataclass(frozen=True)
class BackendStats:
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_s: float
    decode_tokens_per_s: float
    total_s: float
    peak_memory_bytes: int | None = None  # where the backend measures it (MLX)


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    stats: BackendStats


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


@dataclass(frozen=True)
class Reply:
    """The end of one reply: everything the front ends need to finish."""

    reasoning: str
    answer: str
    finish_reason: FinishReason
    stats: Stats


ReplyEvent = Union[ReasoningDelta, AnswerDelta, ReasoningDone, Reply]
