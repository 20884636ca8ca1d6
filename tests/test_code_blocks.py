"""Code answers for pipelines: CommonMark code blocks, `ask -x` streaming them, JSON listing them."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from ponder.code_blocks import CodeBlock, CodeStream, code_blocks, pick
from tests.support.cli import ponder_env, run_ponder, spawn_in_pty, strip_ansi

HELLO = "Write hello world in Python."
ANSWER = """Here is the script:

```python title="x"
import sys
print(sys.argv)
```

~~~~
```
a fence inside a longer one
```
~~~~

   ```sh
   ls -l
  pwd
   ```

- in a list:

  ```js
  x()
  ```

```rust
fn main() {"""


def test_fences_as_commonmark_defines_them():
    assert code_blocks(ANSWER) == [
        CodeBlock("python", "import sys\nprint(sys.argv)\n", True),  # an info string with attributes
        CodeBlock("", "```\na fence inside a longer one\n```\n", True),  # tildes, longer, containing backticks
        CodeBlock("sh", "ls -l\npwd\n", True),  # an indented fence: up to its indent removed
        CodeBlock("js", "x()\n", True),  # inside a list item
        CodeBlock("rust", "fn main() {", False),  # cut off
    ]


def test_pick_first_last_and_by_language():
    blocks = code_blocks(ANSWER)
    assert pick(blocks).lang == "python"
    assert pick(blocks, last=True).lang == "rust"
    assert pick(blocks, lang="JS").text == "x()\n"
    assert pick(blocks, lang="go") is None
    assert pick(code_blocks("No code here, just `inline` and\n\n    indented text\n")) is None


def test_the_stream_follows_the_first_block_line_by_line():
    stream = CodeStream()
    assert stream.feed("Here:\n\n```py") == ""
    assert stream.feed("thon\nprint(1)") == ""  # a line is given once it is complete
    assert stream.feed("\nprint(2)\n") == "print(1)\nprint(2)\n"
    assert stream.feed("```\n\n```\nsecond block\n```\n") == ""  # the first block only
    assert stream.found and stream.closed


@given(st.lists(st.integers(min_value=0, max_value=len(ANSWER)), max_size=12))
def test_the_stream_gives_the_same_code_however_the_answer_is_split(cuts):
    for lang in (None, "sh", "rust"):
        stream, code, start = CodeStream(lang), "", 0
        for cut in sorted(cuts) + [len(ANSWER)]:
            code += stream.feed(ANSWER[start:cut])
            start = cut
        code += stream.finish()
        whole = CodeStream(lang)
        assert code == whole.feed(ANSWER) + whole.finish()
        assert code == pick(code_blocks(ANSWER), lang).text


# --- ask -x, with the tiny R1 model ---------------------------------------------------------


def test_extract_prints_the_code_alone_in_a_pipe(tiny_r1):
    result = run_ponder("ask", "-x", "--model", tiny_r1, "--no-log", HELLO)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b'print("hello world")\n'
    assert b"The user wants the classic first program" in result.stderr  # reasoning: where ask sends it


def test_extract_on_a_terminal_prints_the_code_under_the_thought_summary(tiny_r1):
    child = spawn_in_pty("ask", "-x", "--model", tiny_r1, "--no-log", HELLO)
    screen = strip_ansi(child.read())
    child.close()
    assert child.exitstatus == 0
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[-1] == 'print("hello world")'
    assert lines[-2].startswith("Thought for ") and "classic first program" not in screen  # collapsed


def test_no_code_block_is_an_error_with_nothing_on_stdout(tiny_r1):
    result = run_ponder("ask", "-x", "--model", tiny_r1, "--no-log", "What is 12*7?")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().rstrip().endswith("ponder: error: the answer has no code block")
    other = run_ponder("ask", "--lang", "rust", "--model", tiny_r1, "--no-log", HELLO)
    assert other.returncode == 1 and other.stdout == b"" and b"the answer has no rust code block" in other.stderr
    both = run_ponder("ask", "-x", "--json", "--model", tiny_r1, HELLO)
    assert both.returncode == 2 and b"--json already lists every block" in both.stderr


def test_a_block_cut_off_prints_what_arrived_warns_and_fails(tiny_r1):
    result = run_ponder("ask", "-x", "--max-tokens", "20", "--hide-reasoning", "--model", tiny_r1, "--no-log", HELLO)
    assert result.returncode == 1
    assert result.stdout == b'print("hello'  # what arrived of the line
    assert b"the code block was cut off before its closing fence (--max-tokens raises the limit)" in result.stderr


def test_a_block_the_model_left_open_is_not_blamed_on_the_token_limit():
    from ponder.cli.views.code_output import CodeRenderer
    from ponder.cli.views.terminal import Terminal
    from ponder.events import Reply, Stats

    term = Terminal(io.BytesIO(), io.StringIO(), io.StringIO(), False, False, False, False)
    renderer = CodeRenderer(term, "collapse")
    answer = "Here:\n```bash\nwc -l *.py\n"  # no closing fence, and the model said it was done
    renderer.answer(answer)
    renderer.finish(Reply("", answer, "stop", Stats(0, 0, 9, 0.0, 0.0, 0.1, 0.2)))
    assert renderer.cut_off and term.stdout.getvalue() == "wc -l *.py\n"
    assert term.stderr.getvalue().endswith("cut off before its closing fence: the model ended its answer without "
                                           "closing it\n")


def test_last_and_by_language_pick_the_same_single_block(tiny_r1):
    for flags in (["--extract-last"], ["--lang", "python"], ["-x", "--lang", "PYTHON"]):
        result = run_ponder("ask", *flags, "--model", tiny_r1, "--no-log", HELLO)
        assert (result.returncode, result.stdout) == (0, b'print("hello world")\n'), flags


def test_json_lists_every_block_of_the_answer(tiny_r1):
    result = run_ponder("ask", "--json", "--model", tiny_r1, "--no-log", HELLO)
    assert json.loads(result.stdout)["code"] == [{"lang": "python", "text": 'print("hello world")\n'}]
    plain = run_ponder("ask", "--json", "--model", tiny_r1, "--no-log", "What is 12*7?")
    assert json.loads(plain.stdout)["code"] == []


def test_code_lines_reach_stdout_before_the_reply_ends(smollm2):
    """A long reply: the first code line is readable while the model is still writing."""
    child = subprocess.Popen(
        [sys.executable, "-m", "ponder", "ask", "-x", "--model", smollm2, "--no-log", "--temperature", "0",
         "--max-tokens", "400", "Write a long Python script that prints the numbers from 1 to 100, one per line, "
         "with a comment on every line. Use a code block."],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ponder_env())
    first_line = child.stdout.readline()
    still_running = child.poll() is None
    child.stdout.read()
    child.wait(timeout=120)
    assert first_line.strip(), "no code came at all"
    assert still_running  # the line came while ponder was still generating


def test_blocks_in_the_reasoning_are_never_taken():
    from ponder.cli.views.code_output import CodeRenderer
    from ponder.cli.views.terminal import Terminal
    from ponder.events import Reply, Stats

    term = Terminal(io.BytesIO(), io.StringIO(), io.StringIO(), False, False, False, False)
    renderer = CodeRenderer(term, "collapse")
    renderer.reasoning("Maybe:\n```python\nprint(1)\n```\n", 9)
    renderer.reasoning_done(0.1, 9)
    renderer.answer("\n\nJust say hello.")
    renderer.finish(Reply("Maybe:\n```python\nprint(1)\n```\n", "\n\nJust say hello.", "stop",
                          Stats(0, 9, 4, 0.0, 0.0, 0.1, 0.2)))
    assert term.stdout.getvalue() == ""
    assert renderer.error is not None and renderer.error.message == "the answer has no code block"
    assert "print(1)" in term.stderr.getvalue()  # shown as reasoning, in a pipe
