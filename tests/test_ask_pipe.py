"""`ponder ask` in a pipe, on real models: stdout carries the answer alone."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.cli import ANSI, ponder_env, run_ponder
from tests.support.tiny_r1 import TRAINING_PAIRS

R1_ANSWER = "12 × 7 = 84, so the answer is \\boxed{84}."
R1_REASONING = "Okay, 12 times 7. 10*7 = 70 and 2*7 = 14, so 70 + 14 = 84."


def test_smollm2_answers_real_text_on_stdout(smollm2):
    result = run_ponder("ask", "--model", smollm2, "--max-tokens", "40", "--seed", "1", "Say hello to me.")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert len(out.split()) >= 3  # real words from a real model
    assert not ANSI.search(out)
    assert b"Traceback" not in result.stderr


def test_r1_answer_alone_on_stdout_reasoning_on_stderr(tiny_r1):
    result = run_ponder("ask", "--model", tiny_r1, "What is 12*7?")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == R1_ANSWER + "\n"
    assert R1_REASONING in result.stderr.decode()
    assert not ANSI.search(result.stderr.decode())  # stderr is a pipe too: no dimming codes


def test_hide_reasoning_drops_it(tiny_r1):
    result = run_ponder("ask", "--model", tiny_r1, "--hide-reasoning", "What is 12*7?")
    assert result.returncode == 0
    assert result.stdout.decode() == R1_ANSWER + "\n"
    assert "10*7" not in result.stderr.decode()


def test_prompt_from_stdin_and_model_from_env(tiny_r1):
    result = run_ponder("ask", stdin=b"What is 2+2?\n", env=ponder_env(PONDER_MODEL=tiny_r1))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == "The answer is \\boxed{4}.\n"


def test_stats_on_stderr_count_the_real_tokens(tiny_r1):
    from ponder.backends.base import LoadOptions
    from ponder.backends.llamacpp import LlamaCppModel
    from ponder.events import Message
    from ponder.prompt import render_prompt

    model = LlamaCppModel(tiny_r1, LoadOptions(context=256))
    prompt = len(model.tokenize(render_prompt(model.info.chat, [Message("user", "What is 2+2?")])))
    reasoning, answer = TRAINING_PAIRS["What is 2+2?"].split("</think>")
    reasoning_tokens = len(model._tokenize(reasoning, add_bos=False)) + 1  # and the </think> token itself
    answer_tokens = len(model._tokenize(answer, add_bos=False))
    model.close()

    result = run_ponder("ask", "--model", tiny_r1, "--stats", "--hide-reasoning", "What is 2+2?")
    assert result.returncode == 0
    line = result.stderr.decode().strip().splitlines()[-1]
    assert line.startswith(
        f"prompt {prompt} tokens · reasoning {reasoning_tokens} tokens · answer {answer_tokens} tokens · first token "
    )
    assert re.search(r"decode \d+\.\d tokens/s · reasoning end: model( · speculation: .*)?$", line)
    assert result.stdout.decode() == "The answer is \\boxed{4}.\n"


def test_invalid_utf8_on_stdin_is_replaced_not_fatal(tiny_r1):
    result = run_ponder("ask", "--model", tiny_r1, "--max-tokens", "5", stdin=b"caf\xe9 \xff\xfe question")
    assert result.returncode == 3, result.stderr  # 5 tokens end it while thinking: no answer, said so
    assert b"ponder: no answer: the token budget ran out while the model was still thinking" in result.stderr
    assert b"not valid UTF-8" in result.stderr
    assert b"Traceback" not in result.stderr


def test_closed_pipe_exits_quietly(smollm2):
    script = (
        f'"{sys.executable}" -m ponder ask --model "{smollm2}" --max-tokens 400 --seed 3 '
        '"Write a long story about a dragon." | head -c 20; echo "status=${PIPESTATUS[0]}" >&2'
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, env=ponder_env(), timeout=120)
    assert len(result.stdout) == 20
    err = result.stderr.decode()
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception" not in err
    assert "status=141" in err
