"""`ponder batch`'s tasks: JSON lines read and checked, every line, before a model is loaded.

A task is {"id": ..., "prompt": ...} or {"id": ..., "problem": ..., "answer": ...}, and may carry its
own constraint on the answer: "schema" (a JSON Schema) or "choices" (a list of strings), which beats
batch's --schema or --choice. A typo found here costs nothing, while one found on the model thread hours
into a run would stop the batch: so every type, and every task's schema and grammar, is checked up front
and the whole input is refused (exit 2) with the lines at fault named.
"""

from __future__ import annotations

import functools
import json
import math

from ponder.errors import UsageError

SHOWN_PROBLEMS = 5  # bad lines named in the error; the rest are counted
TASK_SHAPE = ('each line is {"id": ..., "prompt": ...} or {"id": ..., "problem": ..., "answer": ...},'
              ' optionally with "schema": {...} or "choices": [...]')


def read_tasks(data: bytes, source: str = "input") -> list[dict]:
    """Tasks from JSON lines (UTF-8; blank lines skipped). Lines end at "\\n" alone: a JSON string may
    hold U+2028 or U+0085, which str.splitlines would take for line ends."""
    tasks, seen, problems = [], set(), []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"line {number} is not UTF-8 text")
            continue
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number} is not JSON: {exc.msg} (column {exc.colno})")
            continue
        except (ValueError, RecursionError):  # an integer of over 4300 digits; nesting too deep
            problems.append(f"line {number} is not JSON ponder can read")
            continue
        why = task_problem(task) or text_problem(task) or constraint_problem(task)
        if why is None and task["id"] in seen:
            why = f"repeats id {shown_id(task['id'])}"
        if why is not None:
            problems.append(f"line {number} {why}")
            continue
        seen.add(task["id"])
        tasks.append(task)
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        raise UsageError(f"{source} {shown}" + (f" (and {more} more)" if more > 0 else ""),
                         hint=TASK_SHAPE)
    return tasks


def task_problem(task) -> str | None:
    """What is wrong with one parsed line as a task, or None."""
    if not isinstance(task, dict):
        return f"is {_kind(task)}, not a JSON object"
    if "id" not in task or not ("prompt" in task or "problem" in task):
        return 'needs "id" and "prompt" or "problem"'
    if not valid_id(task["id"]):
        return f'has an "id" that is {_kind(task["id"])}: ids are strings or whole numbers'
    field = "problem" if "problem" in task else "prompt"  # (a problem wins over a prompt, as it always has)
    if not isinstance(task[field], str):
        return f'has a "{field}" that is {_kind(task[field])}, not a string'
    if not task[field].strip():
        return f'has an empty "{field}"'
    answer = task.get("answer")
    if answer is not None and not (isinstance(answer, str) or _finite_number(answer)):
        return f'has an "answer" that is {_kind(answer)}: answers are strings or numbers'
    return None


def text_problem(task: dict) -> str | None:
    """Where a task holds text that is not UTF-8 (JSON may escape a lone surrogate, "\\ud800"), or None: it could
    reach neither the model nor the results file (ids and answers are written back)."""
    for field, value in task.items():
        where = _lone_surrogate(field) or _lone_surrogate(value)
        if where:
            return f'has text that is not UTF-8 in "{field.encode("utf-8", "backslashreplace").decode()}" ({where})'
    return None


def _lone_surrogate(value) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"a lone surrogate \\u{ord(value[exc.start]):04x} at character {exc.start + 1}"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:  # (a schema's keys and values, a list of choices; nesting is bounded by json.loads)
        where = (_lone_surrogate(key) if isinstance(key, str) else None) or _lone_surrogate(item)
        if where:
            return where
    return None


def constraint_problem(task: dict) -> str | None:
    """What is wrong with a task's own "schema" or "choices" (each checked as --schema's and --choice's are,
    grammar included), or None."""
    if "schema" in task and "choices" in task:
        return 'has both "schema" and "choices": give one'
    if "schema" in task and not isinstance(task["schema"], dict):
        return f'has a "schema" that is {_kind(task["schema"])}: a JSON Schema is an object'
    choices = task.get("choices")
    if "choices" in task and not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)):
        what = ("an empty list" if choices == [] else "a list with something other than strings"
                if isinstance(choices, list) else _kind(choices))
        return f'has "choices" that are {what}: they are a non-empty list of strings'
    if choices and any(not c.strip() or c != c.strip() for c in choices):
        return 'has a choice that is empty or starts or ends with a space (the answer is compared stripped)'
    field = "schema" if "schema" in task else "choices" if "choices" in task else None
    if field is None:
        return None
    try:
        return _shape_problem(field, json.dumps(task[field], sort_keys=True))
    except RecursionError:  # (jsonschema's checks recurse: a schema nested some hundreds deep)
        return f'has a "{field}" nested too deeply'


@functools.lru_cache(maxsize=64)  # (tasks often share one schema: its grammar is compiled once)
def _shape_problem(field: str, text: str) -> str | None:
    from ponder.constraint import Constraint, checked

    given = json.loads(text)
    shape = Constraint(schema=given, source=f'"{field}"') if field == "schema" else \
        Constraint(choices=tuple(given), source=f'"{field}"')
    try:
        checked(shape)
    except UsageError as exc:
        return f"has a bad {exc.message}"
    return None


def task_constraint(task: dict, default):
    """The constraint on a task's answer: its own "schema" or "choices" (checked by read_tasks), else `default`
    (batch's --schema or --choice; None: unconstrained)."""
    from ponder.constraint import Constraint

    where = f"task {shown_id(task['id'])[:60]}"
    if "schema" in task:
        return Constraint(schema=task["schema"], source=f'{where}\'s "schema"')
    if "choices" in task:
        return Constraint(choices=tuple(dict.fromkeys(task["choices"])), source=f'{where}\'s "choices"')
    return default


def valid_id(value) -> bool:
    """Ids are strings or integers: not floats (1e999 is infinity, which JSON cannot write back), not
    booleans (True == 1 would make two tasks one), nor lists or objects."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def task_text(task: dict) -> str:
    """The user turn of a task: a problem gets DeepSeek's math instruction."""
    from ponder.solve import math_prompt

    return math_prompt(task["problem"]) if "problem" in task else task["prompt"]


def shown_id(value) -> str:
    """A task's id for a message: as JSON, with what a terminal would obey (C1 controls, bidi overrides) visible."""
    from ponder.outside_files import shown

    return shown(json.dumps(value, ensure_ascii=False))


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, float):
        return "a number with a point or exponent" if math.isfinite(value) else "a number out of range"
    return {int: "a number", str: "a string", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
