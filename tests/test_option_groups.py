"""Option groups (ponder.cli.commands.options): each block of options that ask, chat, solve and batch share
is declared once, and reaches every command that takes it, with the same names, flags, defaults and help."""

from __future__ import annotations

from dataclasses import dataclass, fields

import pytest
import typer
from typer.testing import CliRunner

from ponder.cli.app import app
from ponder.cli.commands.options import (AnswerShape, Display, ModelChoice, Output, Sampling, Thinking, option,
                                         option_groups)

DECLARED = {  # what each command takes; chat prints no stats or JSON, batch shows no reasoning
    "ask": {ModelChoice, Sampling, Thinking, Display, Output, AnswerShape},
    "chat": {ModelChoice, Sampling, Thinking, Display},
    "solve": {ModelChoice, Sampling, Thinking, Display, Output},
    "batch": {ModelChoice, Sampling, Thinking, AnswerShape},
}


def _params(command: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


def _shape(param) -> tuple:
    """What a user sees of an option: its flags, default, environment variable, help, whether it is a flag."""
    return (tuple(param.opts), param.default, param.envvar, param.help, param.is_flag)


@pytest.mark.parametrize("command", sorted(DECLARED))
def test_each_command_takes_its_groups_whole(command):
    params = _params(command)
    assert set(_groups_of(command)) == DECLARED[command]
    for group in DECLARED[command]:
        for field in fields(group):
            assert field.name in params, f"{command} lacks --{field.name} of {group.__name__}"
    for group in {ModelChoice, Sampling, Thinking, Display, Output, AnswerShape} - DECLARED[command]:
        assert not any(f.name in params for f in fields(group))


def _groups_of(command: str) -> tuple:
    from ponder.cli.commands import ask_command, batch_command, chat_command, solve_command

    modules = {"ask": ask_command, "chat": chat_command, "solve": solve_command, "batch": batch_command}
    return getattr(modules[command], command).option_groups


def test_a_group_option_is_the_same_on_every_command():
    for group in (ModelChoice, Sampling, Thinking, Display, Output):
        takers = [c for c in DECLARED if group in DECLARED[c]]
        for field in fields(group):
            if (group, field.name) == (Thinking, "think_budget"):
                continue  # batch's takes a list of budgets: its own declaration (checked below)
            shapes = {c: _shape(_params(c)[field.name]) for c in takers}
            assert len(set(shapes.values())) == 1, shapes
            assert shapes[takers[0]][0][0] == field.metadata["option"].param_decls[0]


def test_batch_declares_its_own_think_budget_once():
    batch = [p for p in typer.main.get_command(app).commands["batch"].params if p.name == "think_budget"]
    ask = _params("ask")["think_budget"]
    assert len(batch) == 1 and batch[0].opts == ask.opts == ["--think-budget"]
    assert "several" in batch[0].help and "several" not in ask.help


# --- the decorator, on a tiny app of the test's own ------------------------------------------------


@dataclass(frozen=True)
class WiderSampling(Sampling):
    """Sampling with one option more, as a later change might add."""

    min_p: float = option(0.0, "--min-p", help="Least probability a token keeps, relative to the likeliest.")


def _tiny_app(seen: dict) -> typer.Typer:
    tiny = typer.Typer()

    @tiny.command("one")
    @option_groups
    def one(invocation: typer.Context, word: str = typer.Argument("x"), *, sampling: WiderSampling,
            model: ModelChoice, loud: bool = typer.Option(False, "--loud")) -> None:
        seen["one"] = (word, sampling, model, loud, invocation.get_parameter_source("min_p").name)

    @tiny.command("two")
    @option_groups
    def two(*, sampling: WiderSampling, thinking: Thinking) -> None:
        seen["two"] = (sampling, thinking)

    return tiny


def test_an_option_added_to_a_group_reaches_every_command_that_takes_it():
    seen: dict = {}
    tiny = _tiny_app(seen)
    runner = CliRunner()
    for command in ("one", "two"):
        shown = runner.invoke(tiny, [command, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0 and "--min-p" in shown.output and "--temperature" in shown.output
    assert runner.invoke(tiny, ["two", "--min-p", "0.05", "--no-think"]).exit_code == 0
    sampling, thinking = seen["two"]
    assert sampling.min_p == 0.05 and sampling.temperature == Sampling.__dataclass_fields__["temperature"].metadata[
        "option"].default
    assert thinking == Thinking(think_budget=None, no_think=True, budget_message=None, on_loop="answer")


def test_values_arrive_in_the_groups_and_sources_are_still_known():
    seen: dict = {}
    result = CliRunner().invoke(_tiny_app(seen), ["one", "hello", "-m", "some.gguf", "-t", "4", "--ctx", "4096",
                                                 "--server", "http://127.0.0.1:9/v1", "--timeout", "5",
                                                 "--model-kind", "plain", "--seed", "7", "--min-p", "0.1", "--loud"])
    assert result.exit_code == 0, result.output
    word, sampling, model, loud, source = seen["one"]
    assert (word, loud, source) == ("hello", True, "COMMANDLINE")
    assert model == ModelChoice(model="some.gguf", backend="auto", ctx=4096, threads=4, server="http://127.0.0.1:9/v1",
                                timeout=5.0, model_kind="plain")
    assert (sampling.seed, sampling.min_p) == (7, 0.1)


def test_defaults_from_a_default_map_fill_the_groups():
    """The config file reaches commands as click's default_map, keyed by option name (ponder.cli.app)."""
    seen: dict = {}
    result = CliRunner().invoke(_tiny_app(seen), ["one"], default_map={"one": {"min_p": 0.2, "backend": "mlx"}})
    assert result.exit_code == 0, result.output
    _, sampling, model, _, source = seen["one"]
    assert (sampling.min_p, model.backend, source) == (0.2, "mlx", "DEFAULT_MAP")


def test_a_command_may_declare_one_of_a_groups_options_itself():
    seen: dict = {}
    tiny = typer.Typer()

    @tiny.command()
    @option_groups
    def sweep(*, think_budget: str = typer.Option("none", "--think-budget", help="A list."), thinking: Thinking):
        seen["sweep"] = (think_budget, thinking)

    result = CliRunner().invoke(tiny, ["--think-budget", "256,none", "--on-loop", "stop"])
    assert result.exit_code == 0, result.output
    assert seen["sweep"] == ("256,none", Thinking(think_budget="256,none", no_think=False, budget_message=None,
                                                   on_loop="stop"))


def test_two_options_of_one_name_are_refused_when_the_command_is_declared():
    with pytest.raises(TypeError, match="same name"):
        @option_groups
        def clash(*, sampling: Sampling, wider: WiderSampling) -> None:
            pass
