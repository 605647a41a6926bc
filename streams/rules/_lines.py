"""Where each key of a TOML document is: ``tomllib`` gives values, not line numbers.

A small line scanner, enough for rules files: table headers (``[a.b]``, ``[[a]]`` with their
index), ``key = value`` and dotted keys. Inline tables and multi-line values map to the line of
their key. :meth:`KeyLines.line` falls back to the nearest enclosing key that has a line.

>>> lines = KeyLines('version = 1\\n\\n[[rule]]\\nname = "x"\\n[[rule]]\\npattern = "("\\n')
>>> lines.line(("rule", 1, "pattern")), lines.line(("rule", 0, "missing")), lines.line(("nope",))
(6, 3, None)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = re.compile(rf"\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*")
_PART = re.compile(_KEY)

Loc = Sequence[str | int]


def _parts(dotted: str) -> list[str]:
    return [p[1:-1] if p[0] in "\"'" else p for p in _PART.findall(dotted)]


class KeyLines:
    """Line number (1-based) of every table and key in a TOML text."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[str | int, ...], int] = {}
        arrays: dict[tuple[str, ...], int] = {}  # array-of-tables path -> its last index
        current: tuple[str | int, ...] = ()
        in_string: str | None = None
        for number, raw in enumerate(text.splitlines(), 1):
            if in_string is not None:  # inside a multi-line string
                if raw.count(in_string) % 2 == 1:
                    in_string = None
                continue
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[["):
                names = _parts(line[2 : line.find("]]")])
                path = self._indexed(names, arrays, last_array=True)
                current = path
                self.lines.setdefault(path, number)
                self.lines.setdefault(path[:-1], number)
            elif line.startswith("["):
                names = _parts(line[1 : line.find("]")])
                current = self._indexed(names, arrays, last_array=False)
                self.lines.setdefault(current, number)
            else:
                m = _DOTTED.match(line)
                if m is None or not line[m.end() :].startswith("="):
                    continue
                keys = _parts(m.group(1))
                for i in range(1, len(keys) + 1):  # a.b.c = 1 also defines a and a.b
                    self.lines.setdefault((*current, *keys[:i]), number)
                rest = line[m.end() + 1 :]
                for quote in ('"""', "'''"):
                    if rest.count(quote) % 2 == 1:
                        in_string = quote

    @staticmethod
    def _indexed(
        names: list[str], arrays: dict[tuple[str, ...], int], *, last_array: bool
    ) -> tuple[str | int, ...]:
        path: list[str | int] = []
        for i, name in enumerate(names):
            path.append(name)
            key = tuple(names[: i + 1])
            if last_array and i == len(names) - 1:
                arrays[key] = arrays.get(key, -1) + 1
                path.append(arrays[key])
            elif key in arrays:
                path.append(arrays[key])
        return tuple(path)

    def line(self, loc: Loc) -> int | None:
        """The line of ``loc`` or of its nearest enclosing key; None if nothing matches."""
        path = tuple(loc)
        while path:
            found = self.lines.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return None
