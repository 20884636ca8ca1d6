"""`ponder solve`: a math problem, reasoned step by step, its final `\\boxed{}` answer pulled out."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import (DEBUG, Display, ModelChoice, Output, ParallelOptions, Sampling, Thinking,
                                        option_groups)

EXIT_NO_ANSWER = 1
MAX_SAMPLES = 1024  # far beyond what a vote needs (DeepSeek's evaluations draw 64); each is planned up front


@option_groups
def solve(
    invocation: typer.Context,  # tells where --reasoning came from
    problem: Optional[str] = typer.Argument(None, help="The problem. Piped stdin is put before it.", show_default=False),
    *,
    answer_only: bool = typer.Option(False, "--answer-only", help="Print only the final \\boxed{} answer; exit 1 if none."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, max=MAX_SAMPLES,
                                help="Independent samples; the answer is their majority vote."),
    parallel: Optional[int] = ParallelOptions.parallel,
    early_stop: bool = ParallelOptions.early_stop,
    confidence: Optional[float] = ParallelOptions.confidence,
    model: ModelChoice,
    sampling: Sampling,
    thinking: Thinking,
    display: Display,
    output: Output,
    debug: bool = DEBUG,
) -> None:
    """Solve a math problem with DeepSeek's instruction; show the final answer prominently.

    Exit codes: 0 answered, 1 no \\boxed{} answer (any -n, any output) or a model failure,
    2 usage error, 130 interrupted, 129/143 SIGHUP/SIGTERM, 141 stdout closed early.
    """
    from ponder.cli.commands.model_run import Run
    from ponder.cli.commands.options import early_stop_rule
    from ponder.errors import PonderError
    from ponder.reasoning import extract_boxed
    from ponder.solve import math_prompt

    run = Run.start(invocation, sampling, thinking, display, output, debug)
    run.needs_stdout()
    settle = early_stop_rule(early_stop, confidence)
    text = math_prompt(run.prompt(problem))
    at_once = min(parallel or samples, samples)  # every sample at once, unless memory or --parallel says fewer
    loaded = run.load(model, sequences=at_once, sequences_given=parallel is not None)
    if samples == 1 and not answer_only:
        reply = run.show(loaded, text)
        run.report(reply, output.stats)
        boxed = extract_boxed(reply.answer) if reply is not None else None
        if run.output == "text" and boxed is not None:
            _show_final_answer(run, boxed)
        if boxed is None:
            if reply is not None and reply.answer.strip():  # (without an answer at all, report said why)
                print("ponder: no answer: the reply has no \\boxed{} final answer", file=run.term.stderr)
            raise typer.Exit(EXIT_NO_ANSWER)
        return

    from ponder.cli.views.safe_text import visible
    from ponder.cli.views.show_reply import exit_on_closed_stdout

    with exit_on_closed_stdout(run.term):
        vote = _vote(run, loaded, text, samples, output.stats, parallel, settle, answer_only)
        if answer_only and run.output == "text" and vote.winner is not None:
            print(visible(vote.winner) if run.term.stdout_is_tty else vote.winner, file=run.term.stdout)
        elif run.output == "text" and vote.winner is not None:
            _show_vote(run, vote, samples)
        run.term.stdout.flush()  # (a reader gone already is found here, not at exit)
    if vote.winner is None:  # whatever the output: the exit status says there is no final answer
        if answer_only:
            raise PonderError("the model gave no \\boxed{} answer",
                              hint="run without --answer-only to see the whole reply" if run.output == "text" else None)
        print("ponder: no answer: no sample gave a \\boxed{} answer", file=run.term.stderr)
        raise typer.Exit(EXIT_NO_ANSWER)


def _vote(run, loaded, text: str, samples: int, stats: bool, parallel: int | None, settle, answer_only: bool):
    """Draw the samples (decoded together where the model allows, sharing the prompt) and vote."""
    from ponder.cli.views.json_output import dumps, reply_json, write_json_line
    from ponder.cli.views.sample_board import SampleBoard
    from ponder.reasoning import extract_boxed
    from ponder.solve import early_stop_savings, majority_vote

    skipped: dict[int, int] = {}  # sample -> tokens it had generated when the early stop ended it
    done: dict[int, object] = {}  # sample -> its reply, as each finishes: what Ctrl-C must not throw away

    def drawn(index: int, reply) -> None:
        done[index] = reply
        if run.output == "jsonl":
            write_json_line(run.term.stdout, {"type": "sample", "index": index, **reply_json(reply, loaded.info)})

    def event(index: int, event) -> None:
        from ponder.parallel import Skipped

        if isinstance(event, Skipped):
            skipped[index] = event.tokens
        board.event(index, event)

    try:
        with SampleBoard(run.term, samples, lines=samples > 1 and run.output == "text") as board:
            replies = run.samples(loaded, text, samples, drawn, concurrency=parallel, on_event=event, settle=settle)
    except KeyboardInterrupt:  # (SIGTERM and SIGHUP arrive as one too) the exit status stays the signal's
        try:
            _show_interrupted(run, loaded, [done.get(i) for i in range(samples)], set(skipped), answer_only)
        except (OSError, ValueError):  # a closed terminal or pipe: the interrupt is still what ended the run
            pass
        raise
    finished = [reply for reply in replies if reply is not None]
    for index, reply in enumerate(replies):  # after the board: lines written under a live view would break it
        _report_sample(run, reply, stats, f"sample {index + 1}/{samples}: " if samples > 1 else "")
    vote = majority_vote([extract_boxed(reply.answer) for reply in finished])
    summary = {"winner": vote.winner, "counts": [[a, n] for a, n in vote.counts], "missing": vote.missing}
    if settle is not None:
        saved = early_stop_savings(finished, list(skipped.values()))
        summary["early_stop"] = {"samples_ended": len(skipped), "tokens_spent_on_ended": sum(skipped.values()),
                                 "tokens_saved_estimate": saved}
        if run.output == "text" and skipped:
            print(f"ponder: early stop: {len(skipped)} of {samples} samples ended once the vote was settled, "
                  f"about {saved:,} tokens saved", file=run.term.stderr)
    if run.output == "json":
        payload = {"model": loaded.info.name, "backend": loaded.info.backend,
                   "samples": [reply_json(r, loaded.info) if r is not None else {"ended_early": True} for r in replies],
                   "vote": summary}
        run.term.stdout.write(dumps(payload, indent=2) + "\n")
    elif run.output == "jsonl":
        write_json_line(run.term.stdout, {"type": "vote", **summary})
    return vote


def _show_interrupted(run, loaded, replies: list, ended: set[int], answer_only: bool) -> None:
    """What the samples that finished before the interrupt gave, marked as partial: their vote on stdout
    (text; one JSON document with "interrupted": true for --json, a last line for --jsonl), or a note on
    stderr where stdout is for the final answer alone (--answer-only)."""
    from ponder.cli.views.json_output import dumps, reply_json, write_json_line
    from ponder.cli.views.safe_text import visible
    from ponder.reasoning import extract_boxed
    from ponder.solve import majority_vote

    finished = [reply for reply in replies if reply is not None]
    vote = majority_vote([extract_boxed(reply.answer) for reply in finished])
    heading = f"interrupted after {len(finished)} of {len(replies)} samples"
    summary = {"winner": vote.winner, "counts": [[a, n] for a, n in vote.counts], "missing": vote.missing}
    if run.output == "json":
        payload = {"model": loaded.info.name, "backend": loaded.info.backend, "interrupted": True,
                   "samples": [reply_json(r, loaded.info) if r is not None
                               else {"ended_early": True} if i in ended else {"interrupted": True}
                               for i, r in enumerate(replies)],
                   "vote": summary}
        run.term.stdout.write(dumps(payload, indent=2) + "\n")
    elif run.output == "jsonl":
        write_json_line(run.term.stdout, {"type": "vote", "interrupted": True, **summary})
    elif finished:  # (none finished: the interrupt's own line says all there is)
        split = ", ".join(f"{visible(answer)} ×{count}" for answer, count in vote.counts)
        if vote.missing:
            split += (", " if split else "") + f"no answer ×{vote.missing}"
        out = run.term.stderr if answer_only else run.term.stdout  # (--answer-only's stdout: a final answer or nothing)
        if vote.winner is not None and not answer_only:
            print(f"Partial answer: {visible(vote.winner)}", file=out)
        print(f"{'ponder: ' if answer_only else ''}Votes ({heading}): {split}", file=out)
    run.term.stdout.flush()


def _report_sample(run, reply, stats: bool, label: str) -> None:
    """A sample's closing lines (warnings, --stats), each labelled with the sample it is about."""
    import io

    from ponder.cli.views.show_reply import report

    lines = io.StringIO()
    report(reply, stats, lines)
    for line in lines.getvalue().splitlines():
        print(label + line, file=run.term.stderr)


def _show_final_answer(run, boxed: str) -> None:
    if run.term.stdout_is_tty:
        _answer_panel(run, boxed, subtitle=None)
    else:
        print(f"Answer: {boxed}", file=run.term.stdout)


def _show_vote(run, vote, samples: int) -> None:
    split = ", ".join(f"{answer} ×{count}" for answer, count in vote.counts)
    if vote.missing:
        split += f", no answer ×{vote.missing}"
    done = sum(count for _, count in vote.counts) + vote.missing
    heading = f"Votes ({samples} samples)" if done == samples else f"Votes ({done} of {samples} samples, the rest ended early)"
    if run.term.stdout_is_tty:
        _answer_panel(run, vote.winner, subtitle=f"{heading}: {split}")
    else:
        print(f"Answer: {vote.winner}", file=run.term.stdout)
        print(f"{heading}: {split}", file=run.term.stdout)


def _answer_panel(run, answer: str, subtitle: str | None) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from ponder.cli.views.safe_text import visible
    from ponder.latex import latex_to_unicode

    console = Console(file=run.term.stdout, no_color=not run.term.color, highlight=False)
    console.print(Panel(Text(visible(latex_to_unicode(answer)), style="bold green"), title="Answer", expand=False))
    if subtitle:  # (the vote's answers: the model's text too)
        console.print(Text(visible(subtitle), style="dim"))


def register(app: typer.Typer) -> None:
    app.command("solve")(solve)
