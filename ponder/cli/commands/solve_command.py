"""`ponder solve`: a math problem, reasoned step by step, its final `\\boxed{}` answer pulled out."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import ModelOptions, OutputOptions, SamplingOptions, ServerOptions, ThinkingOptions, thinking
from ponder.settings import ModelKind, OnLoop, Reasoning

EXIT_NO_ANSWER = 1


def solve(
    invocation: typer.Context,  # tells where --reasoning came from
    problem: Optional[str] = typer.Argument(None, help="The problem. Piped stdin is put before it.", show_default=False),
    answer_only: bool = typer.Option(False, "--answer-only", help="Print only the final \\boxed{} answer; exit 1 if none."),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Independent samples; the answer is their majority vote."),
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
    debug: bool = OutputOptions.debug,
) -> None:
    """Solve a math problem with DeepSeek's instruction; show the final answer prominently.

    Exit codes: 0 answered, 1 no \\boxed{} answer (with --answer-only) or a model failure,
    2 usage error, 130 interrupted, 141 stdout closed early.
    """
    from ponder.cli.commands.model_run import Run
    from ponder.errors import PonderError
    from ponder.solve import math_prompt

    run = Run.start(debug, reasoning, show_reasoning, hide_reasoning, json, jsonl, invocation=invocation,
                    temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                    **thinking(think_budget, no_think, budget_message, on_loop, invocation))
    text = math_prompt(run.prompt(problem))
    loaded = run.load(model, backend, ctx, threads, server, timeout, model_kind)
    if samples == 1 and not answer_only:
        reply = run.show(loaded, text)
        run.report(reply, stats)
        if reply is not None and run.output == "text":
            _show_final_answer(run, reply.answer)
        return

    vote = _vote(run, loaded, text, samples, stats)
    if answer_only and run.output == "text":
        if vote.winner is None:
            raise PonderError("the model gave no \\boxed{} answer", hint="run without --answer-only to see the whole reply")
        print(vote.winner, file=run.term.stdout)
        return
    if run.output == "text":
        _show_vote(run, vote, samples)


def _vote(run, loaded, text: str, samples: int, stats: bool):
    """Draw the samples (sharing the loaded model and the prompt's cache) and vote."""
    from ponder.cli.views.json_output import reply_json, write_json_line
    from ponder.cli.views.terminal import Working
    from ponder.reasoning import extract_boxed
    from ponder.solve import majority_vote

    def drawn(index: int, reply) -> None:
        answer = extract_boxed(reply.answer)
        run.report(reply, stats)
        done.append(index)
        if run.output == "jsonl":
            write_json_line(run.term.stdout, {"type": "sample", "index": index, **reply_json(reply, loaded.info)})
        elif samples > 1 and run.output == "text":
            working.say(f"sample {index + 1}/{samples}: {answer if answer is not None else '(no answer)'}")
        working.update(f"Solving… {len(done)} of {samples} samples done")

    done: list[int] = []
    with Working(run.term, f"Solving… 0 of {samples} samples done" if samples > 1 else "Solving…") as working:
        replies = run.samples(loaded, text, samples, drawn)
    answers = [extract_boxed(reply.answer) for reply in replies]
    vote = majority_vote(answers)
    summary = {"winner": vote.winner, "counts": [[a, n] for a, n in vote.counts], "missing": vote.missing}
    if run.output == "json":
        import json

        payload = {"model": loaded.info.name, "backend": loaded.info.backend,
                   "samples": [reply_json(r, loaded.info) for r in replies], "vote": summary}
        run.term.stdout.write(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    elif run.output == "jsonl":
        write_json_line(run.term.stdout, {"type": "vote", **summary})
    return vote


def _show_final_answer(run, answer: str) -> None:
    from ponder.reasoning import extract_boxed

    boxed = extract_boxed(answer)
    if boxed is None:
        print("ponder: note: the answer has no \\boxed{} final answer", file=run.term.stderr)
    elif run.term.stdout_is_tty:
        _answer_panel(run, boxed, subtitle=None)
    else:
        print(f"Answer: {boxed}", file=run.term.stdout)


def _show_vote(run, vote, samples: int) -> None:
    split = ", ".join(f"{answer} ×{count}" for answer, count in vote.counts)
    if vote.missing:
        split += f", no answer ×{vote.missing}"
    if vote.winner is None:
        print("ponder: no sample gave a \\boxed{} answer", file=run.term.stderr)
        raise typer.Exit(EXIT_NO_ANSWER)
    if run.term.stdout_is_tty:
        _answer_panel(run, vote.winner, subtitle=f"Votes ({samples} samples): {split}")
    else:
        print(f"Answer: {vote.winner}", file=run.term.stdout)
        print(f"Votes ({samples} samples): {split}", file=run.term.stdout)


def _answer_panel(run, answer: str, subtitle: str | None) -> None:
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from ponder.latex import latex_to_unicode

    console = Console(file=run.term.stdout, no_color=not run.term.color, highlight=False)
    console.print(Panel(Text(latex_to_unicode(answer), style="bold green"), title="Answer", expand=False))
    if subtitle:
        console.print(Text(subtitle, style="dim"))


def register(app: typer.Typer) -> None:
    app.command("solve")(solve)
