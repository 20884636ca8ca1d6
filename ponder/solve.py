"""Math problems: DeepSeek's instruction, and majority voting over answers by mathematical equivalence."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def math_prompt(problem: str) -> str:
    """The user turn DeepSeek evaluates R1 with: the problem, then the instruction."""
    return f"{problem.strip()}\n{MATH_INSTRUCTION}"


@lru_cache(maxsize=1024)
def _parsed(answer: str):
    from math_verify import parse  # imports sympy: only when answers are compared

    return tuple(parse(f"${answer}$"))


def equivalent(a: str, b: str) -> bool:
    """Whether two final answers are the same mathematically (1/2, 0.5 and \\frac{1}{2};
    {2, 3} and {3, 2}), as math-verify judges for R1's published evaluations."""
    if a.strip() == b.strip():
        return True
    from math_verify import verify

    left, right = _parsed(a), _parsed(b)
    return bool(left and right and verify(list(left), list(right)))


@dataclass(frozen=True)
class Vote:
    winner: str | None
    counts: list[tuple[str, int]]  # one representative per group of equivalent answers, most votes first
    missing: int  # samples that gave no \boxed{} answer


def majority_vote(answers: Sequence[str | None]) -> Vote:
    groups: list[list[str]] = []
    for answer in answers:
        if answer is None:
            continue
        for group in groups:
            if equivalent(group[0], answer):
                group.append(answer)
                break
        else:
            groups.append([answer])
    # Most votes first; ties go to the answer seen first (a stable sort keeps that order).
    ranked = sorted(groups, key=len, reverse=True)
    counts = [(group[0], len(group)) for group in ranked]
    return Vote(winner=counts[0][0] if counts else None, counts=counts, missing=sum(a is None for a in answers))
