"""Settings from the config file, flags and chat `/set`: one set of rules, flags over the file,
and a broken file that `ponder config` can still show and repair."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.cli import ponder_env, run_ponder

import tomllib

R1_REASONING = "Okay, 12 times 7. 10*7 = 70 and 2*7 = 14, so 70 + 14 = 84."


@pytest.fixture
def config(tmp_path):
    """A config file of the test's own, and the environment that points ponder at it."""
    path = tmp_path / "config.toml"
    return SimpleNamespace(path=path, env=ponder_env(PONDER_CONFIG=str(path)))


# --- reasoning: flags beat the file --------------------------------------------------------


@pytest.mark.parametrize("file_says, flags, shown", [
    ("hide", ["--show-reasoning"], True),
    ("hide", ["--reasoning", "show"], True),
    ("show", ["--hide-reasoning"], False),
    ("show", ["--reasoning", "hide"], False),
])
def test_a_reasoning_flag_beats_the_config_file(config, tiny_r1, file_says, flags, shown):
    config.path.write_text(f'reasoning = "{file_says}"\n')
    result = run_ponder("ask", "--model", tiny_r1, *flags, "What is 12*7?", env=config.env)
    assert result.returncode == 0, result.stderr
    assert (R1_REASONING in result.stderr.decode()) is shown


@pytest.mark.parametrize("flags, message", [
    (["--show-reasoning", "--hide-reasoning"], "cannot be used together"),
    (["--reasoning", "hide", "--show-reasoning"], "--show-reasoning contradicts --reasoning hide"),
    (["--hide-reasoning", "--reasoning", "collapse"], "--hide-reasoning contradicts --reasoning collapse"),
])
def test_contradicting_reasoning_flags_are_usage_errors(config, flags, message):
    config.path.write_text('reasoning = "show"\n')
    result = run_ponder("ask", *flags, "hi", env=config.env)
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["ask", "chat", "solve"])
def test_every_command_that_shows_reasoning_takes_the_one_option(config, command):
    result = run_ponder(command, "--reasoning", "loud", env=config.env)
    err = result.stderr.decode()
    assert result.returncode == 2 and "--reasoning" in err and all(m in err for m in ("show", "collapse", "hide"))


# --- one validator for flags, the file and chat /set ------------------------------------------


@pytest.mark.parametrize("key, text", [
    ("temperature", "inf"), ("temperature", "nan"), ("temperature", "-inf"), ("temperature", "-0.1"),
    ("top_p", "nan"), ("top_p", "inf"), ("top_p", "0"), ("top_p", "1.5"),
    ("max_tokens", "0"), ("max_tokens", "1.5"), ("seed", "1.5"), ("seed", "inf"), ("seed", "-3"), ("seed", "4294967296"),
])
def test_one_validator_refuses_bad_sampling_values(key, text):
    from ponder.errors import UsageError
    from ponder.settings import parse

    with pytest.raises(UsageError, match=f"^{key} must be"):
        parse(key, text)


@pytest.mark.parametrize("option, value", [("--temperature", "inf"), ("--temperature", "nan"), ("--top-p", "nan")])
def test_non_finite_flags_are_usage_errors(tmp_path, option, value):
    result = run_ponder("ask", "--model", str(tmp_path / "none.gguf"), f"{option}={value}", "hi")
    err = result.stderr.decode()
    assert result.returncode == 2 and option in err and "finite" in err and "Traceback" not in err


@pytest.mark.parametrize("line", ["/set temperature nan", "/set temperature inf", "/set top_p nan",
                                  "/set max_tokens 0", "/set seed 1.5", "/set seed -3"])
def test_chat_set_refuses_what_the_validator_refuses(line):
    from ponder.cli.chat.slash_commands import run_command
    from ponder.events import GenerationParams

    notes = []
    repl = SimpleNamespace(run=SimpleNamespace(params=GenerationParams()),
                           note=lambda text, style="dim": notes.append((text, style)))
    run_command(repl, line)
    assert repl.run.params == GenerationParams()
    assert len(notes) == 1 and notes[0][1] == "red" and "must be" in notes[0][0]


def test_chat_set_accepts_good_values():
    from ponder.cli.chat.slash_commands import run_command
    from ponder.events import GenerationParams

    repl = SimpleNamespace(run=SimpleNamespace(params=GenerationParams()), note=lambda text, style="dim": None)
    for line in ("/set temperature 0", "/set top-p 1", "/set max_tokens 64", "/set seed 7", "/set seed none"):
        run_command(repl, line)
    assert repl.run.params == GenerationParams(temperature=0.0, top_p=1.0, max_tokens=64, seed=None)


# --- the config file: TOML in, TOML out, and repairable ----------------------------------------


@pytest.mark.parametrize("text", ["inf", "nan", "-inf", "Infinity"])
def test_config_set_refuses_non_finite_values_and_leaves_the_file(config, text):
    config.path.write_text('temperature = 0.7\n')
    result = run_ponder("config", "set", "--", "temperature", text, env=config.env)
    err = result.stderr.decode()
    assert result.returncode == 2 and "temperature must be" in err and "Traceback" not in err
    assert config.path.read_text() == 'temperature = 0.7\n'


def test_config_file_is_written_as_toml(config):
    model = 'C:\\models\\"odd" name é.gguf'
    for key, value in (("model", model), ("temperature", "1"), ("max_tokens", "512"), ("reasoning", "show")):
        assert run_ponder("config", "set", key, value, env=config.env).returncode == 0
    assert tomllib.loads(config.path.read_text()) == {"model": model, "temperature": 1.0, "max_tokens": 512,
                                                      "reasoning": "show"}


def test_an_infinite_temperature_in_the_file_is_shown_and_repaired(config):
    config.path.write_text('model = "m.gguf"\ntemperature = inf\nreasoning = "hide"\n')  # valid TOML

    ask = run_ponder("ask", "hi", env=config.env)
    err = ask.stderr.decode()
    assert ask.returncode == 2 and "Traceback" not in err
    assert f"temperature in {config.path} must be a finite number, not inf" in err

    show = run_ponder("config", "show", env=config.env)
    out = show.stdout.decode()
    assert "model = m.gguf" in out and "reasoning = hide" in out
    assert "temperature = inf  # must be a finite number, not inf" in out
    assert show.returncode == 2 and "Traceback" not in show.stderr.decode()

    fixed = run_ponder("config", "set", "temperature", "0.5", env=config.env)
    assert fixed.returncode == 0, fixed.stderr
    assert tomllib.loads(config.path.read_text()) == {"model": "m.gguf", "temperature": 0.5, "reasoning": "hide"}
    assert run_ponder("config", "show", env=config.env).returncode == 0


def test_the_file_an_older_ponder_wrote_is_shown_and_repaired(config):
    """`temperature = Infinity` (JSON's spelling) is not TOML: the file as a whole does not parse."""
    config.path.write_text('# ponder settings\nmodel = "m.gguf"\ntemperature = Infinity\n')
    ask = run_ponder("ask", "hi", env=config.env)
    assert ask.returncode == 2 and "temperature in" in ask.stderr.decode() and "Traceback" not in ask.stderr.decode()
    show = run_ponder("config", "show", env=config.env)
    assert show.returncode == 2 and "model = m.gguf" in show.stdout.decode()
    assert "temperature" in show.stdout.decode() + show.stderr.decode()
    fixed = run_ponder("config", "set", "temperature", "0.5", env=config.env)
    assert fixed.returncode == 0, fixed.stderr
    assert tomllib.loads(config.path.read_text()) == {"model": "m.gguf", "temperature": 0.5}
    assert not list(config.path.parent.glob("*.tmp"))  # written through a temporary file, replaced at once


def test_a_file_that_is_not_key_value_lines_is_left_alone(config):
    config.path.write_text('model = "m.gguf"\n[[[\n')
    result = run_ponder("config", "set", "temperature", "0.5", env=config.env)
    assert result.returncode == 2 and "not valid TOML" in result.stderr.decode()
    assert "fix it by hand" in result.stderr.decode()
    assert config.path.read_text() == 'model = "m.gguf"\n[[[\n'


def test_config_set_keeps_the_other_settings_even_broken_ones(config):
    config.path.write_text('model = "m.gguf"\ntop_p = 3\ncolour = "blue"\n')
    result = run_ponder("config", "set", "temperature", "0.5", env=config.env)
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert "top_p" in err and "colour" in err  # still wrong, and said so
    assert tomllib.loads(config.path.read_text()) == {"model": "m.gguf", "top_p": 3, "colour": "blue",
                                                      "temperature": 0.5}
    show = run_ponder("config", "show", env=config.env).stdout.decode()
    assert "top_p = 3  # must be a number in (0, 1], not 3\n" in show and "colour = blue  # is not a setting" in show


def test_a_line_that_is_not_toml_is_reported_and_kept_as_written(config):
    config.path.write_text('model = "m.gguf"\ntemperature = 0.6\ntop_p = 0.9.5\n')
    for args in (["config", "show"], ["ask", "hi"]):
        result = run_ponder(*args, env=config.env)
        out, err = result.stdout.decode(), result.stderr.decode()
        assert result.returncode == 2 and "Traceback" not in err, args
        assert "top_p" in out + err and "is not valid TOML" in out + err, args
    result = run_ponder("config", "set", "temperature", "0.5", env=config.env)
    assert result.returncode == 0 and "top_p" in result.stderr.decode()  # still wrong, and said so
    assert config.path.read_text().endswith('model = "m.gguf"\ntemperature = 0.5\ntop_p = 0.9.5\n')


def test_a_broken_file_does_not_break_commands_that_do_not_use_it(config, tmp_path):
    config.path.write_text("top_p = 3\n")
    result = run_ponder("history", env={**config.env, "PONDER_DATA_DIR": str(tmp_path / "data")})
    assert result.returncode == 0, result.stderr


def test_saved_settings_load_back(tmp_path):
    from ponder.settings import edit, load

    settings = {"model": "a/b", "backend": "mlx", "temperature": 0.0, "top_p": 1.0, "max_tokens": 1,
                "reasoning": "collapse"}
    path = Path(tmp_path / "sub" / "config.toml")
    for key, value in settings.items():
        assert edit(key, value, path) == path
    assert load(path) == settings
