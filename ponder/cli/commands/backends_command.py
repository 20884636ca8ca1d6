"""`ponder backends`: which inference backends this machine can run, and with what acceleration."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import ServerOptions, configured_server, server_lines


def backends(
    json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
    server: Optional[str] = ServerOptions.server,
) -> None:
    """List each backend: installed and usable here, GPU or Metal offload, and why not when not;
    and a configured server (--server, PONDER_SERVER or the config file): reachable or not, what it is."""
    import json as json_module

    from ponder.backends import available, default_backend, probe

    default = default_backend()
    rows = []
    for name in sorted(available()):
        found = probe(name)
        rows.append({
            "name": name,
            "usable": found.usable,
            "default": name == default,
            "version": found.version,
            "acceleration": found.acceleration,
            "reason": found.reason,
        })
    url = configured_server(server)
    server_row, server_text = server_lines(url) if url else (None, [])
    if json:
        print(json_module.dumps(rows + ([server_row] if server_row else []), indent=2))
        return
    width = max(len(row["name"]) for row in rows) + 2
    for row in rows:
        name = (row["name"] + (" *" if row["default"] else "")).ljust(width + 2)
        if row["usable"]:
            print(f"{name}usable       {row['version']}; acceleration: {row['acceleration']}")
        else:
            print(f"{name}not usable   {row['reason']}")
    print("* the default for models that imply no backend (a .gguf file implies llama.cpp, an MLX directory mlx)")
    for line in server_text:
        print(line)


def register(app: typer.Typer) -> None:
    app.command("backends")(backends)
