"""The user's config file: a flat TOML table of defaults for the commands that run a model.

Precedence: built-in defaults < this file < environment variables < flags. The file's values
reach the commands as click's `default_map`, which ranks exactly there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ponder.errors import UsageError

CONFIG_ENV = "PONDER_CONFIG"
REASONING = ("show", "collapse", "hide")

# key -> (type, check, what a valid value is)
KEYS = {
    "model": (str, lambda v: bool(v), "a model path, directory or repo id"),
    "backend": (str, lambda v: bool(v), "auto, mlx, llama.cpp or a plug-in's name"),
    "temperature": (float, lambda v: v >= 0, "a number, 0 or more"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "max_tokens": (int, lambda v: v > 0, "a whole number above 0"),
    "reasoning": (str, lambda v: v in REASONING, "one of " + ", ".join(REASONING)),
}
MODEL_COMMANDS = ("ask", "chat", "solve", "batch")


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("ponder", appauthor=False)) / "config.toml"


def _toml():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib


def load(path: Path | None = None) -> dict:
    """The validated settings in the file; {} when there is none."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror}") from exc
    toml = _toml()
    try:
        raw = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise UsageError(f"the config file {path} is not valid TOML: {exc}", hint="`ponder config path` shows where it is")
    return {key: check(key, value, path) for key, value in raw.items()}


def check(key: str, value, path: Path | None = None) -> object:
    where = f" in {path}" if path else ""
    if key not in KEYS:
        raise UsageError(f"unknown key {key!r}{where}", hint="known keys: " + ", ".join(KEYS))
    kind, valid, expected = KEYS[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) or not valid(value):
        raise UsageError(f"{key}{where} must be {expected}, not {value!r}")
    return value


def parse(key: str, text: str) -> object:
    """A value typed on the command line (`ponder config set KEY VALUE`)."""
    kind = KEYS[key][0] if key in KEYS else str
    try:
        value = kind(text)
    except ValueError:
        value = text
    return check(key, value)


def save(settings: dict, path: Path | None = None) -> Path:
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# ponder settings: defaults for ask, chat, solve and batch (flags and PONDER_* variables win)"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]  # JSON scalars are TOML scalars
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def default_map(settings: dict) -> dict:
    """click defaults for each model command's parameters."""
    defaults = {k: v for k, v in settings.items() if k != "reasoning"}
    if "reasoning" in settings:
        defaults["show_reasoning"] = settings["reasoning"] == "show"
        defaults["hide_reasoning"] = settings["reasoning"] == "hide"
    return {command: dict(defaults) for command in MODEL_COMMANDS}
