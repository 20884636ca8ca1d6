"""Bad input to `ponder ask`: one clear line on stderr, the right exit code, never a traceback."""

from __future__ import annotations

import os

import pytest

from tests.support.cli import ponder_env, run_ponder


def assert_clean_failure(result, code: int, message: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert message in err
    assert "Traceback" not in err
    assert result.stdout == b""
    return err


def test_missing_model_path(tmp_path):
    result = run_ponder("ask", "--model", str(tmp_path / "nope.gguf"), "hi")
    assert_clean_failure(result, 1, "model not found")


def test_no_model_at_all(tmp_path):
    # Nothing of the user's: an empty hub cache, home and config, so that a downloaded r1-7b cannot answer.
    env = ponder_env(HOME=str(tmp_path), HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
                     XDG_CACHE_HOME=str(tmp_path / "cache"), XDG_CONFIG_HOME=str(tmp_path / "config"),
                     PONDER_CONFIG=str(tmp_path / "config.toml"))
    result = run_ponder("ask", "hi", env=env)
    assert_clean_failure(result, 1, "no model given, and the default model r1-7b is not downloaded")


def test_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "notes.gguf"
    fake.write_text("just some text, not a model\n")
    assert_clean_failure(run_ponder("ask", "--model", str(fake), "hi"), 1, "is not a GGUF file")


def test_directory_instead_of_file(tmp_path):
    assert_clean_failure(run_ponder("ask", "--model", str(tmp_path), "hi"), 1, "is not a model directory")


def test_truncated_gguf(tmp_path, tiny_r1_random):
    data = open(tiny_r1_random, "rb").read()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    err = assert_clean_failure(run_ponder("ask", "--model", str(cut), "hi"), 1, "could not load")
    assert "truncated or corrupt" in err


@pytest.mark.parametrize("length", [10, 24, 100, 200])
def test_gguf_cut_inside_its_header(tmp_path, tiny_r1_random, length):
    cut = tmp_path / "cut.gguf"
    with open(tiny_r1_random, "rb") as f:
        cut.write_bytes(f.read(length))
    err = assert_clean_failure(run_ponder("ask", "--model", str(cut), "hi"), 1, "truncated")
    assert "unexpected error" not in err and len(err.splitlines()) <= 2  # the error and its hint


@pytest.mark.parametrize("name", ["model.gguf", "model"])
def test_a_fifo_as_model_is_refused_not_opened(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    # exit 1, as for any other path that holds no model; the timeout turns a hang into a failure
    result = run_ponder("ask", "--model", str(fifo), "hi", timeout=30)
    assert_clean_failure(result, 1, "is not a regular file or a directory")


def test_no_prompt_and_no_stdin(tiny_r1_random):
    assert_clean_failure(run_ponder("ask", "--model", tiny_r1_random), 2, "no prompt")


def test_empty_stdin(tiny_r1_random):
    assert_clean_failure(run_ponder("ask", "--model", tiny_r1_random, stdin=b"  \n"), 2, "no prompt")


def test_binary_stdin(tiny_r1_random):
    result = run_ponder("ask", "--model", tiny_r1_random, stdin=b"\x7fELF\x02\x01\x00\x00binary")
    assert_clean_failure(result, 2, "binary data")


def test_prompt_longer_than_context(tiny_r1_random):
    result = run_ponder("ask", "--model", tiny_r1_random, "--ctx", "256", "word " * 1000)
    err = assert_clean_failure(result, 2, "the prompt is 100")
    assert "context holds 256" in err and "--ctx" in err


@pytest.mark.parametrize(
    "option, value",
    [("--temperature", "-1"), ("--top-p", "0"), ("--top-p", "1.5"), ("--max-tokens", "0"), ("--ctx", "-5")],
)
def test_bad_option_values_are_usage_errors(option, value, tiny_r1_random):
    result = run_ponder("ask", "--model", tiny_r1_random, option, value, "hi")
    err = result.stderr.decode()
    assert result.returncode == 2 and option in err and "Traceback" not in err


def test_show_and_hide_reasoning_together(tiny_r1_random):
    result = run_ponder("ask", "--model", tiny_r1_random, "--show-reasoning", "--hide-reasoning", "hi")
    assert_clean_failure(result, 2, "cannot be used together")


def test_debug_shows_the_traceback(tmp_path):
    result = run_ponder("--debug", "ask", "--model", str(tmp_path / "nope.gguf"), "hi")
    assert result.returncode == 1
    assert b"Traceback" in result.stderr and b"model not found" in result.stderr
    via_env = run_ponder("ask", "--model", str(tmp_path / "nope.gguf"), "hi", env=ponder_env(PONDER_DEBUG="1"))
    assert b"Traceback" in via_env.stderr


def test_help_and_version():
    result = run_ponder("--help")
    assert result.returncode == 0 and b"ask" in result.stdout
    assert run_ponder("--version").stdout.startswith(b"ponder ")
