"""One renderer of pydantic validation errors, for the files people write by hand.

The config file (``rankwatch.config``), its ``[sinks]`` tables (``rankwatch.sinks.config``) and
rules files (``rankwatch.streams.rules``) are validated by pydantic models, and a person reads
what is wrong: :func:`field_errors` turns a :class:`~pydantic.ValidationError` into one
:class:`FieldError` per problem, ``KEY: MESSAGE`` where ``KEY`` is the full path of the key
and ``MESSAGE`` ends in ``, got VALUE`` where the value helps. Each caller adds where the key
came from (a file, an environment variable, a line of a rules file).

The three kinds of file word some problems differently, and their exact messages are pinned by
tests and known to users: a :class:`Style` says how (our words or pydantic's, how a value is
shown, how a missing key reads, ``rule[1].name`` or ``sinks.routes.0.to``). What they share is
written once here: the key path, an unknown key named at its parent with a near-miss
suggestion, a model validator's ``sub_key: problem`` moved into the path, secrets never echoed.
This lives in ``rankwatch.schemas``, the package every other one may import.

>>> from pydantic import BaseModel, ConfigDict, Field
>>> class Topic(BaseModel):
...     model_config = ConfigDict(extra="forbid", strict=True)
...     partitions: int = Field(default=1, ge=1)
>>> try:
...     Topic.model_validate({"partitions": 0, "parts": 3})
... except ValidationError as exc:
...     keys = lambda parent: model_keys(Topic)
...     for problem in field_errors(exc, CONFIG_STYLE, prefix=("topics", "steps"), suggest=keys):
...         print(problem)
topics.steps.partitions: must be >= 1, got integer 0
topics.steps: unknown key 'parts' (did you mean 'partitions'?)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

Loc = tuple[str | int, ...]

#: What a value looks like where it must not be shown (a password, even a mistyped one).
NOT_SHOWN = "a value (not shown)"

_TOML_TYPES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "table",
}
_BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}
#: Our words for what pydantic's commonest type errors expected.
EXPECTED: Mapping[str, str] = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "string_type": "a string",
    "float_type": "a finite number",
    "float_parsing": "a finite number",
    "finite_number": "a finite number",
    "bool_type": "a boolean",
    "bool_parsing": "a boolean",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def show_toml(value: Any) -> str:
    """A value as a person reads it in TOML terms, with its type.

    >>> show_toml(3), show_toml("3"), show_toml(True), show_toml({"a": 1})
    ('integer 3', "string '3'", 'boolean True', 'a table')
    """
    if isinstance(value, dict):
        return "a table"
    return f"{_TOML_TYPES.get(type(value), type(value).__name__)} {value!r}"


def show_type(value: Any) -> str:
    """Only the value's Python type (``str``): for messages that must stay short."""
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class Style:
    """How one kind of file words its problems."""

    #: How a rejected value follows ``, got ``; None: the value is not shown.
    got: Callable[[Any], str] | None = repr
    #: ``expected WHAT`` for these pydantic error types, instead of pydantic's own words
    #: ("Input should be a valid integer").
    expected: Mapping[str, str] = field(default_factory=dict)
    #: Our words for bounds and choices ("must be >= 1", "must be one of ...").
    own_words: bool = False
    missing: str = "is required"
    #: ``kafka: unknown key 'x'`` (True) or ``rule[1].x: unknown key`` (False).
    unknown_at_parent: bool = True
    #: ``rule[1].name`` (True) or ``routes.1.name`` (False).
    brackets: bool = False
    #: Keys whose values are never shown: any key with one of these words in it.
    secrets: tuple[str, ...] = ("password",)


#: The config file and the environment (``rankwatch.config``).
CONFIG_STYLE = Style(
    got=show_toml,
    own_words=True,
    expected={
        **EXPECTED,
        "bool_type": "a boolean (true/false; env: 1/0, yes/no)",
        "bool_parsing": "a boolean (true/false; env: 1/0, yes/no)",
    },
)
#: The ``[sinks]`` tables of the config file (``rankwatch.sinks.config``).
SINKS_STYLE = Style()
#: Rules files (``rankwatch.streams.rules``): each problem also gets its line.
RULES_STYLE = Style(
    got=None, missing="required key is missing", unknown_at_parent=False, brackets=True
)
#: One built-in rule setting's value on its own (``expected an integer, got str``).
RULE_SETTING_STYLE = Style(
    got=show_type,
    expected={
        "float_type": "a number (float)",
        "int_type": "an integer",
        "bool_type": "true or false",
        "string_type": "a string",
    },
)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem: ``loc`` the path from the root, ``key`` that path as text ("" for the root),
    ``message`` what is wrong."""

    loc: Loc
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


def dotted(loc: Sequence[str | int], *, brackets: bool = False) -> str:
    """``("rule", 1, "name")`` as ``rule[1].name`` (brackets) or ``rule.1.name``.

    >>> dotted(("rule", 1, "name"), brackets=True), dotted(("routes", 0, "to"))
    ('rule[1].name', 'routes.0.to')
    """
    out = ""
    for part in loc:
        if brackets and isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def field_errors(
    exc: ValidationError,
    style: Style,
    *,
    prefix: Loc = (),
    drop: str | None = None,
    suggest: Callable[[Loc], Sequence[str]] | None = None,
) -> list[FieldError]:
    """Every problem of ``exc``, in pydantic's order.

    ``prefix`` is where the validated value sits in its file (``("sinks",)``); ``drop`` a first
    path element to leave out (a discriminated union's tag); ``suggest(parent)`` the keys a
    table at ``parent`` may have, for the near-miss suggestion after an unknown key.
    """
    out = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(error["loc"])
        if drop is not None and loc and loc[0] == drop:
            loc = loc[1:]
        out.append(_one(error, (*prefix, *loc), style, suggest))
    return out


def model_keys(model: type[BaseModel]) -> list[str]:
    """The keys a table validated by ``model`` may have (aliases where a field has one)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _one(
    error: Any, loc: Loc, style: Style, suggest: Callable[[Loc], Sequence[str]] | None
) -> FieldError:
    kind = error["type"]
    key = dotted(loc, brackets=style.brackets)
    if kind == "extra_forbidden":
        if not style.unknown_at_parent:
            return FieldError(loc, key, "unknown key")
        name = str(loc[-1])
        close = difflib.get_close_matches(name, suggest(loc[:-1]), n=1) if suggest else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parent = dotted(loc[:-1], brackets=style.brackets) or "(top level)"
        return FieldError(loc, parent, f"unknown key {name!r}{hint}")
    if kind == "missing":
        return FieldError(loc, key, style.missing)
    if kind == "value_error":
        message = str(error["ctx"]["error"])
        # A model validator may name the sub-key itself ("url: ..."): keep the path in one place.
        head, sep, rest = message.partition(": ")
        if sep and head and " " not in head:
            sub = (*loc, head)
            return FieldError(sub, dotted(sub, brackets=style.brackets), rest)
        return FieldError(loc, key, message)
    secret = any(word in key for word in style.secrets)
    value = error.get("input")
    got = "" if style.got is None else f", got {NOT_SHOWN if secret else style.got(value)}"
    expected = style.expected.get(kind)
    if expected is not None:
        return FieldError(loc, key, f"expected {expected}{got}")
    if style.own_words:
        if kind in _BOUNDS:
            bound = next(iter(error["ctx"].values()))
            return FieldError(loc, key, f"must be {_BOUNDS[kind]} {bound}{got}")
        if kind == "literal_error":
            return FieldError(loc, key, f"must be one of {error['ctx']['expected']}{got}")
    return FieldError(loc, key, f"{str(error['msg']).removeprefix('Value error, ')}{got}")
