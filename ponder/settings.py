"""Settings: the one set of rules every value is checked by, and the user's config file.

The rules serve the flags (cli/options.py), the config file and chat's `/set` alike.

The config file is a flat TOML table of defaults for the commands that run a model.
Precedence: built-in defaults < this file < environment variables < flags. The CLI hands the
file's values to the commands as click defaults (cli/app.py), which rank exactly there.
`ponder config set` edits the file in place: the user's comments and layout stay.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ponder.errors import UsageError
from ponder.events import Speculate

CONFIG_ENV = "PONDER_CONFIG"
Reasoning = Literal["show", "collapse", "hide"]  # how reasoning is shown (--reasoning, /think)
REASONING = get_args(Reasoning)
ModelKind = Literal["auto", "reasoning", "plain"]  # whether the model thinks in <think> tags (--model-kind)
MODEL_KINDS = get_args(ModelKind)
OnLoop = Literal["answer", "stop", "continue"]  # what a reasoning that repeats itself gets (--on-loop)
ON_LOOP = get_args(OnLoop)
OnFull = Literal["drop", "compact", "refuse"]  # a chat past its context: drop the oldest turns, summarise, or refuse
ON_FULL = get_args(OnFull)
SPECULATE = get_args(Speculate)  # speculative decoding (--speculate): auto, ngram, draft or off

# name -> (type, check, what a valid value is). Floats must be finite as well: `inf >= 0` holds,
# and no sampler can use inf or nan.
RULES = {
    "model": (str, bool, "a model path, directory or repo id"),
    "backend": (str, bool, "auto, mlx, llama.cpp or a plug-in's name"),
    "temperature": (float, lambda v: v >= 0, "a number, 0 or more"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "max_tokens": (int, lambda v: v > 0, "a whole number above 0"),
    "seed": (int, lambda v: 0 <= v < 2**32, "a whole number from 0 to 4294967295"),  # what samplers take
    "ctx": (int, lambda v: v > 0, "a whole number above 0"),
    "threads": (int, lambda v: 0 < v <= 512, "a whole number from 1 to 512"),  # llama.cpp's GGML_MAX_N_THREADS
    "reasoning": (str, lambda v: v in REASONING, "one of " + ", ".join(REASONING)),
    "server": (str, lambda v: v == "" or _is_server_url(v), "a URL starting with http:// or https:// (or '' for none)"),
    "timeout": (float, lambda v: v > 0, "a number of seconds above 0"),
    "model_kind": (str, lambda v: v in MODEL_KINDS, "one of " + ", ".join(MODEL_KINDS)),
    "think_budget": (int, lambda v: v >= 0, "a whole number, 0 or more (0: no thinking)"),
    "budget_message": (str, lambda v: "</think>" in v, "text that ends the reasoning with </think>"),
    "on_loop": (str, lambda v: v in ON_LOOP, "one of " + ", ".join(ON_LOOP)),
    "on_full": (str, lambda v: v in ON_FULL, "one of " + ", ".join(ON_FULL)),
    "prompt_cache_gib": (float, lambda v: v >= 0, "a number of GiB, 0 or more (0: no prompt cache)"),
    "speculate": (str, lambda v: v in SPECULATE, "one of " + ", ".join(SPECULATE)),
    "draft": (str, bool, "a draft model's path or name"),
}
def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_server_url(value: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (a port that is not a number raises)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


# What the file may set.
KEYS = ("model", "backend", "temperature", "top_p", "max_tokens", "reasoning", "server", "timeout", "model_kind",
        "think_budget", "on_loop", "on_full", "prompt_cache_gib", "speculate", "draft")
FILE_HEADER = "# ponder settings: defaults for ask, chat, solve and batch (flags and PONDER_* variables win)\n"


def _widened(name: str, value):
    """An int where a float is wanted (`temperature = 1` in TOML) counts as that float."""
    return float(value) if RULES[name][0] is float and type(value) is int else value


def problem(name: str, value) -> str | None:
    """What `value` must be for the setting `name` ("a finite number"), or None if it is valid."""
    kind, valid, expected = RULES[name]
    value = _widened(name, value)
    if type(value) is not kind:  # `type`, not isinstance: True is not a whole number here
        return expected
    if kind is str and not _utf8(value):  # argv bytes that were not UTF-8: no file or model can take them
        return "UTF-8 text"
    if kind is float and not math.isfinite(value):
        return "a finite number"
    return None if valid(value) else expected


def check(name: str, value, written: str | None = None):
    """`value` if it is valid for `name` (widened to float where one is wanted); else a UsageError
    quoting the value as the user wrote it (`written`, when it was typed as text)."""
    need = problem(name, value)
    if need:
        shown = value if written is None else written
        raise UsageError(f"{name} must be {need}, not {shown!r}")
    return _widened(name, value)


def parse(name: str, text: str):
    """A value typed by the user (`ponder config set`, chat's `/set`), checked."""
    try:
        value = RULES[name][0](text)
    except ValueError:
        value = text
    return check(name, value, written=text)


# --- the config file ------------------------------------------------------------------------


def config_path() -> Path:
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("ponder", appauthor=False)) / "config.toml"


@dataclass
class ConfigFile:
    """A config file as it is, problems included, so that `ponder config` can show and repair it."""

    path: Path
    raw: dict = field(default_factory=dict)  # every key the file holds, as written
    settings: dict = field(default_factory=dict)  # the valid ones
    problems: dict = field(default_factory=dict)  # key -> what is wrong with it
    unparsed: dict = field(default_factory=dict)  # key -> its line, where that line is not TOML

    def first_problem(self) -> UsageError | None:
        if not self.problems:
            return None
        key, wrong = next(iter(self.problems.items()))
        fix = (f"`ponder config set {key} VALUE` replaces it" if key in KEYS
               else f"`ponder config unset {key}` removes it")
        return UsageError(f"{key} in {self.path} {wrong}", hint=f"{fix}; `ponder config show` lists the file")


def read(path: Path | None = None) -> ConfigFile:
    """The file's settings and problems; an empty ConfigFile when there is none. A file that
    cannot be read or parsed is a UsageError: ponder leaves alone what it cannot understand."""
    config = ConfigFile(path or config_path())
    text = ""
    try:
        text, _ = _text(config.path)
        config.raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        _read_by_line(config, text, exc)
    for key, value in config.raw.items():
        if key not in KEYS:
            config.problems[key] = "is not a setting (known: " + ", ".join(KEYS) + ")"
        elif need := problem(key, value):
            config.problems[key] = f"must be {need}, not {value!r}"
        else:
            config.settings[key] = _widened(key, value)
    return config


def _text(path: Path) -> tuple[str, bool]:
    """The file's text ("" when there is none) and whether it began with a byte order mark (as
    Notepad writes it: not TOML, yet no reason to refuse the file). /dev/null, the usual way to
    say "no config file", reads as empty; any other file that is not a regular one is refused."""
    from ponder import files

    if os.path.realpath(path) == os.devnull:
        return "", False
    try:
        data = files.read_bytes(path)
    except FileNotFoundError:
        return "", False
    except files.FileError as exc:
        raise UsageError(exc.message, hint=f"move it aside, or point {CONFIG_ENV} at a TOML file") from None
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # said here, plainly: a TOML parser's message would not say where
        raise UsageError(f"the config file {path} is not UTF-8 text: byte 0x{data[exc.start]:02X} at offset {exc.start}",
                         hint="ponder will not rewrite a file it cannot read: convert it (iconv -t UTF-8), fix it"
                              " by hand, or move it aside to start a new one") from None
    return (text[1:], True) if text.startswith("\ufeff") else (text, False)


def _read_by_line(config: ConfigFile, text: str, error: ValueError) -> None:
    """A file that is not TOML as a whole, read a `key = value` line at a time, so that the line
    at fault can be shown and replaced (older ponders wrote `temperature = Infinity`). Anything
    else, ponder leaves alone: it cannot know what it would lose."""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key = line.partition("=")[0].strip()
        try:
            config.raw.update(tomllib.loads(line))
        except tomllib.TOMLDecodeError:
            if "=" not in line or not key.isidentifier():
                raise UsageError(f"the config file {config.path} is not valid TOML: {error}",
                                 hint="ponder will not rewrite a file it cannot read: fix it by hand, or move it"
                                      " aside to start a new one") from None
            config.unparsed[key] = line
            config.problems[key] = f"is not valid TOML: {line.partition('=')[2].strip()!r}"


def load(path: Path | None = None) -> dict:
    """The settings in the file, all valid; {} when there is none."""
    config = read(path)
    error = config.first_problem()
    if error:
        raise error
    return config.settings


def check_key(key: str) -> None:
    if key not in KEYS:
        raise UsageError(f"unknown key {key!r}", hint="known keys: " + ", ".join(KEYS))


def edit(key: str, value=None, path: Path | None = None) -> Path:
    """Set `key` to `value` in the config file (None: remove it), keeping everything else as it was
    written: comments, layout, other settings (wrong ones too). A new file gets a header line. The
    file is replaced atomically, through a link to its target; one that is not a regular file is
    refused (ponder.files). The file written."""
    from ponder import files

    path = path or config_path()
    text, bom = _text(path)
    try:
        edited = _edited_toml(text, key, value)
    except ValueError:  # not TOML as a whole: `key = value` lines, as `read` made sure
        edited = _edited_lines(text, key, value)
    return files.write_text(path, ("\ufeff" if bom else "") + (edited if text.strip() else FILE_HEADER + edited),
                            parents=True)


def _edited_toml(text: str, key: str, value) -> str:
    import tomlkit  # keeps comments and layout, where a TOML writer would start the file afresh

    document = tomlkit.parse(text)  # its ParseError is a ValueError
    if value is None:
        document.pop(key, None)
    else:
        document[key] = value
    return tomlkit.dumps(document)


def _edited_lines(text: str, key: str, value) -> str:
    """The `key = ...` lines replaced by one (the first keeps its place; None: all removed), every
    other line as it was."""
    import tomlkit

    new = tomlkit.dumps({key: value}).rstrip("\n") if value is not None else None
    lines = []
    for line in text.splitlines():
        if line.partition("=")[0].strip() != key or line.lstrip().startswith("#"):
            lines.append(line)
        elif new is not None:
            lines.append(new)
            new = None
    if new is not None:
        lines.append(new)
    return "".join(f"{line}\n" for line in lines)
