"""`ponder backends`: which inference backends this machine can run, and with what acceleration."""

from __future__ import annotations

from typing import Optional

import typer

from ponder.cli.commands.options import ServerOptions, configured_server, server_lines


GIB = 2**30


def llama_devices() -> list[dict]:
    """The GPUs this llama.cpp build can offload to, as its own device registry names them (CUDA0: the card's
    name, memory): where `acceleration` says GPU offload, what it offloads to. None for a CPU build, and none
    where llama-cpp-python is missing or its ggml library does not answer."""
    try:
        import ctypes

        import llama_cpp  # noqa: F401  (loads llama.cpp's libraries: ggml registers its devices)
        from llama_cpp._ggml import libggml as ggml

        ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
        ggml.ggml_backend_dev_get.argtypes, ggml.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
        for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
            getattr(ggml, name).argtypes, getattr(ggml, name).restype = [ctypes.c_void_p], ctypes.c_char_p
        ggml.ggml_backend_dev_type.argtypes, ggml.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
        size = ctypes.POINTER(ctypes.c_size_t)
        ggml.ggml_backend_dev_memory.argtypes, ggml.ggml_backend_dev_memory.restype = [ctypes.c_void_p, size, size], None
        devices = []
        for i in range(ggml.ggml_backend_dev_count()):
            device = ggml.ggml_backend_dev_get(i)
            if ggml.ggml_backend_dev_type(device) not in (1, 2):  # GGML_BACKEND_DEVICE_TYPE_GPU, _IGPU
                continue
            free, total = ctypes.c_size_t(), ctypes.c_size_t()
            ggml.ggml_backend_dev_memory(device, ctypes.byref(free), ctypes.byref(total))
            devices.append({"name": ggml.ggml_backend_dev_name(device).decode("utf-8", "replace"),
                            "description": ggml.ggml_backend_dev_description(device).decode("utf-8", "replace"),
                            "memory_total": total.value, "memory_free": free.value})
        return devices
    except Exception:  # an older or odd build: the acceleration line alone says what is known
        return []


def device_text(device: dict) -> str:
    return f"{device['name']}: {device['description']}, {device['memory_total'] / GIB:.1f} GiB"


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
            "devices": llama_devices() if name == "llama.cpp" and found.usable else [],
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
            devices = "".join(f" ({device_text(d)})" for d in row["devices"])
            print(f"{name}usable       {row['version']}; acceleration: {row['acceleration']}{devices}")
        else:
            print(f"{name}not usable   {row['reason']}")
    print("* the default for models that imply no backend (a .gguf file implies llama.cpp, an MLX directory mlx)")
    for line in server_text:
        print(line)


def register(app: typer.Typer) -> None:
    app.command("backends")(backends)
