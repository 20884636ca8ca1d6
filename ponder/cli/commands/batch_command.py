"""`ponder batch`: many prompts or problems from JSON lines, one JSON result per line, resumable.

The tasks (ponder.batch_tasks) and the results files (ponder.batch_results) are all checked before a
model loads; running them is ponder.cli.commands.batch_run.
"""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Optional, TextIO

import typer

from ponder.batch_results import reportable
from ponder.batch_tasks import read_tasks
from ponder.cli.commands.batch_run import Output, Progress, TaskLines, run_tasks
from ponder.cli.commands.options import MAX_PARALLEL, AnswerShape, ModelChoice, Sampling, Thinking, option_groups
from ponder.cli.views.budget_curve import check_plot, label, plot as draw, report, summarize
from ponder.errors import PonderError, UsageError
from ponder.settings import check


@option_groups
def batch(
    invocation: typer.Context,  # carries an injected Terminal
    input: str = typer.Argument("-", help="JSON lines file of tasks, or - for stdin."),
    *,
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Results file; rerunning with it skips tasks already done. [default: stdout]",
        show_default=False,
    ),
    samples: int = typer.Option(1, "--samples", "-n", min=1, help="Samples per task; accuracy is pass@1 averaged over them."),
    parallel: Optional[int] = typer.Option(
        None, "--parallel", "-P", min=1, max=MAX_PARALLEL, show_default=False,
        help="Samples at once, of one task or several: decoded together on a local model (a finished one frees"
             " its place for the next), requests in flight to a server [default: --samples locally, 1 to a server].",
    ),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-k", min=1, hidden=True,
                                              help="The former name of --parallel."),
    model: ModelChoice,
    sampling: Sampling,
    think_budget: Optional[str] = typer.Option(
        None, "--think-budget", show_default=False,
        help="Reasoning tokens before ponder ends the reasoning; several (256,1024,none) compare them: results"
             " per budget, a table and a chart of accuracy against reasoning tokens.",
    ),
    plot: Optional[str] = typer.Option(None, "--plot", show_default=False,
                                       help="With several --think-budget values: draw the curve into FILE.png or .svg."),
    thinking: Thinking,  # (its --think-budget is the list above)
    shape: AnswerShape,
) -> None:
    """Run tasks from JSON lines, one result line each (flushed and synced as it finishes).

    A task is {"id": ..., "prompt": ...} or {"id": ..., "problem": ..., "answer": ...}; problems
    get DeepSeek's math instruction, and with reference answers the accuracy (pass@1 averaged
    over --samples, by mathematical equivalence) is reported on stderr. A task that fails alone
    (its prompt over the context, a server refusing its request, a stream broken off) gets a line
    {"id": ..., "error": ...} and the batch goes on; a rerun with the same -o runs it again.

    --schema or --choice constrains every task's answer (not its reasoning); a task may carry its own
    "schema" (a JSON Schema) or "choices" (a list of strings) instead. Each sample of a constrained task
    then holds "parsed", the answer's value, unless it ended before its answer was complete (its
    finish_reason says why, e.g. "length").

    Exit codes: 0 done, 1 a task or the model failed, 2 bad input, 130 interrupted (finished lines
    kept), 141 stdout closed early.
    """
    from ponder.cli.commands.model_run import Run

    parallel = parallel or concurrency
    budgets = _budgets(think_budget)
    run = Run.start(invocation, sampling, replace(thinking, think_budget=budgets[0]))
    run.params = replace(run.params, constraint=shape.constraint())  # (a bad one: exit 2 before the model loads)
    if plot and len(budgets) < 2:
        raise UsageError("--plot draws several budgets: give --think-budget a list, e.g. 256,1024,none")
    if thinking.no_think and len(budgets) > 1:
        raise UsageError("--no-think and a list of budgets: put 0 in the list instead")
    if plot:
        check_plot(plot)  # before hours of runs, not after
    tasks = read_tasks(_read_input(input, run.term))
    if not tasks:
        print(f"ponder: no tasks in {'stdin' if input == '-' else input}", file=run.term.stderr)
    if plot and not any("answer" in task for task in tasks):
        raise UsageError("--plot needs tasks with reference answers (\"answer\"), to measure accuracy")
    if output is not None and str(output) == "-":
        output = None  # -o - is stdout, as the input's - is stdin
    _not_the_input(input, output)
    loaded = []  # the model, loaded once for every budget, when a task needs it

    def model_now():
        if not loaded:
            loaded.append(run.load(model, sequences=parallel or samples, sequences_given=parallel is not None))
        return loaded[0]

    ids = {task["id"] for task in tasks}
    outputs = []
    try:
        # Every results file is read, checked and opened before the model loads: a wrong -o costs nothing.
        for budget in budgets:
            path = output if len(budgets) == 1 or output is None else _budget_path(output, budget)
            outputs.append(Output(run.term, path, ids))
        for out in outputs:
            if _todo(tasks, out):
                out.open()
        summaries, failed = [], 0
        for budget, out in zip(budgets, outputs):
            run.params = replace(run.params, think_budget=run.params.think_budget if len(budgets) == 1 else budget)
            results, failures = _run_all(run, tasks, out, model_now, samples, parallel, tag=len(budgets) > 1)
            failed += failures
            if len(budgets) > 1:
                summaries.append(summarize(budget, [r for r in results if "samples" in r and reportable(r)]))
    finally:
        for out in outputs:
            out.close()
    resumable = output is not None and all(out.found.regular for out in outputs)  # (a device is no file to resume)
    if len(budgets) == 1:
        _report_accuracy(results, run.term.stderr)
    else:
        report(summaries, run.term.stderr, run.term.stderr_is_tty)
        if plot:
            draw(summaries, plot)
            print(f"ponder: the curve is in {plot}", file=run.term.stderr)
    if failed:
        runs = len(tasks) * len(budgets)
        raise PonderError(f"{failed} of {runs} tasks failed; their lines hold \"error\"",
                          hint="a rerun with the same -o runs them again" if resumable else None)


def _budgets(text: str | None) -> list[int | None]:
    """--think-budget as a list: "256,1024,none" (a single value, or none, as for ask)."""
    if text is None:
        return [None]
    budgets = []
    for part in str(text).split(","):
        part = part.strip().lower()
        try:
            budgets.append(None if part == "none" else check("think_budget", int(part)))
        except ValueError:
            raise UsageError(f"--think-budget takes whole numbers or none, separated by commas, not {part!r}") from None
        if budgets.count(budgets[-1]) > 1:  # (each budget has a results file of its own)
            raise UsageError(f"--think-budget names {part} twice")
    return budgets


def _budget_path(output: Path, budget: int | None) -> Path:
    """Where one budget's results go: results.jsonl -> results.budget-256.jsonl."""
    return output.with_name(f"{output.stem}.budget-{label(budget)}{output.suffix}")


def _todo(tasks: list[dict], out: Output) -> list[dict]:
    """The tasks without a result in `out`: those never run, and those that failed (run again)."""
    return [task for task in tasks if task["id"] not in out.found.done]


def _run_all(run, tasks: list[dict], out: Output, model_now, samples: int, parallel: int | None,
             tag: bool) -> tuple[list[dict], int]:
    """Every task's result for the current settings, and how many failed: those already in the output,
    then the rest, each written as it finishes. `tag`: each result says its think_budget (a sweep to stdout)."""
    todo = _todo(tasks, out)
    done = out.found.done
    if done or out.found.failed:
        retried = sum(task["id"] in out.found.failed for task in todo)
        print(f"ponder: resuming: {len(done)} of {len(tasks)} tasks already in {out.path}"
              + (f"; {retried} that failed run again" if retried else ""), file=run.term.stderr)
    results = [done[task["id"]] for task in tasks if task["id"] in done]
    if not todo:
        return results, 0
    loaded = model_now()
    with Progress(run.term, len(tasks), len(tasks) - len(todo)) as progress:
        def write(result: dict) -> None:
            if tag:
                result = {**result, "think_budget": run.params.think_budget}
            out.write(result)
            results.append(result)
            progress.advance()

        lines = TaskLines(todo, samples, write, progress.say, run.params.constraint)
        run_tasks(run, loaded, lines.tasks, samples, parallel, lines)
    return results, lines.failures


def _read_input(source: str, term) -> bytes:
    if source == "-":
        if term.stdin is None:
            raise UsageError("no tasks: stdin is closed", hint="give a JSON lines file, or pipe the tasks in")
        if term.stdin_is_tty:
            raise UsageError("no tasks: give a JSON lines file, or pipe the tasks in")
        return term.stdin.read()
    try:
        with open(source, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and os.path.realpath(source) != os.devnull:
                raise UsageError(f"cannot read tasks from {source}: it is a device, not a file")  # /dev/zero never ends
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None


def _not_the_input(source: str, output: Path | None) -> None:
    if source == "-" or output is None:
        return
    try:
        same = os.path.samefile(source, output)
    except OSError:
        return
    if same:
        raise UsageError(f"-o {output} is the input file: the results would go into the tasks",
                         hint="give -o a file of its own, e.g. -o results.jsonl")


def _report_accuracy(results: list[dict], err: TextIO) -> None:
    scored = [r["pass@1"] for r in results if "pass@1" in r]
    if scored:
        accuracy = sum(scored) / len(scored)
        print(f"accuracy (pass@1): {accuracy:.1%} over {len(scored)} problems", file=err)


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)
