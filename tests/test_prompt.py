"""Prompt rendering with the model's own chat template, on DeepSeek-R1-Distill-Qwen-7B's real tokenizer."""

from __future__ import annotations

import ctypes

import pytest

from ponder.errors import ModelError
from ponder.events import GenerationParams, Message
from ponder.prompt import THINK_PREFIX, ChatFormat, _compile, force_think_prefix, render_prompt
from tests.support.tiny_r1 import TRAINING_PAIRS

BOS, USER, ASSISTANT, EOS, THINK, NEWLINE = 151646, 151644, 151645, 151643, 151648, 198


def load(path: str):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel

    return LlamaCppModel(path, LoadOptions(context=1024))


@pytest.fixture(scope="module")
def r1(tiny_r1_random):
    model = load(tiny_r1_random)
    yield model
    model.close()


def reference_prompt_via_llama_cpp(model, messages) -> str:
    """llama.cpp's own (independent, C++) rendering of DeepSeek-R1's template."""
    import llama_cpp as lib

    chat = (lib.llama_chat_message * len(messages))(
        *[lib.llama_chat_message(role=m.role.encode(), content=m.content.encode()) for m in messages]
    )
    template = model.info.chat.template.encode()
    buf = ctypes.create_string_buffer(1 << 16)
    n = lib.llama_chat_apply_template(template, chat, len(messages), True, buf, len(buf))
    assert 0 < n < len(buf)
    return buf.raw[:n].decode()


def test_model_is_recognised_as_reasoning_with_its_special_tokens(r1):
    chat = r1.info.chat
    assert chat.reasoning
    assert chat.bos_token == "<｜begin▁of▁sentence｜>"
    assert chat.eos_token == "<｜end▁of▁sentence｜>"
    assert "<｜Assistant｜>" in chat.template


def test_single_turn_prompt_has_the_exact_token_ids(r1):
    prompt = render_prompt(r1.info.chat, [Message("user", "What is 12*7?")])
    ids = r1.tokenize(prompt)
    question = r1._tokenize("What is 12*7?", add_bos=False)
    # One BOS (the template writes it; tokenizing must not add another), one "<think>\n" at the end.
    assert ids == [BOS, USER, *question, ASSISTANT, THINK, NEWLINE]


def test_rendering_matches_llama_cpp_template_engine_plus_one_think(r1):
    # llama.cpp's built-in DeepSeek renderer keeps reasoning in history, so give it none here.
    messages = [
        Message("user", "What is 2+2?"),
        Message("assistant", "4"),
        Message("user", "And 3+3?"),
    ]
    ours = r1.tokenize(render_prompt(r1.info.chat, messages))
    reference = r1.tokenize(reference_prompt_via_llama_cpp(r1, messages) + "<think>\n")
    assert ours == reference
    assert ours.count(THINK) == 1 and ours[-2:] == [THINK, NEWLINE]
    assert ours.count(BOS) == 1 and ours[0] == BOS


def test_earlier_reasoning_never_reaches_the_model(r1):
    messages = [
        Message("user", "What is 2+2?"),
        Message("assistant", "SECRET-REASONING\n</think>\n\n4"),
        Message("user", "Sure?"),
    ]
    prompt = render_prompt(r1.info.chat, messages)
    assert "SECRET-REASONING" not in prompt
    assert "<｜Assistant｜>\n\n4<｜end▁of▁sentence｜>" in prompt


def test_earlier_turn_goes_back_as_the_template_renders_the_full_turn(tiny_r1):
    """R1's template keeps what follows </think> as the model wrote it, blank line included:
    the turn ponder stores from a real reply must render to the bytes of the full turn."""
    from ponder.history import Conversation, Turn
    from ponder.exchange import generate_reply

    question, follow_up = "What is 12*7?", "And 2+2?"
    model = load(tiny_r1)
    try:
        reply = list(generate_reply(model, [Message("user", question)], GenerationParams()))[-1]
    finally:
        model.close()
    written = TRAINING_PAIRS[question]  # what the trained model writes after the prompt's "<think>\n"
    assert reply.reasoning + "</think>" + reply.answer == written
    stored = Conversation(turns=[Turn("user", question), Turn.from_reply(reply), Turn("user", follow_up)])

    chat = model.info.chat
    full = [{"role": "user", "content": question}, {"role": "assistant", "content": THINK_PREFIX + written},
            {"role": "user", "content": follow_up}]
    template = _compile(chat.template).render(
        messages=full, add_generation_prompt=True, bos_token=chat.bos_token, eos_token=chat.eos_token
    )
    assert "<｜Assistant｜>\n\n12 × 7 = 84" in template  # the real template keeps the blank line
    assert render_prompt(chat, stored.messages()) == force_think_prefix(template)


def test_newer_template_that_already_ends_in_think_gets_no_second_one():
    newer = ChatFormat(
        template="{{ bos_token }}{% for m in messages %}<｜User｜>{{ m['content'] }}{% endfor %}<｜Assistant｜><think>\n",
        bos_token="<s>",
        reasoning=True,
    )
    prompt = render_prompt(newer, [Message("user", "hi")])
    assert prompt == "<s><｜User｜>hi<｜Assistant｜><think>\n"
    assert force_think_prefix("x<think>") == "x<think>\n"


def test_non_reasoning_model_gets_no_think_prefix():
    chatml = ChatFormat(
        template="{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        reasoning=False,
    )
    assert render_prompt(chatml, [Message("user", "hi")]).endswith("<|im_start|>assistant\n")


def test_missing_or_broken_template_is_a_clear_error():
    with pytest.raises(ModelError, match="no chat template"):
        render_prompt(ChatFormat(template=None), [Message("user", "hi")])
    with pytest.raises(ModelError, match="chat template failed"):
        render_prompt(ChatFormat(template="{{ raise_exception('roles must alternate') }}"), [Message("user", "x")])
