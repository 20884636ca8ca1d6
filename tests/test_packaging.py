"""What ponder imports, its package declares: a module that only the test group brings in
(huggingface_hub came through mlx-lm and transformers) would pass every other test and fail
on a user's machine. CI's user-install stage (scripts/check-user-install) checks the same end
to end; this finds the culprit in a second."""

from __future__ import annotations

import re
import sys
from importlib.metadata import packages_distributions

from tests.support.imports import ROOT, all_modules, imports_of


def imported_modules() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in ponder/ (lazy imports inside functions too) -> files."""
    found: dict[str, set[str]] = {}
    for name, path in all_modules().items():
        for imported in imports_of(path):
            found.setdefault(imported.split(".")[0], set()).add(name)
    return found


def declared_distributions() -> set[str]:
    """Every distribution pyproject.toml declares for users: dependencies and extras (not the test group)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {normalize(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in requirements}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency():
    distributions = packages_distributions()
    declared = declared_distributions()
    third_party = {m: files for m, files in imported_modules().items()
                   if m not in sys.stdlib_module_names and m not in ("ponder", "__future__")}
    assert "huggingface_hub" in third_party  # the scan sees lazy imports inside functions
    missing = {}
    for module, files in sorted(third_party.items()):
        owners = {normalize(d) for d in distributions.get(module, [module])}
        if not owners & declared:
            missing[module] = sorted(files)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
