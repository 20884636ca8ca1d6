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
