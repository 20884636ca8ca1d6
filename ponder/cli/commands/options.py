"""Options shared by the commands that run a model, declared once.

A group (ModelChoice, Sampling, Thinking, Display, Output, AnswerShape) is a frozen dataclass whose fields are typer
options; a command decorated with @option_groups takes the whole group as one parameter, so an option
added to a group reaches every command that takes it."""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Optional

import typer

from ponder import defaults
from ponder.errors import UsageError
from ponder.events import Speculate
from ponder.settings import ModelKind, OnLoop, Reasoning, check


def _checked(name: str):
    """A callback that checks an option by the rule every setting follows (settings.RULES), and that text meant
    for a model or a server is UTF-8 text (a path, --draft's, may hold any bytes)."""

    def callback(value):
        if value is None:
            return value
        from ponder.cli.commands.user_input import utf8_only

        try:
            if isinstance(value, str) and name != "draft":
                utf8_only("the value", value)
            return check(name, value)
        except UsageError as exc:
            raise typer.BadParameter(exc.message) from None

    return callback


def option(*args, **kwargs):
    """A group's field: the typer option that fills it (same arguments as typer.Option)."""
    return field(metadata={"option": typer.Option(*args, **kwargs)})


def _is_group(annotation) -> bool:
    return isinstance(annotation, type) and is_dataclass(annotation) and all("option" in f.metadata for f in fields(annotation))


def option_groups(command):
    """Let `command` take option groups. Typer sees each parameter annotated with a group as the group's
    options, in its place (so --help keeps the command's order); the command is called with one instance
    of the group. An option the command declares itself replaces the group's option of that name (batch's
    --think-budget takes a list) and fills that field too. Option names stay the parameter names: the config
    file's defaults (default_map) and get_parameter_source(name) see no difference."""
    hints = typing.get_type_hints(command)
    groups = {name: hints[name] for name in inspect.signature(command).parameters if _is_group(hints.get(name))}
    own = [p for p in inspect.signature(command).parameters.values() if p.name not in groups]
    declared = {p.name for p in own}
    shown = []
    for parameter in inspect.signature(command).parameters.values():
        group = groups.get(parameter.name)
        if group is None:
            annotation = hints.get(parameter.name, parameter.annotation)
            shown.append(parameter.replace(annotation=annotation, default=_parsed(parameter.default, annotation)))
            continue
        types = typing.get_type_hints(group)
        shown += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                    default=_parsed(f.metadata["option"], types[f.name]), annotation=types[f.name])
                  for f in fields(group) if f.name not in declared]
    names = [p.name for p in shown]
    if len(names) != len(set(names)):
        raise TypeError(f"{command.__name__}: two options of the same name in {names}")

    @functools.wraps(command)
    def grouped(**values):
        for name, group in groups.items():  # (a field may share its group's name: `model` in ModelChoice)
            values[name] = group(**{f.name: values[f.name] if f.name in declared else values.pop(f.name)
                                    for f in fields(group)})
        return command(**values)

    # Keyword-only throughout: typer calls with keywords, and its order is the signature's.
    shown = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in shown]
    grouped.__signature__ = inspect.Signature(shown)
    grouped.__annotations__ = {p.name: p.annotation for p in shown}
    del grouped.__wrapped__  # typer must read the signature above, not the command's own
    grouped.option_groups = tuple(groups.values())
    return grouped


def _parsed(declared, annotation):
    """An option whose values are a Literal's (--speculate, --reasoning, --on-full…), parsed by ponder: any case
    is taken ("AUTO" is auto), and a wrong value is one plain line (typer's own check says "Value error, ...")."""
    if typing.get_origin(annotation) is not typing.Literal or not isinstance(declared, typer.models.OptionInfo):
        return declared
    values = typing.get_args(annotation)

    def parse(value):
        for choice in values:
            if str(value).casefold() == choice.casefold():
                return choice
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(map(repr, values))}.")

    import copy

    parsed = copy.copy(declared)  # (a declaration may be shared)
    parsed.parser = parse
    return parsed


SERVER = typer.Option(
    None, "--server", envvar=defaults.SERVER_ENV, show_default=False, callback=_checked("server"),
    help="Use a model on an OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama, LM Studio…): its API's"
         " base URL, e.g. http://127.0.0.1:8000/v1. --model then names one of its models. API key:"
         " PONDER_API_KEY or OPENAI_API_KEY.",
)


class ServerOptions:  # for the commands that take --server alone (backends, doctor)
    server = SERVER


@dataclass(frozen=True)
class ModelChoice:
    """Which model, on which backend or server, loaded how."""

    model: Optional[str] = option(
        None, "--model", "-m", envvar=defaults.MODEL_ENV, show_default=False,
        help="A .gguf file (llama.cpp), an MLX model directory or hub repo id (mlx).",
    )
    backend: str = option(
        "auto", "--backend", envvar=defaults.BACKEND_ENV,
        help="Inference backend: auto (what the model implies; MLX on Apple Silicon, else llama.cpp), mlx or llama.cpp.",
    )
    ctx: Optional[int] = option(
        None, "--ctx", help=f"Context size in tokens [default: {defaults.DEFAULT_CONTEXT}, capped by the model].",
        callback=_checked("ctx"), show_default=False,
    )
    threads: Optional[int] = option(  # at most llama.cpp's GGML_MAX_N_THREADS: more crashes it (a segfault, not an error)
        None, "--threads", "-t", help="CPU threads [default: physical cores].", callback=_checked("threads"),
        min=1, max=512, show_default=False,
    )
    server: Optional[str] = field(metadata={"option": SERVER})
    timeout: Optional[float] = option(None, "--timeout", callback=_checked("timeout"), show_default=False,
                                       help="Seconds a server may send nothing before ponder gives up [default: 300].")
    model_kind: ModelKind = option(
        "auto", "--model-kind", callback=_checked("model_kind"),
        help="Whether the model reasons in <think> tags: auto (from its chat template, or a server model's name),"
             " reasoning or plain.",
    )
    # (These two have defaults in code too: a ModelChoice made without them has the prompt cache as configured.)
    no_prompt_cache: bool = field(default=False, metadata={"option": typer.Option(
        False, "--no-prompt-cache",
        help="Neither load nor save prompt states in the prompt cache on disk (`ponder cache` shows and clears it).",
    )})
    # The config file's prompt_cache_gib, a default as every setting's: a hidden option; `ponder config` sets it.
    prompt_cache_gib: Optional[float] = field(default=None, metadata={"option": typer.Option(
        None, "--prompt-cache-gib", hidden=True, show_default=False, callback=_checked("prompt_cache_gib"))})
    # The draft model of speculative decoding (LoadOptions.draft), named as --model names a model.
    draft: Optional[str] = field(default=None, metadata={"option": typer.Option(
        None, "--draft", show_default=False, callback=_checked("draft"), metavar="MODEL",
        help="A smaller model with the model's vocabulary whose guesses the model checks (--speculate draft):"
             " a .gguf file, an MLX model, or a name as for --model (ponder pull r1-7b --with-draft fetches"
             " r1-7b's).",
    )})

    def prompt_cache_bytes(self) -> int | None:
        """The prompt cache's size cap (LoadOptions.prompt_cache_bytes); None: no prompt cache."""
        from ponder.prompt_cache import DEFAULT_LIMIT_GIB

        gib = DEFAULT_LIMIT_GIB if self.prompt_cache_gib is None else self.prompt_cache_gib
        return None if self.no_prompt_cache or gib == 0 else int(gib * 2**30)


def configured_server(given: str | None) -> str | None:
    """The server `ponder backends` and `doctor` describe: --server, PONDER_SERVER, else the config file's."""
    if given:
        return given
    from ponder.settings import read

    try:
        return read().settings.get("server")
    except UsageError:
        return None  # an unreadable config file is `ponder config`'s to report


def server_lines(url: str) -> tuple[dict, list[str]]:
    """A configured server, as a JSON row and as lines of text: reachable or not, what it is, its models."""
    from ponder.backends.server import describe
    from ponder.backends.server_http import shown_url

    facts, why = describe(url)
    if facts is None:
        return ({"name": "server", "url": shown_url(url), "usable": False, "reason": why},
                [f"server {shown_url(url)}: not reachable · {why}"])
    kind = facts.kind + (f" ({facts.version})" if facts.version else "")
    row = {"name": "server", "url": facts.url, "usable": True, "kind": facts.kind, "version": facts.version,
           "models": facts.models, "contexts": facts.contexts}
    return row, [f"server {facts.url}: reachable · {kind} · models: {facts.listed()}"]


@dataclass(frozen=True)
class Thinking:
    """How long the model may reason, and what ends its reasoning."""

    think_budget: Optional[int] = option(
        None, "--think-budget", callback=_checked("think_budget"), show_default=False,
        help="Reasoning tokens before ponder ends the reasoning (a closing message fed to the model) and lets it"
             " answer; 0: no thinking [default: none].",
    )
    no_think: bool = option(False, "--no-think", help="Answer without thinking: short for --think-budget 0.")
    budget_message: Optional[str] = option(
        None, "--budget-message", callback=_checked("budget_message"), show_default=False,
        help="The text that ends the reasoning at the budget; it must contain </think> [default: Qwen's message].",
    )
    on_loop: OnLoop = option(
        "answer", "--on-loop", callback=_checked("on_loop"),
        help="When the reasoning repeats itself: answer (end it as a budget would), stop, or continue.",
    )

    def settings(self, invocation: typer.Context | None = None) -> dict:
        """The generation settings these options give. --no-think wins over a budget from the config
        file; one typed beside it is a contradiction (`invocation` tells where the budget came from)."""
        source = invocation.get_parameter_source("think_budget") if invocation else None
        typed = source is None or source.name == "COMMANDLINE"
        if self.no_think and typed and self.think_budget not in (None, 0):
            raise UsageError(f"--no-think contradicts --think-budget {self.think_budget}")
        return {"think_budget": 0 if self.no_think else self.think_budget, "budget_message": self.budget_message,
                "on_loop": self.on_loop}


MAX_PARALLEL = 256  # llama.cpp's LLAMA_MAX_SEQ


class ParallelOptions:
    parallel = typer.Option(
        None, "--parallel", "-P", min=1, max=MAX_PARALLEL, show_default=False,
        help="Samples at once: decoded together on a local model (each step reads the weights once for all),"
             " requests in flight to a server [default: every sample, as many as fit in memory; to a server, one"
             " request for all where it takes n, else 8 in flight].",
    )
    early_stop = typer.Option(False, "--early-stop",
                              help="End the remaining samples once the leading answer can no longer be overtaken.")
    confidence = typer.Option(
        None, "--confidence", min=0.51, max=0.999, show_default=False,
        help="With --early-stop: also end them once the leader is this likely to be the majority answer"
             " (Adaptive-Consistency's Beta rule; 0.95 is its usual setting).",
    )


def early_stop_rule(early_stop: bool, confidence: float | None):
    """The `settle` rule (ponder.parallel) that --early-stop and --confidence ask for, or None."""
    if confidence is not None and not early_stop:
        raise UsageError("--confidence is a rule for --early-stop: give both")
    if not early_stop:
        return None
    from ponder.reasoning import extract_boxed
    from ponder.solve import vote_settled

    return lambda replies, remaining: vote_settled([extract_boxed(r.answer) for r in replies], remaining, confidence)


@dataclass(frozen=True)
class Sampling:
    """How tokens are drawn: the GenerationParams of the same names."""

    temperature: float = option(defaults.DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature (0: greedy).",
                                 callback=_checked("temperature"))
    top_p: float = option(defaults.DEFAULT_TOP_P, "--top-p", help="Nucleus sampling threshold.",
                           callback=_checked("top_p"))
    max_tokens: int = option(defaults.DEFAULT_MAX_TOKENS, "--max-tokens",
                              help="Most tokens to generate, reasoning included.", callback=_checked("max_tokens"))
    seed: Optional[int] = option(None, "--seed", help="Random seed, for repeatable samples.", show_default=False,
                                  callback=_checked("seed"))
    speculate: Speculate = option(
        "auto", "--speculate", callback=_checked("speculate"),
        help="Speculative decoding, the same text sooner: auto (guesses from the text so far, while they pay),"
             " ngram (always), draft (a draft model's: --draft, or the catalogue's pair), off. Parallel samples"
             " and servers run without it.",
    )


@dataclass(frozen=True)
class Display:
    """How the reasoning is shown."""

    reasoning: Reasoning = option(
        "collapse", "--reasoning",
        help="How reasoning is shown: kept on screen, collapsed to a summary line, or not at all"
             " (in a pipe: show and collapse send it to stderr).",
    )
    show_reasoning: bool = option(False, "--show-reasoning", help="Short for --reasoning show.")
    hide_reasoning: bool = option(False, "--hide-reasoning", help="Short for --reasoning hide.")

    def mode(self, invocation: typer.Context | None = None) -> Reasoning:
        """--reasoning, or a shortcut for it. A shortcut beats a --reasoning that came from the config
        file; contradicting one given beside it on the command line (`invocation` tells) is a usage error."""
        if self.show_reasoning and self.hide_reasoning:
            raise UsageError("--show-reasoning and --hide-reasoning cannot be used together")
        shortcut = "show" if self.show_reasoning else "hide" if self.hide_reasoning else None
        if shortcut is None or shortcut == self.reasoning:
            return self.reasoning
        source = invocation.get_parameter_source("reasoning") if invocation else None
        if source is not None and source.name == "COMMANDLINE":
            raise UsageError(f"--{shortcut}-reasoning contradicts --reasoning {self.reasoning}")
        return shortcut


@dataclass(frozen=True)
class Output:
    """What a one-shot command prints besides the reply: stats, or JSON instead of text."""

    stats: bool = option(False, "--stats", help="Print token counts and speed to stderr.")
    json: bool = option(False, "--json", help="Print one JSON object: reasoning, answer, boxed, stats (solve -n:"
                                               " model, backend, every sample and the vote).")
    jsonl: bool = option(False, "--jsonl", help="Stream JSON lines: reasoning and answer deltas, then done (solve -n:"
                                                 " a line per sample as it ends, then the vote).")

    def format(self):
        if self.json and self.jsonl:
            raise UsageError("--json and --jsonl cannot be used together")
        return "json" if self.json else "jsonl" if self.jsonl else "text"


@dataclass(frozen=True)
class AnswerShape:
    """What the answer must be: JSON that a schema allows, or one of some strings (ponder.constraint)."""

    schema: Optional[str] = option(
        None, "--schema", show_default=False, metavar="SCHEMA",
        help="Constrain the answer (not the reasoning) to JSON that validates against this JSON Schema: inline"
             " JSON, a .json file, or fields like 'name, age int, tags list'.",
    )
    choice: Optional[list[str]] = option(
        None, "--choice", show_default=False, metavar="A,B,…",
        help="Constrain the answer to exactly one of these strings: --choice yes,no or --choice yes --choice no.",
    )

    def constraint(self):
        """The constraint asked for, checked (a usage error before any model loads), or None."""
        import os

        from ponder.cli.commands.user_input import utf8_only
        from ponder.constraint import from_options

        for choice in self.choice or ():
            utf8_only("--choice", choice)
        if self.schema and not os.path.exists(self.schema):  # (a file's name may hold any bytes)
            utf8_only("--schema", self.schema)
        return from_options(self.schema, self.choice)


DEBUG = typer.Option(False, "--debug", envvar=defaults.DEBUG_ENV, help="Show tracebacks and llama.cpp's log.")
