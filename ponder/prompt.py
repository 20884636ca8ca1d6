"""Messages to prompt text, with the model's own chat template, once for every backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from ponder.errors import ModelError
from ponder.events import Message
from ponder.reasoning import CLOSE_TAG, OPEN_TAG, strip_reasoning

THINK_PREFIX = OPEN_TAG + "\n"


@dataclass(frozen=True)
class ChatFormat:
    """What a model says about how to talk to it."""

    template: str | None
    bos_token: str = ""
    eos_token: str = ""
    reasoning: bool = False  # a <think>-style model: its generation is forced to begin with "<think>\n"


@lru_cache(maxsize=8)
def _compile(template: str):
    # Imported here: jinja2 costs ~30 ms, and `ponder --help` never renders a prompt.
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    # The same environment Hugging Face's apply_chat_template uses, so templates behave alike.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_prompt(fmt: ChatFormat, messages: Sequence[Message]) -> str:
    """The prompt text for `messages`, ending where the assistant's reply begins.

    Earlier assistant turns go back without their reasoning (DeepSeek's multi-turn rule) but
    otherwise exactly as written, as R1's template renders the full turn; a reasoning model's
    prompt ends with exactly one "<think>\\n", whether or not its template already appends it.
    """
    if not fmt.template:
        raise ModelError("the model carries no chat template, so ponder cannot format a conversation for it")
    history = [
        {"role": m.role, "content": strip_reasoning(m.content) if m.role == "assistant" else m.content}
        for m in messages
    ]
    from jinja2 import TemplateError

    try:
        text = _compile(fmt.template).render(
            messages=history,
            add_generation_prompt=True,
            bos_token=fmt.bos_token,
            eos_token=fmt.eos_token,
        )
    except TemplateError as exc:
        raise ModelError(f"the model's chat template failed: {exc}") from exc
    if fmt.reasoning:
        text = force_think_prefix(text)
    return text


def is_reasoning_model(template: str | None, think_tokens: list[int]) -> bool:
    """A <think>-style model: its template handles `</think>`, or `<think>` is one token."""
    return bool(template and CLOSE_TAG in template) or len(think_tokens) == 1


def force_think_prefix(text: str) -> str:
    if text.endswith(THINK_PREFIX):
        return text
    if text.endswith(OPEN_TAG):
        return text + "\n"
    return text + THINK_PREFIX
