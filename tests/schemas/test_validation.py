"""The one renderer of validation errors (rankwatch.schemas.validation) and the three kinds of file
that use it: the wording each kind had before is kept (its own tests pin it exactly)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rankwatch.schemas.validation import (
    CONFIG_STYLE,
    NOT_SHOWN,
    RULES_STYLE,
    SINKS_STYLE,
    FieldError,
    Style,
    field_errors,
    model_keys,
)

ROOT = Path(__file__).resolve().parents[2]


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    to: list[str]
    url: str = "http://127.0.0.1"
    sasl_password: str | None = None
    mode: Literal["fast", "slow"] = "fast"
    batch: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _http(self) -> Route:
        if not self.url.startswith("http"):
            raise ValueError(f"url: expected an http:// URL, got {self.url!r}")
        return self


class File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    routes: list[Route] = []


def problems(data: object, style: Style) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        File.model_validate(data)
    keys = {"routes": model_keys(Route)}

    def suggest(parent: tuple[str | int, ...]) -> list[str]:
        return keys["routes"] if parent[-2:-1] == ("routes",) else []

    return [str(p) for p in field_errors(caught.value, style, prefix=("x",), suggest=suggest)]


BAD = {"routes": [{"batch": 0, "mode": "x", "tooo": 1}, {"to": ["a"], "url": "ftp://h"}]}


def test_the_config_style_uses_our_words_and_toml_types() -> None:
    assert problems(BAD, CONFIG_STYLE) == [
        "x.routes.0.to: is required",
        "x.routes.0.mode: must be one of 'fast' or 'slow', got string 'x'",
        "x.routes.0.batch: must be >= 1, got integer 0",
        "x.routes.0: unknown key 'tooo' (did you mean 'to'?)",
        "x.routes.1.url: expected an http:// URL, got 'ftp://h'",
    ]


def test_the_sinks_style_keeps_pydantics_words_and_repr() -> None:
    assert problems(BAD, SINKS_STYLE) == [
        "x.routes.0.to: is required",
        "x.routes.0.mode: Input should be 'fast' or 'slow', got 'x'",
        "x.routes.0.batch: Input should be greater than or equal to 1, got 0",
        "x.routes.0: unknown key 'tooo' (did you mean 'to'?)",
        "x.routes.1.url: expected an http:// URL, got 'ftp://h'",
    ]


def test_the_rules_style_brackets_indexes_and_shows_no_values() -> None:
    assert problems(BAD, RULES_STYLE) == [
        "x.routes[0].to: required key is missing",
        "x.routes[0].mode: Input should be 'fast' or 'slow'",
        "x.routes[0].batch: Input should be greater than or equal to 1",
        "x.routes[0].tooo: unknown key",
        "x.routes[1].url: expected an http:// URL, got 'ftp://h'",
    ]


def test_a_secret_is_never_echoed_not_even_a_mistyped_one() -> None:
    data = {"routes": [{"to": [], "sasl_password": 12345}]}
    for style in (CONFIG_STYLE, SINKS_STYLE):
        (line,) = problems(data, style)
        assert line.endswith(f", got {NOT_SHOWN}") and "12345" not in line


def test_the_unknown_key_of_the_root_is_at_the_top_level() -> None:
    with pytest.raises(ValidationError) as caught:
        File.model_validate({"rootes": []})
    assert field_errors(caught.value, CONFIG_STYLE) == [
        FieldError(("rootes",), "(top level)", "unknown key 'rootes'")
    ]


def test_a_discriminated_unions_tag_is_dropped() -> None:
    with pytest.raises(ValidationError) as caught:
        File.model_validate({"routes": [{"to": 1}]})
    (problem,) = field_errors(caught.value, RULES_STYLE, drop="routes")
    assert problem.loc == (0, "to") and problem.key == "[0].to"


@pytest.mark.parametrize(
    "path",
    ["config/loader.py", "sinks/config.py", "streams/rules/loader.py", "streams/rules/builtin.py"],
)
def test_the_file_loaders_render_through_the_one_renderer(path: str) -> None:
    """None of them reads pydantic's error dicts itself any more."""
    source = (ROOT / path).read_text()
    assert "field_errors(" in source
    assert not re.search(r"\.errors\(", source), f"{path} renders a ValidationError itself"
