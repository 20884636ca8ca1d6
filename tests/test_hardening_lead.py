"""Hardening II, the pieces wired by the lead: a sweep's --plot never replaces a file it did not draw."""

from __future__ import annotations

import pytest

from ponder.cli.views.budget_curve import check_plot
from ponder.errors import UsageError

pytest.importorskip("matplotlib")


def test_plot_refuses_a_file_that_is_not_an_image_and_what_is_not_a_file(tmp_path):
    notes = tmp_path / "notes.svg"
    notes.write_text("my notes, not a drawing\n")
    with pytest.raises(UsageError, match="exists and is not an image"):
        check_plot(str(notes))
    assert notes.read_text() == "my notes, not a drawing\n"
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UsageError, match="not a regular file"):
        check_plot(str(tmp_path / "dir.png"))


def test_plot_may_draw_again_over_an_image_and_writes_through_a_link(tmp_path):
    from ponder.cli.views.budget_curve import BudgetSummary, plot

    earlier = tmp_path / "curve.svg"
    earlier.write_text('<?xml version="1.0"?><svg/>')
    check_plot(str(earlier))  # an image drawn before: a resumed sweep draws it again
    link = tmp_path / "link.svg"
    link.symlink_to(earlier)
    check_plot(str(link))
    summaries = [BudgetSummary(b, 2, acc, tokens, tokens, 1.0, 0) for b, acc, tokens in ((8, 0.5, 8.0), (None, 1.0, 40.0))]
    plot(summaries, str(link))
    assert link.is_symlink() and b"<svg" in earlier.read_bytes()


def test_an_error_line_quoting_outside_text_reaches_stderr_inert():
    import io

    from ponder.cli.app import _say
    from ponder.cli.views.terminal import Terminal

    term = Terminal(io.BytesIO(), io.StringIO(), io.StringIO(), False, False, False, False)
    _say("ponder: error: the server said: \x1b]0;pwned\x07\x1b[?1049h\n  hint: retry", term)
    said = term.stderr.getvalue()
    assert "\x1b" not in said and "\x07" not in said and "^[]0;pwned^G" in said
    assert said.endswith("\n  hint: retry\n")


def test_a_whole_last_line_that_is_no_result_is_refused_not_cut_and_a_failed_run_touches_nothing(tmp_path):
    """A complete JSON line without its newline was written so, not torn by a kill: never cut. And a torn
    line of ours is cut only when a new line is written: a run that fails first leaves the file as it was."""
    import os
    import subprocess
    import sys

    tasks = tmp_path / "t.jsonl"
    tasks.write_text('{"id": 1, "prompt": "hi"}\n{"id": 2, "prompt": "yo"}\n')
    kept = tmp_path / "kept.jsonl"
    kept.write_bytes(b'{"id": 1, "samples": [{"answer": "a"}]}\n{"id": 2, "samples": ["my note"], "note": "keep me"}')
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(b'{"id": 1, "samples": [{"answer": "a"}]}\n{"id": 2, "samples": [{"ans')
    env = {**os.environ, "PONDER_CONFIG": str(tmp_path / "c.toml"), "PONDER_DATA_DIR": str(tmp_path / "d")}
    for path, code in ((kept, 2), (torn, 1)):  # torn: resumable, but the server is not there
        before = path.read_bytes()
        run = subprocess.run([sys.executable, "-m", "ponder", "batch", str(tasks), "-o", str(path), "--server",
                              "http://127.0.0.1:9/v1", "--timeout", "5"], capture_output=True, text=True, env=env)
        assert run.returncode == code, run.stderr
        assert path.read_bytes() == before, run.stderr


def test_a_partial_echo_of_a_long_key_is_taken_out():
    from ponder.backends.server_auth import Redactor

    key = "sk-" + "".join(chr(97 + (i * 7) % 26) + str(i % 10) for i in range(750))  # a 1,503-character token
    said = Redactor(key)(f"bad key {key[100:400]}; expected {key[:12]}...{key[-9:]}; short {key[:5]}")
    assert key[100:400] not in said and key[:12] not in said and key[-9:] not in said
    assert said.startswith("bad key [API key]; expected [API key]...[API key]; short sk-")


def test_a_file_made_read_only_is_not_replaced(tmp_path):
    from ponder.files import FileError, write_text

    config = tmp_path / "config.toml"
    config.write_text("temperature = 0.5\n")
    config.chmod(0o444)
    with pytest.raises(FileError, match="read-only"):
        write_text(config, "temperature = 0.7\n")
    assert config.read_text() == "temperature = 0.5\n"


def test_a_sweep_naming_a_budget_twice_is_a_usage_error():
    from ponder.cli.commands.batch_command import _budgets

    assert _budgets("8, 16,none") == [8, 16, None]
    for twice in ("8,8", "none,4,NONE"):
        with pytest.raises(UsageError, match="twice"):
            _budgets(twice)


def test_a_resumed_chat_and_solves_panel_show_outside_text_inert():
    import io

    from rich.console import Console

    from ponder.cli.chat.repl import ChatRepl
    from ponder.cli.commands.solve_command import _answer_panel
    from ponder.cli.views.terminal import Terminal
    from ponder.history import Turn

    hostile = "ok \x1b[?1049h\x1b[?25l\x1b]0;pwned\x07"
    repl = ChatRepl.__new__(ChatRepl)  # only what replay and note use
    repl.console = Console(file=io.StringIO(), force_terminal=True, width=80)
    repl.chat = type("C", (), {"conversation": type("V", (), {"turns": [
        Turn(role="user", content=hostile), Turn(role="assistant", content=hostile, finish_reason="interrupted")]})()})()
    repl.replay()
    repl.note(f"server said: {hostile}")
    shown = repl.console.file.getvalue()
    assert "?1049h" in shown and "\x1b[?1049h" not in shown and "\x1b]0;" not in shown and "\x07" not in shown

    term = Terminal(io.BytesIO(), io.StringIO(), io.StringIO(), False, True, False, False)
    _answer_panel(type("R", (), {"term": term})(), "4" + hostile, subtitle=f"Votes: 4{hostile} ×2")
    shown = term.stdout.getvalue()
    assert "?25l" in shown and "\x1b[?25l" not in shown and "\x1b]0;" not in shown
