"""`ponder models`: list local models (hub cache, Ollama, LM Studio), show one, remove a download."""

from __future__ import annotations

import os
import sys

import typer

models_app = typer.Typer(help="Local models: list, info, rm.", rich_markup_mode=None)

GIB = 2**30


def _find(name: str):
    from pathlib import Path

    from ponder.errors import ModelError, UsageError, shortened
    from ponder.models import LocalModel, find_all, mlx_weights_size
    from ponder.outside_files import Unreadable, shown

    if not name.strip():
        raise UsageError("the model name is empty", hint="`ponder models` lists them")
    found = find_all()
    model = found.named(name)
    if model is not None:
        return model
    path = Path(name).expanduser()
    try:
        exists = path.exists()
    except OSError:  # a name no path can have (too long): no such file, as far as a path goes
        exists = False
    if exists:  # any file or directory, listed or not
        try:
            size = mlx_weights_size(path) if path.is_dir() else path.stat().st_size
        except (Unreadable, OSError) as exc:
            raise ModelError(f"cannot read {shown(path)}: {getattr(exc, 'strerror', None) or exc}") from None
        return LocalModel(str(path), "path", path, size, "", "mlx" if path.is_dir() else "llama.cpp")
    _warn(found.warnings)  # one of the entries skipped may have been the one meant
    if os.path.islink(path):
        raise ModelError(f"{shown(path)} is a broken link (or a link in a loop)")
    raise UsageError(f"no local model {shortened(name, 200)!r}", hint="`ponder models` lists them")


def _warn(warnings: list[str]) -> None:
    for line in warnings:
        print(f"ponder: warning: {line}", file=sys.stderr)


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context, json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the models on this machine, with size, quantization, backend and path."""
    if ctx.invoked_subcommand is not None:
        return
    import json as json_module

    from ponder.models import find_all

    found = find_all()
    _warn(found.warnings)
    found = found.models
    if json:
        print(json_module.dumps([{"name": m.name, "source": m.source, "path": str(m.path), "size": m.size,
                                  "quantization": m.quantization, "backend": m.backend} for m in found], indent=2))
        return
    if not found:
        print("no models found in the Hugging Face cache, Ollama or LM Studio")
        return
    from ponder.outside_files import shown

    width = max(len(shown(m.name)) for m in found)
    for m in found:  # names come from file names: shown, so that one cannot hold an escape sequence
        print(f"{shown(m.name):{width}}  {m.source:8}  {m.size / GIB:6.2f} GiB  {m.quantization or '?':8}  "
              f"{m.backend:9}  {shown(m.path)}")


@models_app.command("info")
def models_info(name: str = typer.Argument(..., help="A name from `ponder models`, or a path.")) -> None:
    """Metadata of a model: architecture, context length, quantization, chat template."""
    import json as json_module

    from ponder.errors import ModelError
    from ponder.outside_files import shown

    model = _find(name)
    facts = {"name": model.name, "source": model.source, "path": str(model.path), "backend": model.backend,
             "size_bytes": model.size}
    if model.backend == "llama.cpp":
        from ponder.gguf_header import NotGguf, read_metadata, summary

        try:
            facts.update(summary(read_metadata(model.path)))
        except NotGguf as exc:  # its message names the file
            raise ModelError(str(exc)) from None
        except OSError as exc:
            raise ModelError(f"cannot read {shown(model.path)}: {exc.strerror or exc}") from None
    else:
        facts.update(_mlx_facts(model.path))
    width = max(len(k) for k in facts)
    for key, value in facts.items():  # values come from the model's own metadata: shown, never obeyed
        print(f"{key:{width}}  {json_module.dumps(value) if isinstance(value, bool) else shown(value)}")


def _mlx_facts(directory) -> dict:
    from ponder.errors import ModelError
    from ponder.models import mlx_quantization
    from ponder.outside_files import Unreadable, read_json_object, shown

    try:
        config = read_json_object(directory / "config.json")
    except Unreadable as exc:
        if str(exc) == "missing":
            raise ModelError(f"{shown(directory)} is not a model directory: it has no config.json") from None
        raise ModelError(f"cannot read {shown(directory / 'config.json')}: it is {exc}") from None
    template = (directory / "chat_template.jinja").is_file() or "chat_template" in _read_json(
        directory / "tokenizer_config.json")
    return {
        "architecture": config.get("model_type", ""),
        "context_length": config.get("max_position_embeddings"),
        "layers": config.get("num_hidden_layers"),
        "quantization": mlx_quantization(directory),
        "chat_template": template,
    }


def _read_json(path) -> dict:
    from ponder.outside_files import Unreadable, read_json_object

    try:
        return read_json_object(path)
    except Unreadable:
        return {}


@models_app.command("rm")
def models_rm(name: str = typer.Argument(..., help="A hub-cache model from `ponder models`.")) -> None:
    """Remove a model downloaded into the Hugging Face cache (ponder pull's downloads)."""
    from ponder.errors import UsageError

    model = _find(name)
    if model.source != "hub":
        owner = {"ollama": "ollama rm", "lmstudio": "LM Studio"}.get(model.source, "your file manager")
        raise UsageError(f"{name} is not a download in the Hugging Face cache; remove it with {owner}")
    from ponder.models import remove_from_hub

    freed = remove_from_hub(model.name)  # the name the cache scan gave, never a path built from `name`
    print(f"removed {model.name} ({_size(freed)})")


def _size(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
