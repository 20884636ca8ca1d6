"""Running the real `ponder` program as a user would: in a pipe, or under a pseudo-terminal."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def ponder_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_")}
    env.update(extra)
    return env


def run_ponder(*args: str, stdin: bytes | None = None, env: dict | None = None, timeout: float = 120):
    """`ponder ARGS` with stdout and stderr as pipes. stdin: bytes piped in, or /dev/null."""
    return subprocess.run(
        [sys.executable, "-m", "ponder", *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        env=env or ponder_env(),
        timeout=timeout,
    )


def spawn_in_pty(*args: str, env: dict | None = None, cols: int = 100, rows: int = 40):
    """`ponder ARGS` under a real pseudo-terminal (pexpect)."""
    import pexpect

    return pexpect.spawn(
        sys.executable,
        ["-m", "ponder", *args],
        env=env or ponder_env(TERM="xterm-256color"),
        dimensions=(rows, cols),
        encoding="utf-8",
        codec_errors="replace",
        timeout=60,
    )


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def final_screen(*args: str, cols: int = 100, rows: int = 40, scrollback: bool = False) -> str:
    """Run ponder in a tmux pane and return what the screen shows once it has finished."""
    if not shutil.which("tmux"):
        import pytest

        pytest.skip("tmux is not installed")
    session = f"ponder-test-{time.monotonic_ns()}"
    command = " ".join([sys.executable, "-m", "ponder", *(f"'{a}'" for a in args)]) + "; echo EXIT=$?; sleep 30"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", str(cols), "-y", str(rows), command],
        check=True,
        env=ponder_env(TERM="xterm-256color"),
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-J", *(["-S", "-"] if scrollback else []), "-t", session],
                capture_output=True, text=True,
            ).stdout
            if "EXIT=" in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError("ponder did not finish:\n" + screen)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
