"""What `--schema` and `--choice` ask of an answer: the constraint, its grammar, and the check after.

The grammar engine is llguidance (what llama.cpp and vLLM embed); it is imported only when a
constraint is asked for. Its grammar covers the answer alone: the reasoning before it is free (see
ponder.grammar, which applies it token by token). Every constrained answer is checked again after
generation with the jsonschema library: a mismatch there is a bug in ponder, not the user's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ponder.errors import BackendError, UsageError

# The answer may open with the blank line R1 writes after </think>; then the document, compact.
_LEAD = 'LEAD: /\\n\\n?/'
MAX_SCHEMA_BYTES = 1 << 20


@dataclass(frozen=True)
class Parsed:
    """The value of a constrained answer (a JSON value, or the chosen string)."""

    value: object


@dataclass(frozen=True)
class Constraint:
    """An answer constrained to a JSON Schema (`schema`) or to one of `choices`."""

    schema: dict | None = None
    choices: tuple[str, ...] = ()
    source: str = field(default="", compare=False)  # how the user gave it, for messages

    def grammar(self) -> str:
        """The llguidance grammar of the answer: an optional leading blank line, then exactly the answer."""
        import llguidance

        if self.schema is not None:
            compact = {**self.schema, "x-guidance": {"whitespace_flexible": False, "lenient": False}}
            body = f"%json {json.dumps(compact)}"
        else:
            body = "(" + " | ".join(json.dumps(choice) for choice in self.choices) + ")"
        return llguidance.LLMatcher.grammar_from_lark(f"start: LEAD? {body}\n{_LEAD}\n")

    def request_schema(self) -> dict:
        """The constraint as a JSON Schema, for a server that takes one (a choice is an enum of strings)."""
        return self.schema if self.schema is not None else {"type": "string", "enum": list(self.choices)}

    def check(self, answer: str) -> Parsed:
        """The answer's value, checked against the constraint. A mismatch is ponder's bug: BackendError."""
        text = answer.strip()
        if self.schema is None:
            if text not in self.choices:
                raise ConstraintBroken(f"the answer {text[:80]!r} is none of the choices")
            return Parsed(text)
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ValueError as exc:
            raise ConstraintBroken(f"the answer is not JSON ({exc})") from None
        import jsonschema

        error = jsonschema.exceptions.best_match(_validator(self.schema).iter_errors(value))
        if error is not None:
            raise ConstraintBroken(f"the answer does not match the schema: {error.message}")
        return Parsed(value)


class ConstraintBroken(BackendError):
    """A constrained answer that does not satisfy its constraint: a bug in ponder or its grammar engine."""

    def __init__(self, message: str, hint: str = "this is a bug in ponder: please report it with the schema and the model"):
        super().__init__(message, hint=hint)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # json.loads takes NaN and Infinity; JSON and ponder's output do not


def _validator(schema: dict):
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


# --- from the command line ------------------------------------------------------------------------


def from_options(schema: str | None, choices: list[str] | None) -> Constraint | None:
    """The constraint `--schema` and `--choice` ask for, checked before any model loads (UsageError)."""
    choices = [part for given in choices or [] for part in _split_choices(given)]
    if schema is not None and choices:
        raise UsageError("--schema and --choice cannot be used together")
    if choices:
        return checked(Constraint(choices=tuple(dict.fromkeys(choices)), source="--choice"))
    if schema is not None:
        return checked(Constraint(schema=read_schema(schema), source="--schema"))
    return None


def _split_choices(given: str) -> list[str]:
    parts = [part.strip() for part in given.split(",")]  # (the answer is compared stripped: so are the choices)
    if any(not part for part in parts):
        raise UsageError(f"--choice {given!r} has an empty choice", hint="give choices as A,B,C or --choice A --choice B")
    return parts


def read_schema(text: str) -> dict:
    """A JSON Schema given inline (`{...}`), as a file's path, or in the concise form `name, age int, tags list`."""
    stripped = text.strip()
    if not stripped:
        raise UsageError("--schema is empty")
    if stripped[0] in '{["':
        return _json_schema(stripped, "the --schema text")
    path = Path(text).expanduser()
    if stripped.endswith(".json") or path.exists() or "/" in stripped:
        return _json_schema(_read_file(path), str(path))
    return concise_schema(stripped)


def _read_file(path: Path) -> str:
    from ponder.files import FileError, read_bytes

    try:
        if path.stat().st_size > MAX_SCHEMA_BYTES:
            raise UsageError(f"{path} is over {MAX_SCHEMA_BYTES >> 20} MiB: not a schema")
        data = read_bytes(path)
    except FileNotFoundError:
        raise UsageError(f"schema file not found: {path}") from None
    except FileError as exc:
        raise UsageError(f"cannot read the schema file: {exc.message}") from None
    except OSError as exc:
        from ponder.errors import describe_os_error

        raise UsageError(f"cannot read the schema file: {describe_os_error(exc)}") from None
    if len(data) > MAX_SCHEMA_BYTES:
        raise UsageError(f"{path} is over {MAX_SCHEMA_BYTES >> 20} MiB: not a schema")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text") from None


def _json_schema(text: str, where: str) -> dict:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise UsageError(f"{where} is not a JSON Schema: a schema is a JSON object, not {type(schema).__name__}")
    return schema


_CONCISE_TYPES = {"str": {"type": "string"}, "int": {"type": "integer"}, "float": {"type": "number"},
                  "bool": {"type": "boolean"}, "list": {"type": "array", "items": {"type": "string"}}}
_FIELD = re.compile(r"^([A-Za-z_][\w-]*)(?:\s+(\w+))?\s*(?::\s*(.*))?$")


def concise_schema(text: str) -> dict:
    """simonw/llm's concise form: fields separated by commas (or lines), each `name [type][: description]`,
    type one of str (the default), int, float, bool, list (of strings). Every field is required."""
    separator = "\n" if "\n" in text else ","
    properties: dict[str, dict] = {}
    for part in (p.strip() for p in text.split(separator)):
        if not part:
            continue
        match = _FIELD.match(part)
        if match is None or (match.group(2) or "str") not in _CONCISE_TYPES:
            raise UsageError(f"--schema: cannot read {part!r}",
                             hint="give JSON Schema, a .json file, or fields like 'name, age int, tags list'"
                                  " (types: str, int, float, bool, list)")
        name, kind, description = match.group(1), match.group(2) or "str", match.group(3)
        if name in properties:
            raise UsageError(f"--schema names {name!r} twice")
        properties[name] = dict(_CONCISE_TYPES[kind], **({"description": description} if description else {}))
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def checked(constraint: Constraint) -> Constraint:
    """The constraint, once both its schema and its grammar are known to be sound (else UsageError)."""
    if constraint.schema is not None:
        import jsonschema

        try:
            jsonschema.validators.validator_for(constraint.schema).check_schema(constraint.schema)
        except RecursionError:
            raise UsageError(f"{constraint.source}: the schema is nested too deeply") from None
        except jsonschema.exceptions.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path)
            raise UsageError(f"{constraint.source}: not a valid JSON Schema: {exc.message}"
                             + (f" (at {where})" if where else "")) from None
        fractional = _fractional_multiple(constraint.schema)
        if fractional is not None:  # a grammar of decimal digits and jsonschema's float division disagree
            raise UsageError(f"{constraint.source}: ponder cannot constrain an answer to a multipleOf of {fractional}",
                             hint="use a whole multipleOf (scale the unit), or leave it out")
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(constraint.grammar())
    if is_error:
        raise UsageError(f"{constraint.source}: ponder cannot constrain an answer to this: {_first_line(messages)}")
    return constraint


def _fractional_multiple(schema) -> float | None:
    """A multipleOf in the schema that is not a whole number, if any."""
    if isinstance(schema, dict):
        value = schema.get("multipleOf")
        if isinstance(value, float) and not value.is_integer():
            return value
        schema = list(schema.values())
    if isinstance(schema, list):
        for item in schema:
            found = _fractional_multiple(item)
            if found is not None:
                return found
    return None


def _first_line(messages: list[str]) -> str:
    text = (messages[0] if messages else "unknown reason").strip()
    return text.splitlines()[0][:300] if text else "unknown reason"
