"""--schema and --choice through a server: what each kind of server is sent, or why it cannot be asked.

Only some servers constrain a reasoning model's answer without constraining its reasoning:
- llama-server, on the raw route ponder uses for it, takes a GBNF `grammar` applied from the first
  generated token. ponder sends one that lets the reasoning run free, any text without `</think>`,
  then the closing tag (the model's `</think>` token matches it as text), then the answer's grammar:
  the one llama-server itself makes of the schema (its own converter, asked once a schema through its
  native /completion, whose reply shows the grammar it applied). A prompt that closed the reasoning
  already (a budget's closing text, --no-think) gets the answer's grammar alone.
- vLLM and SGLang, started with a reasoning parser, apply `response_format` after `</think>`.
Others (Ollama, LM Studio, mlx_lm.server) apply a format from the first token, or not at all:
refused before anything is generated. For a model that does not reason, the servers that take
`response_format` get it.

A choice sent as a JSON Schema comes back as a JSON string (`"yes"`): `Answers` gives the exchange the
choice itself, so the answer that reaches its check is exactly the document.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass

from ponder.backends.server_errors import ServerRefused
from ponder.constraint import Constraint
from ponder.errors import BackendError, UsageError
from ponder.events import Finished, TextDelta
from ponder.reasoning import CLOSE_TAG

AFTER_REASONING = ("vLLM", "SGLang")  # with a reasoning parser, they constrain only what follows </think>
TAKE_FORMAT = ("llama-server", "vLLM", "SGLang", "Ollama")  # response_format json_schema
PARSER_HINT = {"vLLM": "start vLLM with --reasoning-parser deepseek_r1 (or the model's own parser)",
               "SGLang": "start SGLang with --reasoning-parser deepseek-r1 (or the model's own parser)"}
ELSEWHERE = "use llama-server, vLLM or SGLang (with a reasoning parser), or a local model"


@dataclass(frozen=True)
class Constrained:
    """How one request is constrained: the body's fields, and how its answer comes back."""

    fields: dict
    answer_first: bool  # the answer starts with the first generated token
    quoted: bool = False  # a choice sent as a JSON Schema: the answer is its JSON string


def constrained(kind: str, raw: bool, reasoning: bool, closed: bool, constraint: Constraint,
                grammars: AnswerGrammars, prompt: str) -> Constrained:
    """The fields that constrain a request to `kind` (on the raw route, or the chat one) for a model that
    reasons or not, whose prompt may already have `closed` its reasoning; UsageError where this server
    cannot constrain the answer alone. `prompt`: the raw prompt, for llama-server's grammar."""
    free_reasoning = reasoning and not closed
    if kind == "llama-server" and raw:
        return Constrained({"grammar": grammars.grammar(constraint, free_reasoning, prompt)}, not free_reasoning)
    if free_reasoning and kind not in AFTER_REASONING:
        where = "" if raw or kind != "llama-server" else " on its chat endpoint"
        raise UsageError(f"this server ({kind}) cannot constrain a reasoning model's answer{where}: it would "
                         "constrain the reasoning too, or not at all", hint=ELSEWHERE)
    if kind not in TAKE_FORMAT:
        raise UsageError(f"this server ({kind}) cannot constrain an answer: ponder asks for one only of "
                         "llama-server, vLLM, SGLang and Ollama", hint=ELSEWHERE)
    response_format = {"type": "json_schema",
                       "json_schema": {"name": "answer", "schema": constraint.request_schema(), "strict": True}}
    return Constrained({"response_format": response_format}, not free_reasoning, quoted=constraint.schema is None)


# --- llama-server's grammar ---------------------------------------------------------------------


class AnswerGrammars:
    """llama-server's GBNF grammars for constrained answers, the schema's part made by the server itself
    (once a schema: every lane of a model shares them)."""

    def __init__(self, post_json):
        self._post_json = post_json  # (path from the server's root, body) -> the JSON answer
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def grammar(self, constraint: Constraint, free_reasoning: bool, prompt: str) -> str:
        """The whole reply's grammar: free reasoning up to `</think>` if `free_reasoning`, then the answer
        (an optional blank line first, as ponder's own grammar has it)."""
        if constraint.schema is not None:
            answer = self._schema_grammar(constraint.schema, prompt)
        else:
            answer = "root ::= " + " | ".join(_literal(choice) for choice in constraint.choices) + "\n"
        return compose(answer, free_reasoning)

    def _schema_grammar(self, schema: dict, prompt: str) -> str:
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            known = self._known.get(key)
        if known is not None:
            return known
        # n_predict 0: the server only converts the schema (and caches the prompt for the request after).
        body = {"prompt": prompt, "n_predict": 0, "json_schema": schema, "cache_prompt": True}
        try:
            answer = self._post_json("/completion", body)
        except ServerRefused as refused:
            if refused.status == 400:
                raise UsageError(f"the server cannot constrain an answer to this schema: {refused.said}") from None
            raise
        settings = answer.get("generation_settings") if isinstance(answer, dict) else None
        grammar = settings.get("grammar") if isinstance(settings, dict) else None
        if not isinstance(grammar, str) or not re.search(r"(?m)^root\s*::=", grammar):
            raise BackendError("llama-server did not show the grammar it makes of the schema",
                               hint="is --server a llama-server (llama.cpp)?")
        # Its whitespace between tokens goes up to two newlines and 20 blanks each time, which small models
        # fill: one blank at most, as ponder's own grammar writes JSON (compact) on a local model.
        grammar = _SPACE.sub('space ::= | " "', grammar)
        with self._lock:
            self._known[key] = grammar
        return grammar


_RULE = re.compile(r"(?m)^([A-Za-z0-9-]+)\s*::=")
_SPACE = re.compile(r'(?m)^space ::= \| " " \|.*$')  # llama.cpp's whitespace between JSON tokens
# GBNF's pieces: a string literal, a character class, a rule name, anything else.
_PIECES = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z0-9-]+|.', re.S)


def compose(answer: str, free_reasoning: bool) -> str:
    """One grammar from `answer` (a GBNF whose start is `root`): its root renamed, then ours in front."""
    taken = set(_RULE.findall(answer))
    fresh = _fresh_names(taken)
    answer_rule, lead, free, tail = (fresh(name) for name in ("ponder-answer", "ponder-lead", "ponder-free",
                                                              "ponder-tail"))
    renamed = "".join(answer_rule if piece == "root" else piece for piece in _PIECES.findall(answer))
    start = f'{free} {_literal(CLOSE_TAG)} ' if free_reasoning else ""
    rules = [f"root ::= {start}{lead}? {answer_rule}", f'{lead} ::= "\\n" "\\n"?']
    if free_reasoning:
        rules += _free_text(free, tail, CLOSE_TAG)
    return "\n".join(rules) + "\n" + renamed.rstrip("\n") + "\n"


def _free_text(free: str, tail: str, tag: str) -> list[str]:
    """Rules for any text in which `tag` does not occur (its first character occurs in it only there):
    after each of that character, what follows does not go on to spell the rest of the tag."""
    first = _class_char(tag[0])

    def after(i: int) -> str:  # the text after the tag's first i+1 characters matched
        other = f"[^{_class_char(tag[i + 1])}{first}] [^{first}]*"
        if i + 2 == len(tag):
            return f"( | {other} )"
        return f"( | {other} | {_literal(tag[i + 1])} {after(i + 1)} )"

    return [f'{free} ::= [^{first}]* ( {_literal(tag[0])} {tail} )*', f"{tail} ::= {after(0)}"]


def _fresh_names(taken: set[str]):
    def fresh(name: str) -> str:
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}-{n}"
        taken.add(candidate)
        return candidate

    return fresh


def _literal(text: str) -> str:
    """A GBNF string literal matching exactly `text`."""
    return '"' + "".join(_escaped(c, '"\\') for c in text) + '"'


def _class_char(c: str) -> str:
    return _escaped(c, "]\\^-[")


def _escaped(c: str, special: str) -> str:
    if c in special:
        return "\\" + c
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"\\x{ord(c):02x}"
    return c


# --- the answers that come back ---------------------------------------------------------------------


class Answers:
    """The text of each choice of a constrained request on its way to the exchange: a quoted choice given
    as the choice itself; a reply that ended before its answer began, where the server should have let
    the reasoning run first, said to be what it is."""

    def __init__(self, shape: Constrained | None, kind: str):
        self.shape, self.kind = shape, kind  # (None: nothing constrained, nothing changed)
        self._choices: dict[int, _Choice] = {}

    def feed(self, pairs: list) -> list:
        """(choice index, TextDelta or Finished) pairs as they should reach the exchange."""
        if self.shape is None:
            return pairs
        out = []
        for index, event in pairs:
            choice = self._choices.setdefault(index, _Choice(self.shape.answer_first, self.shape.quoted))
            out += [(index, e) for e in (choice.text(event) if isinstance(event, TextDelta) else
                                         choice.end(event, self.kind))]
        return out


class _Choice:
    def __init__(self, answering: bool, quoted: bool):
        self.answering, self.quoted = answering, quoted
        self._tail = ""  # the reasoning's last characters, to see `</think>` across deltas
        self._held: list[TextDelta] = []  # a quoted answer, until it ends

    def text(self, delta: TextDelta) -> list[TextDelta]:
        if delta.part == "reasoning":
            return [delta]
        if self.answering or delta.part == "answer":
            self.answering = True
            return self._answer(delta)
        seen = self._tail + delta.text
        at = seen.find(CLOSE_TAG)
        if at < 0:
            self._tail = seen[-len(CLOSE_TAG):]
            return [delta]
        self.answering = True
        cut = at + len(CLOSE_TAG) - len(self._tail)  # where the tag ends in this delta's text
        rest = delta.text[cut:]
        return [TextDelta(delta.text[:cut], delta.tokens)] + (self._answer(TextDelta(rest, 0)) if rest else [])

    def _answer(self, delta: TextDelta) -> list[TextDelta]:
        if not self.quoted:
            return [delta]
        self._held.append(delta)
        return []

    def end(self, finished: Finished, kind: str) -> list:
        if finished.finish_reason == "stop" and not finished.error and not self.answering:
            return [self._unanswered(finished, kind)]
        held, self._held = self._held, []
        if not held:
            return [finished]
        text = "".join(d.text for d in held)
        tokens = sum(d.tokens for d in held)
        if finished.finish_reason == "stop":
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            text = value if isinstance(value, str) else text
        return [TextDelta(text, tokens, held[0].part), finished]

    @staticmethod
    def _unanswered(finished: Finished, kind: str) -> Finished:
        hint = PARSER_HINT.get(kind)
        return Finished("interrupted", finished.stats, error="the server ended the reply before its answer began"
                        + (f" (does it run a reasoning parser? {hint})" if hint else ""))
