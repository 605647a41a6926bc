"""JSON Schema of the contract, for producers written in other languages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from rankwatch.schemas.alert import Alert
from rankwatch.schemas.events import LogEvent, StepEvent

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schemas() -> dict[str, dict[str, Any]]:
    """One JSON Schema per event kind, keyed by file name.

    >>> sorted(json_schemas())
    ['alert.schema.json', 'log.schema.json', 'step.schema.json']
    """
    out = {}
    for kind, model in (("step", StepEvent), ("log", LogEvent), ("alert", Alert)):
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = SCHEMA_DIALECT
        # A name, not an address: rankwatch publishes no schema on the web.
        schema["$id"] = f"urn:rankwatch:schema:v1:{kind}"
        # The models allow extra fields; say so explicitly for other languages' validators.
        schema["additionalProperties"] = True
        schema["description"] = (model.__doc__ or "").strip().split("\n\n")[0]
        out[f"{kind}.schema.json"] = schema
    return out


def export_json_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        written.append(path)
    return written
