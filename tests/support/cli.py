"""Running the real `ponder` program as a user would: in a pipe, or under a pseudo-terminal."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


# Where the ponder runs of a test session keep their history: never the user's own.
TEST_DATA_DIR = os.path.join(tempfile.gettempdir(), f"ponder-test-data-{os.getpid()}")


def ponder_env(**extra: str) -> dict[str, str]:
    # Nor the user's API key or proxies: servers in tests are on loopback.
    dropped = ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PONDER_") and k not in dropped}
    # Never the user's own history, config file or downloaded models (tests pass their own).
    env["PONDER_DATA_DIR"] = TEST_DATA_DIR
    env["PONDER_CONFIG"] = os.path.join(TEST_DATA_DIR, "config.toml")
    env["HF_HUB_CACHE"] = os.path.join(TEST_DATA_DIR, "hub")
    env["OLLAMA_MODELS"] = os.path.join(TEST_DATA_DIR, "ollama")
    env["PONDER_CACHE_DIR"] = os.path.join(TEST_DATA_DIR, "prompt-cache")  # nor the user's prompt cache
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


def tmux_command(args, env: dict) -> str:
    """A shell command running ponder with exactly `env`: a tmux server already running
    would otherwise start it with the server's environment, not the test's."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())
    return f"env -i {assignments} " + " ".join(shlex.quote(a) for a in [sys.executable, "-m", "ponder", *args])


def final_screen(*args: str, cols: int = 100, rows: int = 40, scrollback: bool = False) -> str:
    """Run ponder in a tmux pane and return what the screen shows once it has finished."""
    if not shutil.which("tmux"):
        import pytest

        pytest.skip("tmux is not installed")
    session = f"ponder-test-{time.monotonic_ns()}"
    command = tmux_command(args, ponder_env(TERM="xterm-256color")) + "; echo EXIT=$?; sleep 30"
    new_tmux_session(session, cols, rows, command)
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


def new_tmux_session(name: str, cols: int, rows: int, command: str) -> None:
    """A detached tmux session. Tried again if the server was just exiting (the previous test
    killed its last session) when this one connected."""
    for _ in range(3):
        started = subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(cols), "-y", str(rows), command],
                                 capture_output=True, text=True)
        if started.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"tmux new-session failed: {started.stderr.strip()}")


class TmuxSession:
    """`ponder ARGS` in a tmux pane, driven by keys as a person would (tmux is a real
    terminal emulator: it answers prompt_toolkit's cursor-position queries)."""

    def __init__(self, *args: str, env: dict | None = None, cols: int = 100, rows: int = 40):
        if not shutil.which("tmux"):
            import pytest

            pytest.skip("tmux is not installed")
        self.name = f"ponder-chat-{time.monotonic_ns()}"
        command = tmux_command(args, env or ponder_env(TERM="xterm-256color")) + "; echo EXIT=$?; sleep 60"
        new_tmux_session(self.name, cols, rows, command)

    def keys(self, *keys: str) -> None:
        """tmux key names (Enter, C-c, Escape…) and text; text is sent literally."""
        for key in keys:
            literal = not (key in ("Enter", "Escape", "Tab", "Up", "Down", "BSpace") or key.startswith(("C-", "M-")))
            subprocess.run(["tmux", "send-keys", "-t", self.name, *(["-l"] if literal else []), key], check=True)

    def line(self, text: str) -> None:
        self.keys(text, "Enter")

    def screen(self) -> str:
        """Scrollback and screen, each line's trailing blanks and the empty rows below removed."""
        text = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-", "-t", self.name],
                              capture_output=True, text=True).stdout
        return "\n".join(line.rstrip() for line in text.splitlines()).rstrip()

    def wait_for(self, pattern: str, timeout: float = 60, after: int = 0) -> str:
        """Wait until the screen (from character `after` of the scrollback) matches `pattern` (a regex)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen[after:]):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {pattern!r}; the screen:\n{self.screen()}")

    def pid(self) -> int:
        """The ponder process in the pane."""
        shell = subprocess.run(["tmux", "list-panes", "-t", self.name, "-F", "#{pane_pid}"],
                               capture_output=True, text=True, check=True).stdout.split()[0]
        children = subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True).stdout.split()
        return int(children[0])

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def piped_repl(model, lines: bytes, params=None):
    """The real chat REPL on a model loaded in-process, its input piped in and its output kept."""
    import io

    from ponder.cli.chat.repl import ChatRepl
    from ponder.cli.commands.model_run import Run
    from ponder.cli.views.terminal import Terminal
    from ponder.events import GenerationParams

    term = Terminal(io.BytesIO(lines), io.StringIO(), io.StringIO(), False, False, False, False)
    repl = ChatRepl(Run(term, "collapse", "text", params or GenerationParams()), log=False)
    repl.chat.use(model)
    return repl, term


def signal_when_said(code: str, args: list[str], marker: bytes, signum: int) -> tuple[int, str, str]:
    """Run `python -c code args` (a ponder held at some point, saying `marker` on stderr there), send `signum` once
    it has said it, and return (exit status, stdout, stderr). A pipe read: the test waits on the process, not a clock."""
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", code, *args], env=ponder_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGHUP)])
    try:
        seen = b""
        while marker not in seen:
            line = process.stderr.readline()
            assert line, f"ponder ended before it said {marker!r}: {seen.decode()}"
            seen += line
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out.decode(), (seen + err).decode()
