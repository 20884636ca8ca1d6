"""Options shared by the commands that run a model, declared once."""

from __future__ import annotations

import typer

from ponder import defaults
from ponder.errors import UsageError
from ponder.settings import Reasoning, check


def _checked(name: str):
    """A callback that checks an option by the rule every setting follows (settings.RULES)."""

    def callback(value):
        if value is None:
            return value
        try:
            return check(name, value)
        except UsageError as exc:
            raise typer.BadParameter(exc.message) from None

    return callback


class ModelOptions:
    model = typer.Option(
        None, "--model", "-m", envvar=defaults.MODEL_ENV, show_default=False,
        help="A .gguf file (llama.cpp), an MLX model directory or hub repo id (mlx).",
    )
    backend = typer.Option(
        "auto", "--backend", envvar=defaults.BACKEND_ENV,
        help="Inference backend: auto (what the model implies; MLX on Apple Silicon, else llama.cpp), mlx or llama.cpp.",
    )
    ctx = typer.Option(
        None, "--ctx", help=f"Context size in tokens [default: {defaults.DEFAULT_CONTEXT}, capped by the model].",
        callback=_checked("ctx"), show_default=False,
    )
    threads = typer.Option(  # at most llama.cpp's GGML_MAX_N_THREADS: more crashes it (a segfault, not an error)
        None, "--threads", "-t", help="CPU threads [default: physical cores].", callback=_checked("threads"),
        min=1, max=512, show_default=False,
    )


class ServerOptions:
    server = typer.Option(
        None, "--server", envvar=defaults.SERVER_ENV, show_default=False, callback=_checked("server"),
        help="Use a model on an OpenAI-compatible server (vLLM, SGLang, llama-server, Ollama, LM Studio…): its API's"
             " base URL, e.g. http://127.0.0.1:8000/v1. --model then names one of its models. API key:"
             " PONDER_API_KEY or OPENAI_API_KEY.",
    )
    timeout = typer.Option(None, "--timeout", callback=_checked("timeout"), show_default=False,
                           help="Seconds a server may send nothing before ponder gives up [default: 300].")
    model_kind = typer.Option(
        "auto", "--model-kind", callback=_checked("model_kind"),
        help="Whether the model reasons in <think> tags: auto (from its chat template, or a server model's name),"
             " reasoning or plain.",
    )


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


class ThinkingOptions:
    think_budget = typer.Option(
        None, "--think-budget", callback=_checked("think_budget"), show_default=False,
        help="Reasoning tokens before ponder ends the reasoning (a closing message fed to the model) and lets it"
             " answer; 0: no thinking [default: none].",
    )
    no_think = typer.Option(False, "--no-think", help="Answer without thinking: short for --think-budget 0.")
    budget_message = typer.Option(
        None, "--budget-message", callback=_checked("budget_message"), show_default=False,
        help="The text that ends the reasoning at the budget; it must contain </think> [default: Qwen's message].",
    )
    on_loop = typer.Option(
        "answer", "--on-loop", callback=_checked("on_loop"),
        help="When the reasoning repeats itself: answer (end it as a budget would), stop, or continue.",
    )


def thinking(think_budget: int | None, no_think: bool, budget_message: str | None, on_loop: str,
             invocation: typer.Context | None = None) -> dict:
    """The generation settings the thinking options give. --no-think wins over a budget from the
    config file; one typed beside it is a contradiction."""
    source = invocation.get_parameter_source("think_budget") if invocation else None
    typed = source is None or source.name == "COMMANDLINE"
    if no_think and typed and think_budget not in (None, 0):
        raise UsageError(f"--no-think contradicts --think-budget {think_budget}")
    return {"think_budget": 0 if no_think else think_budget, "budget_message": budget_message, "on_loop": on_loop}


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


class SamplingOptions:
    temperature = typer.Option(defaults.DEFAULT_TEMPERATURE, "--temperature", help="Sampling temperature (0: greedy).",
                               callback=_checked("temperature"))
    top_p = typer.Option(defaults.DEFAULT_TOP_P, "--top-p", help="Nucleus sampling threshold.", callback=_checked("top_p"))
    max_tokens = typer.Option(defaults.DEFAULT_MAX_TOKENS, "--max-tokens", help="Most tokens to generate, reasoning included.",
                              callback=_checked("max_tokens"))
    seed = typer.Option(None, "--seed", help="Random seed, for repeatable samples.", show_default=False,
                        callback=_checked("seed"))


class OutputOptions:
    reasoning = typer.Option(
        "collapse", "--reasoning",
        help="How reasoning is shown: kept on screen, collapsed to a summary line, or not at all"
             " (in a pipe: show and collapse send it to stderr).",
    )
    show_reasoning = typer.Option(False, "--show-reasoning", help="Short for --reasoning show.")
    hide_reasoning = typer.Option(False, "--hide-reasoning", help="Short for --reasoning hide.")
    stats = typer.Option(False, "--stats", help="Print token counts and speed to stderr.")
    json = typer.Option(False, "--json", help="Print one JSON object: reasoning, answer, boxed, stats (solve -n:"
                                              " model, backend, every sample and the vote).")
    jsonl = typer.Option(False, "--jsonl", help="Stream JSON lines: reasoning and answer deltas, then done (solve -n:"
                                                " a line per sample as it ends, then the vote).")
    debug = typer.Option(False, "--debug", envvar=defaults.DEBUG_ENV, help="Show tracebacks and llama.cpp's log.")


def reasoning_mode(reasoning: Reasoning, show: bool, hide: bool,
                   invocation: typer.Context | None = None) -> Reasoning:
    """--reasoning, or a shortcut for it. A shortcut beats a --reasoning that came from the config
    file; contradicting one given beside it on the command line (`invocation` tells) is a usage error."""
    if show and hide:
        raise UsageError("--show-reasoning and --hide-reasoning cannot be used together")
    shortcut = "show" if show else "hide" if hide else None
    if shortcut is None or shortcut == reasoning:
        return reasoning
    source = invocation.get_parameter_source("reasoning") if invocation else None
    if source is not None and source.name == "COMMANDLINE":
        raise UsageError(f"--{shortcut}-reasoning contradicts --reasoning {reasoning}")
    return shortcut


def output_format(json: bool, jsonl: bool):
    if json and jsonl:
        raise UsageError("--json and --jsonl cannot be used together")
    return "json" if json else "jsonl" if jsonl else "text"
