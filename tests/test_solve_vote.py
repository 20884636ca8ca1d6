"""Majority voting by mathematical equivalence, and LaTeX made readable for terminals."""

from __future__ import annotations

from ponder.latex import latex_to_unicode, render_math
from ponder.solve import MATH_INSTRUCTION, equivalent, majority_vote, math_prompt


def test_math_prompt_is_deepseeks():
    assert math_prompt("  What is 2+2? ") == "What is 2+2?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert MATH_INSTRUCTION.endswith("within \\boxed{}.")


def test_equivalent_forms_of_one_number():
    assert equivalent("1/2", "0.5") and equivalent("\\frac{1}{2}", "0.5") and equivalent("\\frac{1}{2}", "1/2")
    assert not equivalent("1/2", "0.25")


def test_sets_and_intervals():
    assert equivalent("\\{2, 3\\}", "\\{3, 2\\}")
    assert equivalent("[0, 1)", "[0,1)")
    assert not equivalent("[0, 1)", "(0, 1]")


def test_vote_groups_equivalent_answers():
    vote = majority_vote(["1/2", "3", "0.5", None, "\\frac{1}{2}", "3"])
    assert vote.winner == "1/2"
    assert vote.counts == [("1/2", 3), ("3", 2)]
    assert vote.missing == 1


def test_vote_with_no_answers():
    vote = majority_vote([None, None])
    assert vote.winner is None and vote.counts == [] and vote.missing == 2


def test_latex_is_readable():
    assert latex_to_unicode("\\frac{1}{2}") == "1/2"
    assert latex_to_unicode("\\sqrt{2}") == "√(2)"
    assert latex_to_unicode("12 \\times 7 \\leq 90") == "12 × 7 ≤ 90"
    assert latex_to_unicode("x^{10} + \\alpha_1") == "x¹⁰ + α₁"
    assert render_math("so $x^2 = 4$ and \\boxed{\\{2, 3\\}}") == "so x² = 4 and **{2, 3}**"
    assert render_math("it costs $5 and $10 today") == "it costs $5 and $10 today"
