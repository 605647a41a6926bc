"""Placeholder: filled in by the detectors work (see registry.py)."""

from __future__ import annotations

from typing import Any


def detectors() -> list[Any]:
    return []
