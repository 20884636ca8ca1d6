"""A constrained answer, token by token: llguidance's mask applied to the logits inside ponder's sampler.

The reasoning is free. For a reasoning model the mask starts after the model's own `</think>` (or at
once, where the prompt already closed the reasoning: a budget's, answer-now's or --no-think's closing
text); for a plain model, at the first token. From then on every token is drawn from those the grammar
allows, and the reply ends as soon as the grammar is complete. Both local backends, and each sequence
of the batch decoders, keep an AnswerMask of their own.
"""

from __future__ import annotations

import numpy as np

from ponder.constraint import Constraint
from ponder.errors import BackendError
from ponder.events import Continuation
from ponder.reasoning import CLOSE_TAG, OPEN_TAG


def closes_reasoning(prompt: str | Continuation, reasoning: bool) -> bool:
    """Whether the answer starts with the first generated token: a plain model, or a prompt whose text
    already closed the reasoning (a Continuation's closing text, a prefilled `</think>`)."""
    if not reasoning:
        return True
    text = prompt.forced if isinstance(prompt, Continuation) else prompt
    return text.rfind(CLOSE_TAG) > text.rfind(OPEN_TAG)


def llama_vocabulary(vocab, end_tokens: list[int]):
    """llguidance's view of a llama.cpp vocabulary: each token's text, control tokens (and added ones written
    like `<tag>`) marked special, tokenizing left to llama.cpp itself. As llguidance.llamacpp builds it, but
    with llama.cpp's current call for a token's kind (the deprecated one warns once a token: 152k warnings)."""
    import ctypes

    import llama_cpp as lib
    from llguidance import LLTokenizer

    buffer = ctypes.create_string_buffer(16 * 1024)
    tokens: list[bytes] = []
    for token in range(lib.llama_vocab_n_tokens(vocab)):
        n = lib.llama_token_to_piece(vocab, token, buffer, len(buffer), 0, True)
        text = buffer.raw[:max(n, 0)]
        kind = lib.llama_vocab_get_attr(vocab, token)
        if kind & lib.LLAMA_TOKEN_ATTR_CONTROL or (
                kind & lib.LLAMA_TOKEN_ATTR_USER_DEFINED and text.startswith(b"<") and text.endswith(b">")):
            text = b"\xff" + text  # llguidance's mark of a special token: never part of the answer's text
        tokens.append(text)
    tokenize = ctypes.cast(lib.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    return LLTokenizer.from_llamacpp(tokens=tokens, vocab_ptr=vocab, tokenize_fptr=tokenize, eos_token=end_tokens,
                                     slices=None)


def mlx_vocabulary(tokenizer, n_vocab: int):
    """llguidance's view of an mlx-lm tokenizer: the Hugging Face fast tokenizer it wraps, with mlx-lm's end
    tokens, its ids as many as the model's logits (an embedding padded past the tokenizer: those ids are
    never allowed)."""
    from llguidance.hf import from_tokenizer

    wrapped = getattr(tokenizer, "_tokenizer", tokenizer)
    try:
        return from_tokenizer(wrapped, n_vocab=max(n_vocab, len(wrapped)), eos_token=sorted(tokenizer.eos_token_ids))
    except ValueError as exc:  # a slow (sentencepiece) tokenizer, or a tokenizer.json llguidance cannot read
        raise BackendError(f"cannot constrain this model's answer: {exc}",
                           hint="llguidance needs the model's fast tokenizer (tokenizer.json)") from exc


_BIT_INDEX = np.arange(32)


def _nothing_allowed() -> BackendError:
    return BackendError("the answer's grammar allows no next token", hint="this is a bug in ponder")


class AnswerMask:
    """One reply's grammar state. `draw(sampler, logits)` draws as the grammar allows (freely while the
    reasoning runs); `took(token, text)` after it says whether the answer is complete."""

    def __init__(self, vocabulary, constraint: Constraint, started: bool, n_vocab: int):
        import llguidance
        import llguidance.numpy

        self._matcher = llguidance.LLMatcher(vocabulary, constraint.grammar(), log_level=0)
        if self._matcher.is_error():
            raise BackendError(f"cannot constrain the answer: {self._matcher.get_error()}")
        self._fill = llguidance.numpy.fill_next_token_bitmask
        self._bits = llguidance.numpy.allocate_token_bitmask(1, vocabulary.vocab_size)
        self._n_vocab = n_vocab
        self._ends = frozenset(vocabulary.eos_tokens)
        self.active = started
        self._tail = ""  # the last characters of the reasoning, to see `</think>` across tokens

    def draw(self, sampler, logits: np.ndarray) -> int:
        """`sampler`'s draw from the logits as the grammar masks them. Mostly the best token is allowed, and
        the draw needs only the tokens near it (Sampler.sample_allowed); else every logit is masked first."""
        if not self.active:
            return sampler.sample(logits)
        self._fill(self._matcher, self._bits)
        token = sampler.sample_allowed(logits, self._bits[0])
        if token is None:
            self._apply(logits)
            token = sampler.sample(logits)
        return token

    def _apply(self, logits: np.ndarray) -> None:
        words = self._bits[0]
        some = np.flatnonzero(words)  # 32 tokens a word
        if some.size * 4 < words.size:  # few allowed (JSON's punctuation, a key): gather them, fill the rest
            bits = np.unpackbits(words[some].view(np.uint8).reshape(-1, 4), axis=1, bitorder="little").view(bool)
            allowed = (some[:, None] * 32 + _BIT_INDEX)[bits]
            allowed = allowed[allowed < self._n_vocab]
            if not allowed.size:
                raise _nothing_allowed()
            kept = logits[allowed]
            logits.fill(-np.inf)
            logits[allowed] = kept
        else:
            np.copyto(logits, -np.inf, where=~self._unpacked())

    def allowed(self) -> np.ndarray | None:
        """The tokens the grammar allows next (a bool for each of the `n_vocab` logits), or None while the
        reasoning runs: for a backend that masks its logits itself (MLX: without copying them)."""
        if not self.active:
            return None
        self._fill(self._matcher, self._bits)
        return self._unpacked()

    def _unpacked(self) -> np.ndarray:
        allowed = np.unpackbits(self._bits.view(np.uint8), count=self._n_vocab, bitorder="little").view(bool)
        if not allowed.any():
            raise _nothing_allowed()
        return allowed

    def took(self, token: int, text: str) -> bool:
        """Follow the drawn token (its text, decoded); True when the grammar is complete: the answer ends."""
        if not self.active:
            self._tail = (self._tail + text)[-2 * len(CLOSE_TAG):]
            self.active = CLOSE_TAG in self._tail
            return False
        if token in self._ends:
            return True
        if not self._matcher.consume_token(token):
            raise BackendError(f"the answer left its grammar: {self._matcher.get_error()}", hint="this is a bug in ponder")
        return self._matcher.is_stopped()
