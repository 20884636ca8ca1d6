"""`ponder doctor`: what this machine can run, and where ponder keeps things."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import ServerOptions, configured_server, server_lines

GIB = 2**30
REBUILD_HINTS = {
    "cuda": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python',
    "metal": 'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python',
}


def doctor(server: Optional[str] = ServerOptions.server) -> None:
    """Platform, Python, backends and their GPU/Metal offload, a configured server, memory, models
    found, paths."""
    import platform
    import sys

    from ponder import __version__, machine
    from ponder.backends import available, default_backend, probe
    from ponder.history import data_dir
    from ponder.models import find_all
    from ponder.outside_files import shown
    from ponder.settings import config_path

    print(f"ponder {__version__} · Python {platform.python_version()} ({sys.executable})")
    print(f"platform: {platform.system()} {platform.release()} {platform.machine()}")
    ram = machine.ram()
    print(f"RAM: {ram.total / GIB:.1f} GiB, {ram.available / GIB:.1f} GiB available")
    gpus = machine.nvidia_gpus()
    for gpu in gpus:
        print(f"GPU: {gpu.name}, {gpu.total / GIB:.1f} GiB, {gpu.free / GIB:.1f} GiB free")
    unified = machine.unified_gpu_budget(ram)
    if unified:
        print(f"GPU: Apple Silicon, unified memory; Metal can use about {unified / GIB:.1f} GiB")
    if not gpus and not unified:
        print("GPU: none found (nvidia-smi absent or silent; not Apple Silicon)")

    print("backends:")
    default = default_backend()
    for name in sorted(available()):
        found = probe(name)
        state = f"usable · {found.version} · acceleration: {found.acceleration}" if found.usable else \
            f"not usable · {found.reason}"
        print(f"  {name}{' (default)' if name == default else ''}: {state}")
        if name == "llama.cpp" and found.usable and "GPU" in found.acceleration:
            from ponder.cli.commands.backends_command import device_text, llama_devices

            devices = llama_devices()
            for device in devices:
                print(f"    offloads every layer to {device_text(device)}, {device['memory_free'] / GIB:.1f} GiB free")
            if not devices:
                print("    offloads every layer, but llama.cpp names no GPU device: is the driver loaded?")
        if name == "llama.cpp" and found.usable and "GPU" not in found.acceleration:
            hint = REBUILD_HINTS["metal" if machine.apple_silicon() else "cuda"] if (gpus or unified) else None
            if hint:
                print(f"    this llama-cpp-python cannot offload to the GPU; rebuild it: {hint}")

    url = configured_server(server)
    if url:
        print(server_lines(url)[1][0])

    found = find_all()
    models = found.models
    print(f"models found: {len(models)}" + (" (`ponder models` lists them)" if models else ""))
    for model in models[:5]:
        print(f"  {shown(model.name)} ({model.source}, {model.size / GIB:.2f} GiB, {model.backend})")
    for line in found.warnings:
        print(f"ponder: warning: {line}", file=sys.stderr)
    print(f"config file: {config_path()}" + ("" if config_path().exists() else " (none yet)"))
    print(f"data (history): {data_dir()}")
    from ponder.cli.commands.cache_command import holding
    from ponder.prompt_cache import cache_dir

    print(f"prompt cache: {cache_dir()} · {holding()}")
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        print(f"Hugging Face cache: {HF_HUB_CACHE}")
    except ImportError:
        pass


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
