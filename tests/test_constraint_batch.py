"""--schema and --choice where many replies are decoded together: each sequence of llama.cpp's batch
decoder with a grammar of its own, parallel samples carrying their parsed values, and `ponder batch`
(the flag for every task, a task's own "schema" or "choices", results with "parsed", resumed). Real
models: the tiny trained R1 (reasoning free, then the answer constrained) and SmolLM2 (no reasoning)."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import jsonschema
import pytest

from ponder.backends import get_backend
from ponder.backends.base import LoadOptions
from ponder.constraint import Constraint, ConstraintBroken, checked
from ponder.events import Finished, GenerationParams, Message, TextDelta
from ponder.exchange import model_prompt
from ponder.parallel import Job
from ponder.reasoning import CLOSE_TAG
from ponder.samples import decode_jobs
from tests.support import tiny_r1 as tiny
from tests.support.cli import run_ponder

# Bounded, so that even the tiny model's answer ends well within --max-tokens: an enum, an integer range,
# a short string, nothing else.
FLAG_SCHEMA = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                   "name": {"type": "string", "maxLength": 6}},
    "required": ["color", "n", "name"], "additionalProperties": False,
}
TASK_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 3}
TASK_CHOICES = ["two", "three", "four"]
GREEDY = GenerationParams(temperature=0, max_tokens=300)


# --- the batch decoder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny_r1", "smollm2"])
def two_slots(request):
    """A model loaded to decode two sequences at once (the R1 reasons first; SmolLM2 answers at once)."""
    path = request.getfixturevalue(request.param)
    model = get_backend("llama.cpp").load(path, LoadOptions(context=1024, sequences=2))
    yield model
    model.close()


def prompt(model, question: str) -> str:
    return model_prompt(model, [Message("user", question)])


def together(model, requests) -> list[tuple[list[int], str, Finished]]:
    """Each request's token ids, text and Finished, decoded on one BatchDecoder."""
    decoder = model.batch()
    try:
        handles = [decoder.add(text, params, threading.Event()) for text, params in requests]
        ids, texts, ends = {h: [] for h in handles}, {h: [] for h in handles}, {}
        while len(ends) < len(handles):
            for handle, event in decoder.step():
                if isinstance(event, TextDelta):
                    ids[handle] += event.ids
                    texts[handle].append(event.text)
                else:
                    ends[handle] = event
        return [(ids[h], "".join(texts[h]), ends[h]) for h in handles]
    finally:
        decoder.close()


def alone(model, text: str, params: GenerationParams) -> tuple[list[int], str, Finished]:
    events = list(model.stream(text, params))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    return [i for e in deltas for i in e.ids], "".join(e.text for e in deltas), events[-1]


def answer_of(model, text: str) -> str:
    return text.rsplit(CLOSE_TAG, 1)[-1] if model.info.chat.reasoning else text


def test_sequences_with_different_constraints_each_give_a_valid_answer_token_for_token_as_alone(two_slots):
    model = two_slots
    schema = checked(Constraint(schema=FLAG_SCHEMA, source="test"))
    choice = checked(Constraint(choices=tuple(TASK_CHOICES), source="test"))
    requests = [(prompt(model, "What is 12*7?"), replace(GREEDY, constraint=schema)),
                (prompt(model, tiny.LONG_QUESTION), replace(GREEDY, constraint=choice))]
    batched = together(model, requests)
    (ids, text, end), (choice_ids, choice_text, choice_end) = batched
    assert end.finish_reason == choice_end.finish_reason == "stop"  # ended by the grammar, within the budget
    jsonschema.validate(json.loads(answer_of(model, text)), FLAG_SCHEMA)
    assert schema.check(answer_of(model, text)).value == json.loads(answer_of(model, text))
    assert answer_of(model, choice_text).strip() in TASK_CHOICES
    if model.info.chat.reasoning:  # the reasoning ran free: the mask began after the model's own </think>
        assert CLOSE_TAG in text and CLOSE_TAG in choice_text
    for (text_in, params), got in zip(requests, batched):
        expected = alone(model, text_in, params)
        assert got[0] == expected[0]  # token for token
        assert got[2].finish_reason == expected[2].finish_reason
        assert got[2].stats.generated_tokens == expected[2].stats.generated_tokens


class _Disowned(Constraint):
    """A constraint whose check after generation refuses every answer, as a grammar engine's bug would
    show itself: its job must fail alone."""

    def check(self, answer: str):
        raise ConstraintBroken(f"the answer {answer.strip()[:20]!r} does not match (test)")


def test_parallel_samples_carry_parsed_and_a_failing_check_fails_its_sample_alone(two_slots):
    model = two_slots
    good = checked(Constraint(choices=tuple(TASK_CHOICES), source="test"))
    bad = _Disowned(choices=tuple(TASK_CHOICES), source="test")
    text = prompt(model, tiny.LONG_QUESTION)
    jobs = [Job(key, text, replace(GREEDY, constraint=shape), group=key) for key, shape in enumerate([bad, good, good])]
    replies, failures = {}, {}

    def failed(key, error) -> bool:
        failures[key] = error
        return True

    decode_jobs(model, jobs, replies.__setitem__, failed=failed)
    assert list(failures) == [0] and isinstance(failures[0], ConstraintBroken)
    assert sorted(replies) == [1, 2]
    for reply in replies.values():
        assert reply.finish_reason == "stop"
        assert reply.parsed is not None and reply.parsed.value == reply.answer.strip()
        assert reply.parsed.value in TASK_CHOICES


# --- ponder batch ----------------------------------------------------------------------------------------


def results_of(path) -> dict:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_batch_constrains_every_task_as_its_own_or_the_flag_says_and_resumes_a_file_with_parsed(tiny_r1, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    lines = [{"id": 1, "prompt": "What is 12*7?"},
             {"id": 2, "prompt": tiny.LONG_QUESTION, "choices": TASK_CHOICES},
             {"id": 3, "prompt": tiny.LOOP_QUESTION, "schema": TASK_SCHEMA}]
    tasks.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "results.jsonl"
    args = ["batch", str(tasks), "-o", str(out), "--model", tiny_r1, "--schema", json.dumps(FLAG_SCHEMA),
            "-n", "2", "--parallel", "2", "--seed", "3", "--max-tokens", "300"]
    first = run_ponder(*args, timeout=300)
    assert first.returncode == 0, first.stderr
    results = results_of(out)
    assert sorted(results) == [1, 2, 3]
    expected = {1: ("schema", FLAG_SCHEMA), 2: ("choices", {"enum": TASK_CHOICES}), 3: ("schema", TASK_SCHEMA)}
    for key, (kind, schema) in expected.items():
        assert results[key]["constraint"] == kind
        assert len(results[key]["samples"]) == 2
        for sample in results[key]["samples"]:
            assert sample["finish_reason"] == "stop", sample
            jsonschema.validate(sample["parsed"], schema)
            assert sample["parsed"] == (json.loads(sample["answer"]) if kind == "schema" else sample["answer"])

    # A rerun resumes from the file: its lines with "parsed" are read back as done, only the new task runs.
    kept = out.read_bytes()
    tasks.write_text(tasks.read_text() + json.dumps({"id": 4, "prompt": "What is 12*7?"}) + "\n")
    second = run_ponder(*args, timeout=300)
    assert second.returncode == 0, second.stderr
    assert b"resuming: 3 of 4 tasks" in second.stderr
    assert out.read_bytes().startswith(kept)
    new = results_of(out)[4]
    assert out.read_bytes().count(b"\n") == 4
    for sample in new["samples"]:
        jsonschema.validate(sample["parsed"], FLAG_SCHEMA)


def test_a_sample_cut_off_mid_document_has_no_parsed_and_the_batch_says_so(smollm2):
    task = json.dumps({"id": "a", "prompt": "Pick a color."}).encode()
    out = run_ponder("batch", "--model", smollm2, "--schema", json.dumps(FLAG_SCHEMA), "--max-tokens", "3",
                     stdin=task, timeout=300)
    assert out.returncode == 0, out.stderr  # a result like any other: the sample says why it has no value
    (result,) = map(json.loads, out.stdout.decode().splitlines())
    assert result["constraint"] == "schema"
    (sample,) = result["samples"]
    assert sample["finish_reason"] == "length" and "parsed" not in sample
    assert b'1 of 1 samples ended before their answer was complete (finish_reason length): no "parsed"' in out.stderr


def test_bad_constraints_are_refused_before_the_model_loads_and_the_results_file_is_untouched(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps(line) for line in [
        {"id": 1, "prompt": "a", "schema": {"type": "objec"}},
        {"id": 2, "prompt": "b", "schema": "name, age int"},
        {"id": 3, "prompt": "c", "schema": {"type": "array", "uniqueItems": True}},
        {"id": 4, "prompt": "d", "choices": ["yes", ""]},
        {"id": 5, "prompt": "e", "choices": ["yes"], "schema": {"type": "string"}},
        {"id": 6, "prompt": "f", "choices": ["fine"]},
    ]) + "\n")
    out = tmp_path / "results.jsonl"
    out.write_bytes(b"notes, not results\n")
    missing = str(tmp_path / "no-such-model.gguf")  # loading it would fail otherwise: the tasks are refused first
    refused = run_ponder("batch", str(tasks), "-o", str(out), "--model", missing)
    assert refused.returncode == 2
    error = refused.stderr.decode()
    assert "Traceback" not in error and "no-such-model" not in error
    for why in ['line 1 has a bad "schema": not a valid JSON Schema', 'line 2 has a "schema" that is a string',
                'line 3 has a bad "schema": ponder cannot constrain an answer to this',
                "line 4 has a choice that is empty", 'line 5 has both "schema" and "choices"']:
        assert why in error
    assert "line 6" not in error
    assert out.read_bytes() == b"notes, not results\n"
    flag = run_ponder("batch", str(tasks), "-o", str(out), "--model", missing, "--schema", '{"type": 5}')
    assert flag.returncode == 2 and b"--schema: not a valid JSON Schema" in flag.stderr
    deep = {"type": "string"}
    for _ in range(900):  # (jsonschema's own checks recurse: past Python's limit here)
        deep = {"type": "array", "items": deep}
    tasks.write_text(json.dumps({"id": 1, "prompt": "a", "schema": deep}) + "\n")
    nested = run_ponder("batch", str(tasks), "-o", str(out), "--model", missing)
    assert nested.returncode == 2 and b'line 1 has a' in nested.stderr and b"nested too deeply" in nested.stderr
    assert b"Traceback" not in nested.stderr
    assert out.read_bytes() == b"notes, not results\n"


def test_a_constraint_broken_after_generation_is_its_tasks_error_line_and_the_batch_goes_on():
    from ponder.cli.commands.batch_run import TaskLines

    written, said = [], []
    lines = TaskLines([{"id": "x", "prompt": "p"}], 2, written.append, said.append)
    assert lines.failure((0, 1), ConstraintBroken("the answer is not JSON"))
    (line,) = written
    assert line["id"] == "x"
    assert line["error"].startswith("sample 2 of 2: the answer is not JSON (this is a bug in ponder")
    assert lines.failures == 1 and said
