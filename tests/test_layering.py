"""The shape ARCHITECTURE.md describes, checked: the core imports no terminal library, and no
module of ponder imports, even lazily, one that imports it back."""

from __future__ import annotations

from tests.support.imports import all_modules, imports_of

TERMINAL_LIBRARIES = ("rich", "typer", "prompt_toolkit", "click")


def test_the_core_and_the_backends_import_no_terminal_library():
    offenders = {}
    for name, path in all_modules().items():
        if name.startswith("ponder.cli"):
            continue
        used = {i.split(".")[0] for i in imports_of(path)} & set(TERMINAL_LIBRARIES)
        if used:
            offenders[name] = sorted(used)
    assert not offenders, f"core modules importing a terminal library: {offenders}"


def test_no_import_cycles():
    modules = all_modules()
    graph = {name: {i for i in imports_of(path) if i in modules and i != name} for name, path in modules.items()}
    for name in graph:  # a package's __init__ is not an edge back: importing ponder.x runs ponder/__init__
        graph[name] = {i for i in graph[name] if not name.startswith(i + ".")}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_architecture_md_names_every_module():
    from tests.support.imports import PACKAGE, ROOT

    codemap = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    unnamed = [str(path.relative_to(ROOT)) for path in sorted(PACKAGE.rglob("*.py"))
               if path.name not in ("__init__.py", "__main__.py") and not path.name.endswith("_command.py")
               and f"{path.name}" not in codemap]
    assert not unnamed, f"modules ARCHITECTURE.md does not mention: {unnamed}"
