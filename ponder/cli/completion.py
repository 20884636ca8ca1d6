"""Static bash, zsh and fish completion scripts, generated from the CLI definition.

`python -m ponder.cli.completion [DIR]` (re)writes completions/; a test fails when they are stale.
Static scripts complete instantly, with no Python start-up per Tab press.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SHELLS = {"bash": "ponder.bash", "zsh": "_ponder", "fish": "ponder.fish"}
HEADER = "generated from the CLI by `python -m ponder.cli.completion`; do not edit"


def _values(param) -> str | list[str] | None:
    """How to complete an option's value: 'file', a word list, or None (free text)."""
    from ponder.backends import BUILTIN

    if param.name in ("model", "draft", "output"):
        return "file"
    if param.name == "backend":
        return ["auto", *BUILTIN]
    from typing import Literal, get_args, get_origin

    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)  # typer >= 0.29
    return list(get_args(annotation)) if get_origin(annotation) is Literal else None


def _spec():
    """[(command or '' for the top level, help, [options])]; options: (names, help, takes_value, values)."""
    import typer

    from ponder.cli.app import app

    root = typer.main.get_command(app)
    commands = [("", root.help or "", root)]
    commands += [(name, cmd.help or "", cmd) for name, cmd in sorted(root.commands.items())]
    spec = []
    for name, help_text, cmd in commands:
        options = []
        for param in cmd.params:
            if param.param_type_name != "option" or getattr(param, "hidden", False):
                continue
            names = [*param.opts, *param.secondary_opts]
            takes_value = not param.is_flag
            options.append((names, _summary(param.help), takes_value, _values(param) if takes_value else None))
        options.append((["--help", "-h"], "Show help", False, None))
        spec.append((name, _summary(help_text), options))
    return spec


def _takes_files(command: str) -> bool:
    """Whether a command's positional argument is a file (batch's tasks) rather than free text."""
    import typer

    from ponder.cli.app import app

    if not command:
        return False
    cmd = typer.main.get_command(app).commands[command]
    return any(p.param_type_name == "argument" and p.name == "input" for p in cmd.params)


def _summary(help_text: str | None) -> str:
    """First sentence, without [default: ...] notes or characters that shells' syntax uses."""
    first = re.split(r"\.(?:\s|$)", (help_text or "").strip())[0]
    first = re.sub(r"\s*\[[^]]*\]", "", first)
    return re.sub(r"['\[\]:`$\\]", "", first)


def bash() -> str:
    spec = _spec()
    subcommands = " ".join(name for name, _, _ in spec if name)
    lines = [f"# bash completion for ponder ({HEADER})", "_ponder() {", '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i',
             "    for ((i = 1; i < COMP_CWORD; i++)); do", '        case "${COMP_WORDS[i]}" in',
             f"            {'|'.join(n for n, _, _ in spec if n)}) cmd=\"${{COMP_WORDS[i]}}\"; break ;;", "        esac", "    done",
             '    case "$cmd" in']
    for name, _, options in spec:
        lines.append(f'        "{name}")')
        lines.append('            case "$prev" in')
        for names, _, takes_value, values in options:
            if not takes_value:
                continue
            if values == "file":
                action = 'compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur"))'
            elif values:
                action = f'COMPREPLY=($(compgen -W "{" ".join(values)}" -- "$cur"))'
            else:
                action = "COMPREPLY=()"
            lines.append(f"                {'|'.join(names)}) {action}; return ;;")
        lines.append("            esac")
        words = " ".join(n for names, _, _, _ in options for n in names)
        if not name:
            words += " " + subcommands
        files = ' $(compgen -f -- "$cur")' if _takes_files(name) else ""
        lines.append(f'            COMPREPLY=($(compgen -W "{words}" -- "$cur"){files}) ;;')
    lines += ["    esac", "}", "complete -F _ponder ponder", ""]
    return "\n".join(lines)


def zsh() -> str:
    spec = _spec()
    lines = ["#compdef ponder", f"# zsh completion for ponder ({HEADER})", "", "_ponder() {", "    local line state", ""]
    top = next(options for name, _, options in spec if not name)
    lines.append("    _arguments -C \\")
    for arg in _zsh_options(top):
        lines.append(f"        {arg} \\")
    lines += ["        '1: :->command' \\", "        '*:: :->args'", "", "    case $state in", "        command)",
              "            local -a commands=("]
    for name, help_text, _ in spec:
        if name:
            lines.append(f"                '{name}:{(help_text)}'")
    lines += ["            )", "            _describe command commands ;;", "        args)", "            case $line[1] in"]
    for name, _, options in spec:
        if name:
            lines.append(f"                {name}) _arguments \\")
            for arg in _zsh_options(options):
                lines.append(f"                    {arg} \\")
            positional = "'1:tasks file:_files'" if _takes_files(name) else "'*:prompt:'"
            lines.append(f"                    {positional} ;;")
    lines += ["            esac ;;", "    esac", "}", "", '_ponder "$@"', ""]
    return "\n".join(lines)


def _zsh_options(options) -> list[str]:
    out = []
    for names, help_text, takes_value, values in options:
        group = "{" + ",".join(names) + "}" if len(names) > 1 else names[0]
        exclusive = "'(" + " ".join(names) + ")'" if len(names) > 1 else ""
        value = ""
        if takes_value:
            value = ":file:_files" if values == "file" else f":value:({' '.join(values)})" if values else ":value:"
        out.append(f"{exclusive}{group}'[{(help_text)}]{value}'")
    return out


def fish() -> str:
    spec = _spec()
    names = " ".join(n for n, _, _ in spec if n)
    lines = [f"# fish completion for ponder ({HEADER})", "complete -c ponder -f"]
    for name, help_text, options in spec:
        condition = "__fish_use_subcommand" if not name else f"__fish_seen_subcommand_from {name}"
        if name:
            lines.append(f"complete -c ponder -n '__fish_use_subcommand' -a {name} -d '{(help_text)}'")
        if _takes_files(name):
            lines.append(f"complete -c ponder -n '{condition}' -F")
        for opt_names, opt_help, takes_value, values in options:
            flags = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in opt_names)
            extra = ""
            if takes_value:
                extra = " -r -F" if values == "file" else f" -x -a '{' '.join(values)}'" if values else " -x"
            lines.append(f"complete -c ponder -n '{condition}' {flags}{extra} -d '{(opt_help)}'")
    del names
    return "\n".join(lines) + "\n"


GENERATORS = {"bash": bash, "zsh": zsh, "fish": fish}


def write_all(directory: Path) -> None:
    from ponder.files import write_text

    for shell, filename in SHELLS.items():
        write_text(directory / filename, GENERATORS[shell](), parents=True)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "completions"
    if target.startswith("-"):  # `--help` is not a directory to fill
        sys.exit("usage: python -m ponder.cli.completion [DIRECTORY]  (default: completions/)")
    write_all(Path(target))
