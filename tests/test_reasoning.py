"""The <think> splitter and \\boxed{} extraction, on strings."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ponder.reasoning import ThinkSplitter, extract_boxed, split_reasoning, strip_reasoning


def feed_chunks(chunks: list[str], starts_in_reasoning: bool) -> tuple[str, str]:
    splitter = ThinkSplitter(starts_in_reasoning)
    parts = {"reasoning": "", "answer": ""}
    for chunk in chunks:
        for kind, text in splitter.feed(chunk):
            parts[kind] += text
    for kind, text in splitter.flush():
        parts[kind] += text
    return parts["reasoning"], parts["answer"]


def test_output_that_begins_inside_thinking():
    # The answer keeps the blank line after </think>: it goes back to the model as written.
    assert split_reasoning("Let me see.\n12*7=84\n</think>\n\nIt is 84.") == ("Let me see.\n12*7=84\n", "\n\nIt is 84.")


def test_output_that_repeats_the_opening_tag():
    assert split_reasoning("<think>\nhmm\n</think>\n\nyes") == ("hmm\n", "\n\nyes")


def test_opening_tag_when_prompt_did_not_force_it():
    assert split_reasoning("\n<think>\nhmm</think>yes", starts_in_reasoning=False) == ("hmm", "yes")


def test_text_before_a_late_think_tag_is_all_answer():
    assert split_reasoning("Sure. <think>x</think>y", starts_in_reasoning=False) == ("", "Sure. <think>x</think>y")


def test_empty_thinking():
    assert split_reasoning("</think>\n\nDirect answer.") == ("", "\n\nDirect answer.")
    assert split_reasoning("<think>\n\n</think>\n\nDirect.") == ("", "\n\nDirect.")


def test_output_without_reasoning_is_the_answer_as_written():
    assert split_reasoning("\n Hello.\n", starts_in_reasoning=False) == ("", "\n Hello.\n")
    assert split_reasoning(" \n", starts_in_reasoning=False) == ("", " \n")


def test_cut_off_before_close_is_all_reasoning():
    assert split_reasoning("still thinking about 12*7 and </thi") == ("still thinking about 12*7 and </thi", "")


def test_text_after_the_answer_keeps_later_tags_literal():
    assert split_reasoning("r</think>a </think> <think> b") == ("r", "a </think> <think> b")


def test_tag_split_across_chunks():
    assert feed_chunks(["reason <", "/thi", "nk>", "\n\nans", "wer"], True) == ("reason ", "\n\nanswer")


def test_in_reasoning_tracks_the_state():
    splitter = ThinkSplitter(True)
    splitter.feed("abc </th")
    assert splitter.in_reasoning
    splitter.feed("ink> x")
    assert not splitter.in_reasoning


# Text built from the pieces that matter (tags, tag fragments, whitespace) and ordinary text.
pieces = st.sampled_from(["<think>", "</think>", "<", "</", "think", ">", "\n", " ", "12*7", "é", "\\boxed{84}", "x"])
texts = st.lists(pieces, max_size=30).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12), inside=st.booleans())
def test_every_chunking_gives_what_feeding_whole_gives(text, cuts, inside):
    points = sorted({c % (len(text) + 1) for c in cuts})
    chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
    assert feed_chunks(chunks, inside) == split_reasoning(text, inside)


@settings(max_examples=200, deadline=None)
@given(reasoning=st.text(), answer=st.text())
def test_well_formed_output_splits_back_into_its_parts(reasoning, answer):
    reasoning = reasoning.replace("</think>", "").replace("<think>", "").lstrip()
    got = split_reasoning(reasoning + "</think>" + answer)
    assert got == (reasoning, answer)


def test_history_keeps_only_the_answer_as_written():
    assert strip_reasoning("Thinking...\n</think>\n\nThe answer.\n") == "\n\nThe answer.\n"
    assert strip_reasoning("a</think>b</think> c") == " c"  # the last </think>, as R1's template splits
    assert strip_reasoning("Plain answer") == "Plain answer"


def test_boxed_nested_braces():
    assert extract_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\{2, 3\}}") == r"\{2, 3\}"


def test_boxed_last_one_wins():
    assert extract_boxed(r"first \boxed{1}, then \boxed{2}") == "2"


def test_boxed_without_braces_and_fbox():
    assert extract_boxed(r"$\boxed 5$") == "5"
    assert extract_boxed(r"\fbox{7}") == "7"
    assert extract_boxed(r"\boxed{1} and later \fbox{9}") == "9"


def test_boxed_absent_or_unbalanced():
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxed{unclosed") is None
    assert extract_boxed(r"\boxed{1} then \boxed{oops") == "1"


def test_an_empty_box_is_no_answer():
    assert extract_boxed("So the answer is \\boxed{}.") is None
    assert extract_boxed("\\boxed{ } and then \\boxed{}") is None
    assert extract_boxed("\\boxed{7} then an empty \\boxed{}") is None  # the last box is the answer, and it is empty
