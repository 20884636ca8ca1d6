"""`ponder chat`: the command; the REPL itself is ponder/cli/chat/."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import ModelOptions, OutputOptions, SamplingOptions, ServerOptions, ThinkingOptions, thinking
from ponder.settings import ModelKind, OnLoop, Reasoning


def chat(
    invocation: typer.Context,  # tells where --reasoning came from
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
    resume_last: bool = typer.Option(False, "--continue", "-c", help="Resume the last conversation."),
    resume: Optional[int] = typer.Option(None, "--resume", help="Resume conversation ID (see `ponder history`).",
                                         show_default=False),
    no_log: bool = typer.Option(False, "--no-log", help="Keep this conversation out of the history database."),
    debug: bool = OutputOptions.debug,
) -> None:
    """Chat with the model in an interactive session (type /help inside)."""
    from ponder.cli.chat.repl import ChatRepl
    from ponder.cli.commands.model_run import Run

    run = Run.start(debug, reasoning, show_reasoning, hide_reasoning, invocation=invocation,
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                    **thinking(think_budget, no_think, budget_message, on_loop, invocation))
    run.needs_stdout()
    repl = ChatRepl(run, log=not no_log)
    repl.chat.resume(resume, resume_last)  # before loading: a bad ID fails fast
    repl.chat.use(run.load(model, backend, ctx, threads, server, timeout, model_kind))
    repl.loop()
    if repl.input.interactive:
        return
    if repl.failed:  # piped: a turn that failed (2: a message longer than the context) fails the command
        raise typer.Exit(repl.failed)
    last = repl.last_reply
    if last is not None and not last.answer.strip():
        from ponder.cli.views.show_reply import EXIT_NO_ANSWER

        raise typer.Exit(EXIT_NO_ANSWER)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
