"""Speculative decoding from the command line: --speculate, --draft, their config keys, the catalogue's draft
pairs and `pull --with-draft`, the figures in --stats and JSON, and the usage errors, with the real tiny R1
and SmolLM2 (a loopback hub plays Hugging Face for the catalogue's names)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ponder.cli.commands.speculation import PARALLEL_NOTE
from ponder.cli.views.show_reply import format_stats
from ponder.events import SpeculationStats, Stats
from tests.support.cli import ponder_env, run_ponder
from tests.support.hub import LocalHub

QUESTION = "What is 12*7?"
REPEATS = "Write the numbers from 1 to 30, comma separated, twice."  # SmolLM2 repeats itself: n-grams pay


def ask_json(model: str, *args: str, env: dict | None = None, prompt: str = QUESTION) -> tuple[dict, str]:
    result = run_ponder("ask", "-m", model, "--temperature", "0", "--max-tokens", "80", "--no-log", "--json", *args,
                        prompt, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr.decode()


def config(tmp_path: Path, text: str) -> dict:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return ponder_env(PONDER_CONFIG=str(path))


@pytest.mark.parametrize("which, prompt", [("tiny_r1", QUESTION), ("smollm2", REPEATS)])
def test_greedy_ngram_speculation_prints_what_no_speculation_prints(request, which, prompt):
    model = request.getfixturevalue(which)
    plain, _ = ask_json(model, "--speculate", "off", prompt=prompt)
    guessed, _ = ask_json(model, "--speculate", "ngram", prompt=prompt)
    assert (guessed["reasoning"], guessed["answer"]) == (plain["reasoning"], plain["answer"])
    assert plain["stats"]["speculation"] is None
    spec = guessed["stats"]["speculation"]
    assert set(spec) == {"drafted", "accepted", "calls"} and spec["drafted"] > 0 and 0 < spec["accepted"] <= spec["drafted"]
    generated = guessed["stats"]["reasoning_tokens"] + guessed["stats"]["answer_tokens"]
    # Each call gives the tokens it accepted and one more (the first token comes from the prompt's pass, and a
    # reply that stops drew its end token in a call: within one of the reply's tokens).
    assert abs(spec["calls"] + spec["accepted"] - generated) <= 1


def test_stats_line_and_json_carry_the_same_figures(smollm2):
    result = run_ponder("ask", "-m", smollm2, "--temperature", "0", "--max-tokens", "80", "--no-log", "--json",
                        "--stats", "--speculate", "ngram", REPEATS, timeout=300)
    spec = json.loads(result.stdout)["stats"]["speculation"]
    line = result.stderr.decode().strip().splitlines()[-1]
    shown = re.search(r"speculation: (\d+) of (\d+) drafted tokens accepted \((\d+)%\), ([\d.]+) tokens per model call$",
                      line)
    assert shown, line
    assert (int(shown[1]), int(shown[2])) == (spec["accepted"], spec["drafted"])
    assert float(shown[4]) == round((spec["calls"] + spec["accepted"]) / spec["calls"], 2) > 1


def test_stats_line_says_when_speculation_drafted_nothing_and_is_silent_when_off():
    stats = Stats(10, 0, 5, 0.1, 20.0, 0.0, 0.5)
    assert "speculation" not in format_stats(stats)
    quiet = format_stats(Stats(10, 0, 5, 0.1, 20.0, 0.0, 0.5, speculation=SpeculationStats(0, 0, 5)))
    assert quiet.endswith(" · speculation: nothing drafted")


def test_the_config_key_sets_the_mode_and_a_flag_beats_it(tmp_path, smollm2):
    env = config(tmp_path, 'speculate = "off"\n')
    off, _ = ask_json(smollm2, env=env, prompt=REPEATS)
    assert off["stats"]["speculation"] is None
    on, _ = ask_json(smollm2, "--speculate", "ngram", env=env, prompt=REPEATS)
    assert on["stats"]["speculation"]["drafted"] > 0 and on["answer"] == off["answer"]
    default, _ = ask_json(smollm2, prompt=REPEATS)  # auto: measured as it goes, so only its presence is certain
    assert default["stats"]["speculation"] is not None and default["answer"] == off["answer"]


def test_a_config_draft_is_used_only_when_the_mode_is_draft(tmp_path, tiny_r1):
    unused, _ = ask_json(tiny_r1, env=config(tmp_path, 'draft = "/no/such/draft.gguf"\n'))  # auto: never loaded
    assert unused["answer"] == "12 × 7 = 84, so the answer is \\boxed{84}."
    used = run_ponder("ask", "-m", tiny_r1, "--no-log", QUESTION,
                      env=config(tmp_path, 'draft = "/no/such/draft.gguf"\nspeculate = "draft"\n'))
    assert used.returncode == 1 and b"/no/such/draft.gguf" in used.stderr  # (the backend's: not found)


def test_a_draft_model_gives_the_same_text_with_its_figures(tiny_r1, tiny_r1_random, tmp_path):
    plain, _ = ask_json(tiny_r1, "--speculate", "off")
    for draft in (tiny_r1, tiny_r1_random):  # a good draft, and one that guesses nonsense
        drafted, _ = ask_json(tiny_r1, "--draft", draft)  # --draft alone: the mode is draft
        assert (drafted["reasoning"], drafted["answer"]) == (plain["reasoning"], plain["answer"])
        assert drafted["stats"]["speculation"]["drafted"] > 0
    by_config, _ = ask_json(tiny_r1, env=config(tmp_path, f'speculate = "draft"\ndraft = "{tiny_r1}"\n'))
    assert by_config["answer"] == plain["answer"] and by_config["stats"]["speculation"]["accepted"] > 0


NO_MODEL = "/no/such/model.gguf"


@pytest.mark.parametrize("args, message", [
    (["ask", "--speculate", "draft"], "--speculate draft needs a draft model"),
    (["ask", "--draft", "d.gguf", "--speculate", "ngram"], "--draft is for --speculate draft, not --speculate ngram"),
    (["ask", "--draft", "d.gguf", "--speculate", "off"], "--draft is for --speculate draft, not --speculate off"),
    (["solve", "-n", "3", "--draft", "d.gguf"], "--draft: parallel samples run without speculation (3 at once"),
    (["solve", "-n", "4", "-P", "2", "--speculate", "draft"], "--speculate draft: parallel samples run without"),
    (["ask", "--server", "http://127.0.0.1:9/v1", "--draft", "d.gguf"], "--draft is for a local model"),
    (["chat", "--server", "http://127.0.0.1:9/v1", "--speculate", "ngram"], "--speculate ngram is for a local model"),
    (["ask", "--speculate", "sometimes"], "'sometimes' is not one of 'auto', 'ngram', 'draft', 'off'"),
])
def test_impossible_speculation_is_a_usage_error_before_the_model_loads(args, message):
    command, *rest = args
    prompt = [] if command == "chat" else ["hi"]  # (chat reads its messages from stdin)
    result = run_ponder(command, "-m", NO_MODEL, *rest, *prompt, stdin=b"hi\n" if command == "chat" else None)
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err, err
    assert "Traceback" not in err and "model not found" not in err and "connect" not in err
    if "sometimes" not in message:  # (that one is click's usage message)
        assert len(err.strip().splitlines()) <= 2


def test_batch_with_a_draft_for_parallel_samples_is_refused_before_loading(tmp_path):
    tasks = b'{"id": 1, "prompt": "hi"}\n'
    result = run_ponder("batch", "-m", NO_MODEL, "-n", "2", "--draft", "d.gguf", stdin=tasks)
    assert result.returncode == 2 and b"--draft: parallel samples run without speculation (2 at once" in result.stderr


def test_a_draft_in_the_other_engines_format_is_refused(tmp_path, tiny_r1):
    mlx = tmp_path / "mlx-model"
    mlx.mkdir()
    (mlx / "config.json").write_text("{}")
    result = run_ponder("ask", "-m", tiny_r1, "--draft", str(mlx), "hi")
    err = result.stderr.decode()
    assert result.returncode == 2 and "is an MLX model, but the model runs on llama.cpp" in err, err


def test_parallel_samples_run_without_speculation_and_say_so(tiny_r1):
    result = run_ponder("solve", "-m", tiny_r1, "-n", "2", "--speculate", "ngram", "--json", "--max-tokens", "80",
                        "What is 2+2?", timeout=300)
    assert PARALLEL_NOTE in result.stderr.decode()
    samples = json.loads(result.stdout)["samples"]
    assert [s["stats"]["speculation"] for s in samples] == [None, None]  # the batch decoder's samples
    alone = run_ponder("solve", "-m", tiny_r1, "-n", "2", "-P", "1", "--speculate", "ngram", "--json",
                       "--max-tokens", "80", "What is 2+2?", timeout=300)
    assert PARALLEL_NOTE not in alone.stderr.decode()
    assert all(s["stats"]["speculation"]["calls"] > 0 for s in json.loads(alone.stdout)["samples"])


def test_batch_lines_carry_the_figures(tiny_r1):
    tasks = b'{"id": 1, "prompt": "What is 12*7?"}\n'
    result = run_ponder("batch", "-m", tiny_r1, "--temperature", "0", "--speculate", "ngram", stdin=tasks, timeout=300)
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["samples"][0]["stats"]["speculation"]
    assert spec["drafted"] > 0 and spec["calls"] > 0
    off = run_ponder("batch", "-m", tiny_r1, "--speculate", "off", stdin=tasks, timeout=300)
    assert json.loads(off.stdout)["samples"][0]["stats"]["speculation"] is None


def test_chat_takes_the_flag(tiny_r1):
    outputs = [run_ponder("chat", "-m", tiny_r1, "--temperature", "0", "--no-log", "--speculate", mode,
                          stdin=b"What is 12*7?\n", timeout=300) for mode in ("off", "ngram")]
    assert outputs[0].returncode == outputs[1].returncode == 0, outputs[1].stderr
    assert outputs[0].stdout == outputs[1].stdout and b"84" in outputs[0].stdout


# --- the catalogue's pairs, through a loopback hub ------------------------------------------------------------


@pytest.fixture
def hub_env(tiny_r1, tmp_path):
    """A hub serving the tiny R1 under the names of r1-7b and of its draft r1-1.5b."""
    from ponder.catalogue import CATALOGUE

    hub = LocalHub()
    for alias in ("r1-7b", "r1-1.5b"):
        artifact = CATALOGUE[alias]
        hub.add(artifact.repo, artifact.filename, Path(tiny_r1))
    yield hub, ponder_env(HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_DISABLE_PROGRESS_BARS="1",
                          PONDER_CONFIG=str(tmp_path / "config.toml"))
    hub.close()


def test_pull_with_draft_fetches_the_pair_and_draft_mode_finds_it(hub_env, tiny_r1):
    hub, env = hub_env
    missing = run_ponder("ask", "-m", "r1-7b", "--speculate", "draft", "hi", env=env)
    assert missing.returncode == 1 and b"r1-7b is not downloaded" in missing.stderr
    refused = run_ponder("pull", "r1-1.5b", "--with-draft", env=env)
    assert refused.returncode == 2 and b"the catalogue pairs no draft with r1-1.5b" in refused.stderr
    assert hub.requests == []  # refused before any download
    model_only = run_ponder("pull", "r1-7b", env=env)
    assert model_only.returncode == 0, model_only.stderr
    no_draft = run_ponder("ask", "-m", "r1-7b", "--speculate", "draft", "hi", env=env)
    assert no_draft.returncode == 1 and b"the draft model r1-1.5b is not downloaded" in no_draft.stderr
    assert b"hint: ponder pull r1-1.5b" in no_draft.stderr
    pulled = run_ponder("pull", "r1-7b", "--with-draft", env=env)
    assert pulled.returncode == 0, pulled.stderr
    paths = [Path(line) for line in pulled.stdout.decode().splitlines()]
    assert [p.name for p in paths] == ["DeepSeek-R1-Distill-Qwen-7B-Q4_K_M.gguf", "DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf"]
    assert all(p.read_bytes() == Path(tiny_r1).read_bytes() for p in paths)
    for model in ("r1-7b", str(paths[0])):  # by alias, and by the file's path
        drafted, _ = ask_json(model, "--speculate", "draft", env=env)
        assert drafted["answer"] == "12 × 7 = 84, so the answer is \\boxed{84}."
        assert drafted["stats"]["speculation"]["accepted"] > 0
