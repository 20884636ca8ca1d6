"""`ponder batch`: many prompts or problems from JSON lines, one JSON result per line, resumable."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Optional, TextIO

import typer

from ponder.cli.commands.options import MAX_PARALLEL, ModelOptions, SamplingOptions, ServerOptions, ThinkingOptions, thinking
from ponder.cli.views.budget_curve import check_plot, label, plot as draw, report, summarize
from ponder.errors import UsageError
from ponder.settings import ModelKind, OnLoop, check


def read_tasks(lines: list[str]) -> list[dict]:
    """Tasks from JSON lines: {"id", "prompt"} or {"id", "problem", "answer"}; blank lines skipped."""
    tasks, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"input line {number} is not JSON: {exc.msg}") from None
        if not isinstance(task, dict) or "id" not in task or not ("prompt" in task or "problem" in task):
            raise UsageError(f'input line {number} needs "id" and "prompt" or "problem"')
        if task["id"] in seen:
            raise UsageError(f"input line {number} repeats id {task['id']!r}")
        seen.add(task["id"])
        tasks.append(task)
    return tasks


def finished_results(path: Path) -> list[dict]:
    """Results already in the output file. A torn last line (a kill mid-write) is cut off,
    so the file again ends in whole lines."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    results = []
    for line in complete.decode("utf-8").splitlines():
        if line.strip():
            results.append(json.loads(line))
    return results


def batch(
    invocation: typer.Context,  # carries an injected Terminal
    input: str = typer.Argument("-", help="JSON lines file of tasks, or - for stdin."),
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
    think_budget: Optional[str] = typer.Option(
        None, "--think-budget", show_default=False,
        help="Reasoning tokens before ponder ends the reasoning; several (256,1024,none) compare them: results"
             " per budget, a table and a chart of accuracy against reasoning tokens.",
    ),
    plot: Optional[str] = typer.Option(None, "--plot", show_default=False,
                                       help="With several --think-budget values: draw the curve into FILE.png or .svg."),
    no_think: bool = ThinkingOptions.no_think,
    budget_message: Optional[str] = ThinkingOptions.budget_message,
    on_loop: OnLoop = ThinkingOptions.on_loop,
) -> None:
    """Run tasks from JSON lines, one result line each (flushed and synced as it finishes).

    A task is {"id": ..., "prompt": ...} or {"id": ..., "problem": ..., "answer": ...}; problems
    get DeepSeek's math instruction, and with reference answers the accuracy (pass@1 averaged
    over --samples, by mathematical equivalence) is reported on stderr.

    Exit codes: 0 done, 1 model failure, 2 bad input, 130 interrupted (finished lines kept).
    """
    from ponder.cli.commands.model_run import Run

    parallel = parallel or concurrency
    budgets = _budgets(think_budget)
    run = Run.start(invocation=invocation, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                    **thinking(budgets[0], no_think, budget_message, on_loop, invocation))
    if plot and len(budgets) < 2:
        raise UsageError("--plot draws several budgets: give --think-budget a list, e.g. 256,1024,none")
    if no_think and len(budgets) > 1:
        raise UsageError("--no-think and a list of budgets: put 0 in the list instead")
    if plot:
        check_plot(plot)  # before hours of runs, not after
    tasks = read_tasks(_read_input(input, run.term))
    if plot and not any("answer" in task for task in tasks):
        raise UsageError("--plot needs tasks with reference answers (\"answer\"), to measure accuracy")
    loaded = []  # the model, loaded once for every budget, when a task needs it

    def model_now():
        if not loaded:
            loaded.append(run.load(model, backend, ctx, threads, server, timeout, model_kind,
                                   sequences=parallel or samples, sequences_given=parallel is not None))
        return loaded[0]

    summaries = []
    for budget in budgets:
        run.params = replace(run.params, think_budget=run.params.think_budget if len(budgets) == 1 else budget)
        path = output if len(budgets) == 1 or output is None else _budget_path(output, budget)
        results = _run_all(run, tasks, path, model_now, samples, parallel, tag=len(budgets) > 1)
        summaries.append(summarize(budget, results))
    if len(budgets) == 1:
        _report_accuracy(results, run.term.stderr)
        return
    report(summaries, run.term.stderr, run.term.stderr_is_tty)
    if plot:
        draw(summaries, plot)
        print(f"ponder: the curve is in {plot}", file=run.term.stderr)


def _budgets(text: str | None) -> list[int | None]:
    """--think-budget as a list: "256,1024,none" (a single value, or none, as for ask)."""
    if text is None:
        return [None]
    budgets = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "none":
            budgets.append(None)
            continue
        try:
            budgets.append(check("think_budget", int(part)))
        except ValueError:
            raise UsageError(f"--think-budget takes whole numbers or none, separated by commas, not {part!r}") from None
    return budgets


def _budget_path(output: Path, budget: int | None) -> Path:
    """Where one budget's results go: results.jsonl -> results.budget-256.jsonl."""
    return output.with_name(f"{output.stem}.budget-{label(budget)}{output.suffix}")


def _run_all(run, tasks: list[dict], output: Path | None, model_now, samples: int, parallel: int | None,
             tag: bool) -> list[dict]:
    """Every task's result for the current settings: those already in `output`, then the rest, each
    written as it finishes. `tag`: each result says its think_budget (a sweep to stdout)."""
    done = finished_results(output) if output else []
    done_ids = {result.get("id") for result in done}
    todo = [task for task in tasks if task["id"] not in done_ids]
    if done:
        print(f"ponder: resuming: {len(tasks) - len(todo)} of {len(tasks)} tasks already in {output}",
              file=run.term.stderr)
    results = [r for r in done if r.get("id") in {t["id"] for t in tasks}]
    if not todo:
        return results
    loaded = model_now()
    sink = output.open("a", encoding="utf-8") if output else run.term.stdout
    try:
        with _progress(run.term, len(tasks), len(tasks) - len(todo)) as advance:
            def finished(result: dict) -> None:
                if tag:
                    result = {**result, "think_budget": run.params.think_budget}
                _write_result(sink, result)
                results.append(result)
                advance()

            _run_tasks(run, loaded, todo, samples, parallel, finished)
    finally:
        if output:
            sink.close()
    return results


def _read_input(source: str, term) -> list[str]:
    if source == "-":
        if term.stdin_is_tty:
            raise UsageError("no tasks: give a JSON lines file, or pipe the tasks in")
        return term.stdin.read().decode("utf-8", errors="replace").splitlines()
    try:
        return Path(source).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None


def _run_tasks(run, loaded, tasks: list[dict], samples: int, parallel: int | None, finished) -> None:
    """`finished(result)` for each task as soon as its samples are all done: in order, one sample at a
    time; or in the order they end, with several samples at once (decoded together on a local model,
    requests in flight to a server)."""
    server = hasattr(loaded, "lane")
    at_once = (parallel or 1) if server else loaded.info.sequences
    if at_once == 1:
        for task in tasks:
            finished(_result(task, run.samples(loaded, _task_text(task), samples, concurrency=1)))
        return
    from ponder.events import Message
    from ponder.exchange import model_prompt
    from ponder.parallel import Job
    from ponder.samples import decode_jobs, in_flight, sample_params

    drawn: dict[int, dict] = {}

    def sample_done(key, reply) -> None:
        number, index = key
        drawn.setdefault(number, {})[index] = reply
        if len(drawn[number]) == samples:
            replies = drawn.pop(number)
            finished(_result(tasks[number], [replies[i] for i in range(samples)]))

    if server:
        jobs = [((number, index), [Message("user", _task_text(task))], sample_params(run.params, index))
                for number, task in enumerate(tasks) for index in range(samples)]
        in_flight(loaded, jobs, at_once, sample_done)
        return
    decode_jobs(loaded, (Job((number, index), model_prompt(loaded, [Message("user", _task_text(task))]),
                             sample_params(run.params, index), group=number, group_size=samples)
                         for number, task in enumerate(tasks) for index in range(samples)), sample_done)


def _task_text(task: dict) -> str:
    from ponder.solve import math_prompt

    return math_prompt(task["problem"]) if "problem" in task else task["prompt"]


def _result(task: dict, replies: list) -> dict:
    from ponder.cli.views.json_output import stats_json
    from ponder.reasoning import extract_boxed
    from ponder.solve import equivalent

    reference = task.get("answer")
    drawn = []
    for reply in replies:
        boxed = extract_boxed(reply.answer)
        entry = {"reasoning": reply.reasoning, "answer": reply.answer.lstrip(), "boxed": boxed,
                 "finish_reason": reply.finish_reason, "reasoning_end": reply.stats.reasoning_end,
                 "stats": stats_json(reply.stats)}
        if reference is not None:
            entry["correct"] = boxed is not None and equivalent(boxed, str(reference))
        drawn.append(entry)
    result = {"id": task["id"], "samples": drawn}
    if reference is not None:
        result["reference"] = reference
        result["pass@1"] = sum(s["correct"] for s in drawn) / len(drawn)
    return result


def _write_result(sink, result: dict) -> None:
    """One whole line, flushed and synced: a kill later loses nothing already written."""
    sink.write(json.dumps(result, ensure_ascii=False) + "\n")
    sink.flush()
    try:
        os.fsync(sink.fileno())
    except (OSError, ValueError):
        pass  # a pipe or terminal: nothing to sync


def _report_accuracy(results: list[dict], err: TextIO) -> None:
    scored = [r["pass@1"] for r in results if "pass@1" in r]
    if scored:
        accuracy = sum(scored) / len(scored)
        print(f"accuracy (pass@1): {accuracy:.1%} over {len(scored)} problems", file=err)


class _progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, term, total: int, completed: int):
        self.term, self.total, self.completed = term, total, completed
        self.bar = None

    def __enter__(self):
        if self.term.stderr_is_tty:
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(file=self.term.stderr), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("tasks", total=self.total, completed=self.completed)
        return self.advance

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)
