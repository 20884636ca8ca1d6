"""`ponder models`: list local models (hub cache, Ollama, LM Studio), show one, remove a download."""

from __future__ import annotations

import typer

models_app = typer.Typer(help="Local models: list, info, rm.", rich_markup_mode=None)

GIB = 2**30


def _find(name: str):
    from pathlib import Path

    from ponder.errors import UsageError
    from ponder.models import LocalModel, find_local

    model = find_local(name)
    if model is not None:
        return model
    path = Path(name).expanduser()
    if path.exists():  # any file or directory, listed or not
        backend = "mlx" if path.is_dir() else "llama.cpp"
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.glob("*.safetensors"))
        return LocalModel(str(path), "path", path, size, "", backend)
    raise UsageError(f"no local model {name!r}", hint="`ponder models` lists them")


@models_app.callback(invoke_without_command=True)
def models_list(ctx: typer.Context, json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the models on this machine, with size, quantization, backend and path."""
    if ctx.invoked_subcommand is not None:
        return
    import json as json_module

    from ponder.models import find_all

    found = find_all()
    if json:
        print(json_module.dumps([{"name": m.name, "source": m.source, "path": str(m.path), "size": m.size,
                                  "quantization": m.quantization, "backend": m.backend} for m in found], indent=2))
        return
    if not found:
        print("no models found in the Hugging Face cache, Ollama or LM Studio")
        return
    width = max(len(m.name) for m in found)
    for m in found:
        print(f"{m.name:{width}}  {m.source:8}  {m.size / GIB:6.2f} GiB  {m.quantization or '?':8}  {m.backend:9}  {m.path}")


@models_app.command("info")
def models_info(name: str = typer.Argument(..., help="A name from `ponder models`, or a path.")) -> None:
    """Metadata of a model: architecture, context length, quantization, chat template."""
    import json as json_module

    from ponder.errors import ModelError

    model = _find(name)
    facts = {"name": model.name, "source": model.source, "path": str(model.path), "backend": model.backend,
             "size_bytes": model.size}
    if model.backend == "llama.cpp":
        from ponder.gguf_header import NotGguf, read_metadata, summary

        try:
            facts.update(summary(read_metadata(model.path)))
        except (NotGguf, OSError) as exc:
            raise ModelError(f"cannot read {model.path}: {exc}") from exc
    else:
        facts.update(_mlx_facts(model.path))
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key:{width}}  {json_module.dumps(value) if isinstance(value, bool) else value}")


def _mlx_facts(directory) -> dict:
    import json

    from ponder.errors import ModelError
    from ponder.models import mlx_quantization

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {directory}/config.json: {exc}") from exc
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
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
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
