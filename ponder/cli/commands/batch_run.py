"""Running `ponder batch`'s tasks: one result line each, written as it finishes, whichever way the
samples are drawn (one after another, decoded together on a local model, requests in flight to a
server); a task that fails alone gets an error line and the batch goes on.

Which failures are a task's own: its prompt over the context, a server's 400/413/422/500 to its request,
a stream broken off in one of its samples, a constrained answer that fails its check after generation
(ConstraintBroken: ponder's bug, but that task's alone). Everything else stops the batch (the model failing, a
server that cannot be reached, a full disk, Ctrl-C), and so do ten tasks in a row failing with the
very same message (a server refusing every request alike is not ten bad tasks).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import replace

import typer

from ponder.batch_results import ResultsSink, Resumed, resume
from ponder.batch_tasks import shown_id, task_constraint, task_text
from ponder.cli.views.show_reply import EXIT_BROKEN_PIPE
from ponder.errors import ContextOverflow, PonderError

# A server's refusal of this one request (bad, too long, or the server failing on it), not of every request.
TASK_STATUSES = (400, 413, 422, 500)
CLOSED = "stdout is closed: there is nowhere to write the results"
SAME_FAILURES = 10  # tasks in a row failing with one same message: the cause is not in the tasks


def task_failure(exc: BaseException) -> str | None:
    """Why a task failed, if the failure is the task's own (the batch goes on); None if it stops the batch."""
    from ponder.backends.server_http import ServerRefused
    from ponder.constraint import ConstraintBroken
    from ponder.samples import BrokenSample

    if isinstance(exc, ServerRefused) and exc.status not in TASK_STATUSES:
        return None
    if isinstance(exc, (ContextOverflow, BrokenSample, ServerRefused, ConstraintBroken)):
        return exc.one_line()
    return None


class Output:
    """One results destination: `path` (resumed from if it is a regular file, then appended to) or
    stdout. Writing fails as one line; a reader that went away ends the command quietly with 141."""

    def __init__(self, term, path, ids):
        self.term, self.path = term, path
        self.found = resume(path, ids) if path is not None else Resumed(regular=False)
        self.sink = ResultsSink(path, self.found, stream=term.stdout)

    def open(self) -> None:
        """Ready to write, before the model loads: a closed stdout or a path that cannot be written fails now."""
        if self.path is None:
            if self.term.stdout is None:
                raise PonderError(CLOSED, hint="give -o FILE")
            self._guarded(lambda: self.term.stdout.write(""))  # fails where the shell closed stdout (`>&-`)
        self.sink.open()

    def write(self, result: dict) -> None:
        self._guarded(lambda: self.sink.write(result))

    def _guarded(self, write: Callable[[], object]) -> None:
        try:
            write()
        except BrokenPipeError:
            if self.path is None:
                self.term.silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:
            if self.path is not None:
                raise  # (a file's errors are PonderErrors already)
            if exc.errno == errno.EBADF:
                raise PonderError(CLOSED, hint="give -o FILE") from None
            self.term.silence_stdout()  # what is still buffered must not fail again at exit
            raise PonderError(f"cannot write the results to stdout: {exc.strerror or exc}",
                              hint="-o FILE keeps the results, and a rerun with it resumes") from None

    def close(self) -> None:
        self.sink.close()


class TaskLines:
    """Each task's samples as they end, turned into its one line: the result once its samples are all in,
    or an error line at its first failure (its other samples are then dropped). `constraint`: batch's
    --schema or --choice, for the tasks without a "schema" or "choices" of their own."""

    def __init__(self, tasks: list[dict], samples: int, write: Callable[[dict], None], say: Callable[[str], None],
                 constraint=None):
        self.tasks, self.samples, self.write, self.say = tasks, samples, write, say
        self.constraint = constraint
        self.drawn: dict[int, dict[int, object]] = {}
        self.gone: set[int] = set()  # tasks already failed
        self.failures = 0
        self._same = ("", 0)  # the last failure's message and how many tasks in a row failed with it

    def sample(self, key: tuple[int, int], reply) -> None:
        number, index = key
        if number in self.gone:
            return
        drawn = self.drawn.setdefault(number, {})
        drawn[index] = reply
        if len(drawn) == self.samples:
            del self.drawn[number]
            self.done(number, [drawn[i] for i in range(self.samples)])

    def params(self, number: int, params):
        """The settings of task `number`'s samples: `params` with the task's constraint."""
        own = task_constraint(self.tasks[number], self.constraint)
        return params if own is params.constraint else replace(params, constraint=own)

    def done(self, number: int, replies: list) -> None:
        self._same = ("", 0)
        task = self.tasks[number]
        result = result_line(task, replies, task_constraint(task, self.constraint))
        cut = [s["finish_reason"] for s in result["samples"] if "constraint" in result and "parsed" not in s]
        if cut:  # a result all the same (a rerun at this seed ends alike), but a pipeline should hear of it
            self.say(f"ponder: task {shown_id(task['id'])[:60]}: {len(cut)} of {len(replies)} samples ended before"
                     f" their answer was complete (finish_reason {', '.join(sorted(set(cut)))}): no \"parsed\"")
        self.write(result)

    def failure(self, key: tuple[int, int | None], exc: BaseException) -> bool:
        """Record `exc` as task `key`'s failure if it is the task's own (True); False: it stops the batch."""
        why = task_failure(exc)
        if why is None:
            return False
        number, index = key
        if number in self.gone:
            return True
        self.drawn.pop(number, None)
        self.gone.add(number)
        self.failures += 1
        task = self.tasks[number]
        # A broken stream or answer is one sample's; a prompt too long or refused is the same for all the task's.
        from ponder.constraint import ConstraintBroken
        from ponder.samples import BrokenSample

        alone = index is not None and self.samples > 1 and isinstance(exc, (BrokenSample, ConstraintBroken))
        shown = f"sample {index + 1} of {self.samples}: {why}" if alone else why
        self.write({"id": task["id"], "error": shown})
        self.say(f"ponder: task {shown_id(task['id'])[:60]} failed: {shown}")
        message, count = self._same
        self._same = (why, count + 1 if why == message and not isinstance(exc, ContextOverflow) else 1)
        if self._same[1] >= SAME_FAILURES:
            raise PonderError(f"{SAME_FAILURES} tasks in a row failed alike, so the cause is not in them: {why}",
                              hint="their lines hold the error; a rerun with the same -o tries them again")
        return True


def run_tasks(run, loaded, tasks: list[dict], samples: int, parallel: int | None, lines: TaskLines) -> None:
    """Each task's line as soon as its samples are all done: in order, one sample at a time; or in the
    order they end, with several samples at once (decoded together on a local model, requests in
    flight to a server)."""
    from ponder.events import Message
    from ponder.samples import decode_jobs, draw, in_flight, sample_params

    server = hasattr(loaded, "lane")
    at_once = (parallel or 1) if server else loaded.info.sequences

    def turn(task: dict) -> list[Message]:
        return [Message("user", task_text(task))]

    if at_once == 1:
        for number, task in enumerate(tasks):
            try:
                replies = draw(loaded, turn(task), lines.params(number, run.params), samples, concurrency=1)
            except Exception as exc:
                if not lines.failure((number, None), exc):
                    raise
                continue
            lines.done(number, replies)
        return
    # Each sample with its task's settings (its constraint) and its own seed; made as they are taken.
    drawn = (((number, index), task, sample_params(lines.params(number, run.params), index))
             for number, task in enumerate(tasks) for index in range(samples))
    if server:
        in_flight(loaded, [(key, turn(task), params) for key, task, params in drawn], at_once, lines.sample,
                  failed=lines.failure)
        return
    from ponder.exchange import model_prompt
    from ponder.parallel import Job

    decode_jobs(loaded, (Job(key, model_prompt(loaded, turn(task)), params, group=key[0], group_size=samples)
                         for key, task, params in drawn),
                lines.sample, failed=lines.failure)


def result_line(task: dict, replies: list, constraint=None) -> dict:
    """A task's result: "id" first and "samples" second (the results file's reader relies on it). A task
    whose answers are constrained says how ("constraint": "schema" or "choices"), and each of its samples
    holds "parsed", the answer's checked value, unless it ended before its answer was complete (its
    finish_reason says why: "length", "cancelled", "loop")."""
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
        if reply.parsed is not None:
            entry["parsed"] = reply.parsed.value
        if reference is not None:
            entry["correct"] = boxed is not None and equivalent(boxed, str(reference))
        drawn.append(entry)
    result = {"id": task["id"], "samples": drawn}
    if constraint is not None:
        result["constraint"] = "schema" if constraint.schema is not None else "choices"
    if reference is not None:
        result["reference"] = reference
        result["pass@1"] = sum(s["correct"] for s in drawn) / len(drawn)
    return result


class Progress:
    """A progress bar on stderr when it is a terminal; nothing otherwise. `say` prints a line above it."""

    def __init__(self, term, total: int, completed: int):
        self.term, self.total, self.completed = term, total, completed
        self.bar = None

    def __enter__(self) -> Progress:
        if self.term.stderr_is_tty:
            from rich.console import Console
            from rich.progress import Progress as Bar

            self.bar = Bar(console=Console(file=self.term.stderr), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("tasks", total=self.total, completed=self.completed)
        return self

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def say(self, line: str) -> None:
        from ponder.cli.views.safe_text import visible

        line = visible(line.replace("\n", " "))  # a server's words are data
        if self.bar is not None:
            self.bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.term.stderr)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
