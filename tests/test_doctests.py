"""Docstring examples are documentation that runs: every module that has some, and the README's.

The modules are found by their source (a ``>>>`` in the file), not by importing every module of
every package, so the run imports just the modules with examples; each one found must then run
at least one example (a ``>>>`` outside any docstring would otherwise pass unnoticed).
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `rankwatch` is a namespace package mapped from the top-level folders: walk each one.
PACKAGES = ["schemas", "config", "producers", "streams", "sinks", "infra", "cli", "simulate", "ui"]


def _module_name(package: str, path: Path) -> str:
    parts = path.relative_to(ROOT / package).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("rankwatch", package, *parts))


def example_modules() -> list[str]:
    """Modules whose source holds a ``>>>``, by name."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.name != "__main__.py" and ">>>" in path.read_text(encoding="utf-8"):
                names.append(_module_name(package, path))
    return sorted(names)


MODULES = example_modules()


@pytest.mark.parametrize("name", MODULES)
def test_module_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0, f"{name} has '>>>' but no example doctest can run"
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_examples_are_found_where_they_are() -> None:
    # Modules known to carry examples; and a module without any is left out.
    for name in ("rankwatch.schemas.validation", "rankwatch.streams.pipeline"):
        assert name in MODULES
    assert "rankwatch.streams.exceptions" not in MODULES
    assert _module_name("sinks", ROOT / "sinks" / "storage" / "__init__.py") == (
        "rankwatch.sinks.storage"
    )


def test_readme_examples() -> None:
    result = doctest.testfile(
        str(ROOT / "README.md"), module_relative=False, optionflags=doctest.ELLIPSIS
    )
    assert result.failed == 0
    assert result.attempted > 0
