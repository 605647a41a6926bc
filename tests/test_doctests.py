"""Docstring examples are documentation that runs: every module's, and the README's."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `rankwatch` is a namespace package mapped from the top-level folders: walk each one.
PACKAGES = ["schemas", "config", "producers", "streams", "sinks", "infra", "cli", "simulate", "ui"]


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        module = importlib.import_module(f"rankwatch.{package}")
        names.append(module.__name__)
        names += [
            info.name
            for info in pkgutil.walk_packages(module.__path__, f"{module.__name__}.")
            if not info.name.endswith("__main__")
        ]
    return sorted(names)


MODULES = _modules()


@pytest.mark.parametrize("name", MODULES)
def test_module_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def test_readme_examples() -> None:
    result = doctest.testfile(
        str(ROOT / "README.md"), module_relative=False, optionflags=doctest.ELLIPSIS
    )
    assert result.failed == 0
    assert result.attempted > 0
