"""Pieces of the CLI that need no model: input assembly, completions, start-up, the registry."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ponder.cli.commands.user_input import user_prompt
from ponder.cli.views.terminal import Terminal
from ponder.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


def terminal_with_piped_stdin(data: bytes) -> Terminal:
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return Terminal(
        stdin=os.fdopen(read_end, "rb"), stdout=io.StringIO(), stderr=io.StringIO(),
        stdin_is_tty=False, stdout_is_tty=False, stderr_is_tty=False, color=False,
    )


def test_piped_text_and_question_share_the_user_turn():
    term = terminal_with_piped_stdin(b"Meeting notes: ship on Friday.\n")
    assert user_prompt("summarise this", term) == "Meeting notes: ship on Friday.\n\nsummarise this"


def test_question_alone_and_stdin_alone():
    assert user_prompt("  What is 2+2?  ", terminal_with_piped_stdin(b"")) == "What is 2+2?"
    assert user_prompt(None, terminal_with_piped_stdin(b"From a pipe\n")) == "From a pipe"


def test_nothing_at_all_is_a_usage_error():
    with pytest.raises(UsageError, match="no prompt"):
        user_prompt(None, terminal_with_piped_stdin(b"\n\n"))


def test_completions_are_current(tmp_path):
    from ponder.cli.completion import SHELLS, write_all

    write_all(tmp_path)
    for filename in SHELLS.values():
        committed = (ROOT / "completions" / filename).read_text()
        assert (tmp_path / filename).read_text() == committed, (
            f"completions/{filename} is stale: run `python -m ponder.cli.completion`"
        )


def test_bash_completion_completes_options_values_and_files(tmp_path):
    (tmp_path / "tasks.jsonl").write_text("")
    script = f"""
source {ROOT / 'completions' / 'ponder.bash'}
COMP_WORDS=(ponder ask --ba); COMP_CWORD=2; _ponder; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(ponder ask --backend ''); COMP_CWORD=3; _ponder; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(ponder a); COMP_CWORD=1; _ponder; echo "${{COMPREPLY[@]}}"
COMP_WORDS=(ponder batch {tmp_path}/ta); COMP_CWORD=2; _ponder; echo "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["--backend", "auto mlx llama.cpp", "ask", f"{tmp_path}/tasks.jsonl"]


def test_help_imports_no_inference_engine():
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ponder", "ask", "--help"], capture_output=True, text=True
    )
    assert probe.returncode == 0 and "--temperature" in probe.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in probe.stderr.splitlines() if "|" in line}
    assert imported.isdisjoint({"llama_cpp", "mlx", "mlx_lm", "transformers", "numpy", "jinja2", "rich"})


def test_plugin_backends_come_from_entry_points(tmp_path, monkeypatch):
    dist = tmp_path / "ponder_fake-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ponder-fake\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ponder.backends]\nfake = ponder_fake_backend:FakeBackend\n")
    (tmp_path / "ponder_fake_backend.py").write_text("class FakeBackend:\n    name = 'fake'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from ponder import backends

    backends.available.cache_clear()
    try:
        assert backends.available()["fake"] == "ponder_fake_backend:FakeBackend"
        assert backends.get_backend("fake").name == "fake"
        with pytest.raises(UsageError, match="unknown backend 'nope'"):
            backends.get_backend("nope")
    finally:
        backends.available.cache_clear()


def test_backend_selection_follows_the_model(tmp_path):
    from ponder.backends import select_backend
    from ponder.errors import ModelError, UsageError

    gguf = tmp_path / "model.bin"
    gguf.write_bytes(b"GGUF" + bytes(20))  # a GGUF by its magic, whatever its name
    mlx_dir = tmp_path / "mlx"
    mlx_dir.mkdir()
    (mlx_dir / "config.json").write_text("{}")
    assert select_backend(str(gguf)) == "llama.cpp"
    assert select_backend(str(tmp_path / "missing.gguf")) == "llama.cpp"
    assert select_backend(str(mlx_dir)) == "mlx"
    assert select_backend("mlx-community/DeepSeek-R1-Distill-Qwen-7B-4bit") == "mlx"  # a hub repo id
    assert select_backend(str(gguf), "llama.cpp") == "llama.cpp"
    assert select_backend(str(mlx_dir), "mlx") == "mlx"
    with pytest.raises(UsageError, match="is a GGUF file"):
        select_backend(str(gguf), "mlx")
    with pytest.raises(UsageError, match="is an MLX model directory"):
        select_backend(str(mlx_dir), "llama.cpp")
    with pytest.raises(UsageError, match="is an MLX model repo"):
        select_backend("mlx-community/x-4bit", "llama.cpp")
    with pytest.raises(ModelError, match="not a model directory"):
        select_backend(str(tmp_path))


def test_auto_prefers_mlx_only_on_apple_silicon(monkeypatch):
    from ponder import backends

    monkeypatch.setattr(backends, "apple_silicon", lambda: False)
    assert backends.default_backend() == "llama.cpp"
    monkeypatch.setattr(backends, "apple_silicon", lambda: True)
    assert backends.default_backend() == "mlx"  # mlx-lm is installed in the test environment
    assert backends.select_backend("./unknown-model") == "mlx"


def test_chat_completes_every_slash_command_the_chat_answers_to():
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from ponder.cli.chat.slash_commands import COMMANDS
    from ponder.cli.chat.line_input import command_completer

    def completions(text: str) -> list[str]:
        return [c.text for c in command_completer().get_completions(Document(text), CompleteEvent())]

    assert completions("/") == list(COMMANDS)
    assert completions("/q") == ["/quit"]
