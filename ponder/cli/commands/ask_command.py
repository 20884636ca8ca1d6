"""`ponder ask`: one question, one streamed answer; made for terminals and pipelines alike."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import (DEBUG, AnswerShape, Display, ModelChoice, Output, Sampling, Thinking,
                                        option_groups)


@option_groups
def ask(
    invocation: typer.Context,  # tells where --reasoning came from
    prompt: Optional[str] = typer.Argument(None, help="The question. Piped stdin is put before it.", show_default=False),
    *,
    model: ModelChoice,
    sampling: Sampling,
    thinking: Thinking,
    display: Display,
    output: Output,
    shape: AnswerShape,
    extract: bool = typer.Option(False, "--extract", "-x", help="Print only the code of the answer's first code block."),
    extract_last: bool = typer.Option(False, "--extract-last", help="Print only the code of the answer's last code block."),
    lang: Optional[str] = typer.Option(None, "--lang", help="Print only the first code block in this language.",
                                       show_default=False),
    no_log: bool = typer.Option(False, "--no-log", help="Keep this exchange out of the history database."),
    debug: bool = DEBUG,
) -> None:
    """Ask one question and stream the answer (reasoning to stderr when piped).

    Exit codes: 0 answered, 1 model or runtime failure, 2 usage error, 3 no answer (the reply ended
    before one, e.g. out of tokens while thinking), 130 interrupted, 129/143 SIGHUP/SIGTERM, 141 stdout
    closed early.
    """
    from ponder.cli.commands.model_run import Run

    run = Run.start(invocation, sampling, thinking, display, output, debug)
    run.needs_stdout()
    code = _code_renderer(run, extract, extract_last, lang)
    renderer = _constrained(run, shape, code)
    text = run.prompt(prompt)
    loaded = run.load(model)
    try:
        reply = run.show(loaded, text, renderer)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP: what arrived is kept in the history too
        if not no_log:
            run.log_stopped(loaded, text)
        if run.output != "text":  # a script reading --json or --jsonl gets a last object too, marked interrupted
            _write_stopped(run, loaded)
        raise
    if not no_log:
        run.log(loaded, text, reply)
    run.report(reply, output.stats, logged=not no_log)
    if reply is not None and not reply.answer.strip():
        from ponder.cli.views.show_reply import EXIT_NO_ANSWER

        raise typer.Exit(EXIT_NO_ANSWER)
    if renderer is not None and renderer.error:
        raise renderer.error
    if code is not None and code.cut_off:
        raise typer.Exit(1)
    if run.params.constraint is not None and run.output != "text":
        from ponder.cli.views.parsed_output import incomplete

        error = incomplete(reply)
        if error is not None:
            raise error


def _write_stopped(run, loaded) -> None:
    from ponder.cli.views.json_output import dumps, stopped_reply_json, write_json_line

    payload = stopped_reply_json(run.arrived.reasoning, run.arrived.answer, loaded.info)
    try:
        if run.output == "json":
            run.term.stdout.write(dumps(payload, indent=2) + "\n")
            run.term.stdout.flush()
        else:
            write_json_line(run.term.stdout, {"type": "done", **payload})
    except (OSError, ValueError):  # a closed terminal or pipe: the interrupt is still what ended the run
        pass


def _constrained(run, shape: AnswerShape, code):
    """With --schema or --choice: the constraint set in the run's params, and the view that prints the
    document alone (text output); the code view otherwise."""
    if code is not None and (shape.schema is not None or shape.choice):
        from ponder.errors import UsageError

        given = "--schema" if shape.schema is not None else "--choice"
        raise UsageError(f"{given} makes the answer a document: code extraction (-x, --extract-last, --lang)"
                         " cannot be used with it")
    constraint = shape.constraint()
    if constraint is None:
        return code
    from dataclasses import replace

    run.params = replace(run.params, constraint=constraint)
    if run.output != "text":
        return None
    from ponder.cli.views.parsed_output import ParsedRenderer

    return ParsedRenderer(run.term, run.mode)


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
