"""Constraints that would otherwise fail only after generation, as "a bug in ponder": refused or made sound
before any model loads."""

from __future__ import annotations

import os

import pytest

from ponder.constraint import Constraint, from_options
from ponder.errors import UsageError


def test_a_fractional_multiple_of_is_refused_a_whole_one_is_kept():
    with pytest.raises(UsageError, match="multipleOf of 0.1"):
        from_options('{"type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.1}}}', None)
    assert from_options('{"type": "integer", "multipleOf": 3}', None).schema["multipleOf"] == 3
    # a property that is named multipleOf is no keyword
    assert from_options('{"type": "object", "properties": {"multipleOf": {"type": "number"}}}', None) is not None


def test_choices_are_compared_as_they_are_checked_stripped():
    constraint = from_options(None, [" yes", "no "])
    assert constraint.choices == ("yes", "no")
    assert constraint.check("\n\nyes").value == "yes"
    with pytest.raises(UsageError, match="empty choice"):
        from_options(None, ["  "])


def test_a_huge_schema_file_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "model.json"
    with open(big, "wb") as file:
        file.truncate(3 << 20)  # sparse: 3 MiB that were never written
    with pytest.raises(UsageError, match="over 1 MiB"):
        from_options(str(big), None)


def test_a_fifo_as_the_schema_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "schema.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="cannot read the schema file"):
        from_options(str(fifo), None)


def test_nan_is_never_a_json_answer():
    from ponder.constraint import ConstraintBroken

    with pytest.raises(ConstraintBroken, match="not JSON"):
        Constraint(schema={"type": "number"}).check("NaN")
