"""`ponder ask`: one question, one streamed answer; made for terminals and pipelines alike."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import ModelOptions, OutputOptions, SamplingOptions, ServerOptions, ThinkingOptions, thinking
from ponder.settings import ModelKind, OnLoop, Reasoning


def ask(
    invocation: typer.Context,  # tells where --reasoning came from
    prompt: Optional[str] = typer.Argument(None, help="The question. Piped stdin is put before it.", show_default=False),
    model: Optional[str] = ModelOptions.model,
    backend: str = ModelOptions.backend,
    ctx: Optional[int] = ModelOptions.ctx,
    threads: Optional[int] = ModelOptions.threads,
    server: Optional[str] = ServerOptions.server,
    timeout: Optional[float] = ServerOptions.timeout,
    model_kind: ModelKind = ServerOptions.model_kind,
    temperature: float = SamplingOptions.temperature,
    top_p: float = SamplingOptions.top_p,
    max_tokens: int = SamplingOptions.max_tokens,
    seed: Optional[int] = SamplingOptions.seed,
    think_budget: Optional[int] = ThinkingOptions.think_budget,
    no_think: bool = ThinkingOptions.no_think,
    budget_message: Optional[str] = ThinkingOptions.budget_message,
    on_loop: OnLoop = ThinkingOptions.on_loop,
    reasoning: Reasoning = OutputOptions.reasoning,
    show_reasoning: bool = OutputOptions.show_reasoning,
    hide_reasoning: bool = OutputOptions.hide_reasoning,
    stats: bool = OutputOptions.stats,
    json: bool = OutputOptions.json,
    jsonl: bool = OutputOptions.jsonl,
    extract: bool = typer.Option(False, "--extract", "-x", help="Print only the code of the answer's first code block."),
    extract_last: bool = typer.Option(False, "--extract-last", help="Print only the code of the answer's last code block."),
    lang: Optional[str] = typer.Option(None, "--lang", help="Print only the first code block in this language.",
                                       show_default=False),
    no_log: bool = typer.Option(False, "--no-log", help="Keep this exchange out of the history database."),
    debug: bool = OutputOptions.debug,
) -> None:
    """Ask one question and stream the answer (reasoning to stderr when piped).

    Exit codes: 0 answered, 1 model or runtime failure, 2 usage error, 3 no answer (the reply ended
    before one, e.g. out of tokens while thinking), 130 interrupted, 129/143 SIGHUP/SIGTERM, 141 stdout
    closed early.
    """
    from ponder.cli.commands.model_run import Run

    run = Run.start(debug, reasoning, show_reasoning, hide_reasoning, json, jsonl, invocation=invocation,
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                    **thinking(think_budget, no_think, budget_message, on_loop, invocation))
    run.needs_stdout()
    code = _code_renderer(run, extract, extract_last, lang)
    text = run.prompt(prompt)
    loaded = run.load(model, backend, ctx, threads, server, timeout, model_kind)
    try:
        reply = run.show(loaded, text, code)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: what arrived is kept in the history too
        if not no_log:
            run.log_stopped(loaded, text)
        raise
    if not no_log:
        run.log(loaded, text, reply)
    run.report(reply, stats, logged=not no_log)
    if reply is not None and not reply.answer.strip():
        from ponder.cli.views.show_reply import EXIT_NO_ANSWER

        raise typer.Exit(EXIT_NO_ANSWER)
    if code is not None and code.error:
        raise code.error
    if code is not None and code.cut_off:
        raise typer.Exit(1)


def _code_renderer(run, extract: bool, extract_last: bool, lang: str | None):
    """With -x, --extract-last or --lang: the view that prints one code block alone."""
    if not (extract or extract_last or lang):
        return None
    from ponder.errors import UsageError

    if extract and extract_last:
        raise UsageError("-x/--extract and --extract-last cannot be used together")
    if run.output != "text":
        raise UsageError("code extraction prints code, not JSON: --json already lists every block under \"code\"")
    from ponder.cli.views.code_output import CodeRenderer

    return CodeRenderer(run.term, run.mode, lang, last=extract_last)


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
