"""`ponder backends`: which inference backends this machine can run, and with what acceleration."""

from __future__ import annotations

import typer


def backends(json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table.")) -> None:
    """List each backend: installed and usable here, GPU or Metal offload, and why not when not."""
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
    if json:
        print(json_module.dumps(rows, indent=2))
        return
    width = max(len(row["name"]) for row in rows) + 2
    for row in rows:
        name = (row["name"] + (" *" if row["default"] else "")).ljust(width + 2)
        if row["usable"]:
            print(f"{name}usable       {row['version']}; acceleration: {row['acceleration']}")
        else:
            print(f"{name}not usable   {row['reason']}")
    print("* the default for models that imply no backend (a .gguf file implies llama.cpp, an MLX directory mlx)")


def register(app: typer.Typer) -> None:
    app.command("backends")(backends)
