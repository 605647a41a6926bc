"""``rankwatch schema export DIR``, ``rankwatch schema markdown`` and ``rankwatch validate
--input FILE.jsonl``."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO


def register(sub: Any) -> None:
    schema = sub.add_parser("schema", help="the event contract as JSON Schema")
    schema_sub = schema.add_subparsers(dest="schema_command", metavar="ACTION")
    schema_sub.required = True
    export = schema_sub.add_parser("export", help="write one JSON Schema file per event kind")
    export.add_argument("directory", type=Path, metavar="DIR")
    export.set_defaults(handler=_export)
    markdown = schema_sub.add_parser(
        "markdown", help="the contract as Markdown, generated from the models (docs/CONTRACT.md)"
    )
    markdown.add_argument(
        "--output", "-o", type=Path, metavar="FILE", help="write it there (default: stdout)"
    )
    markdown.set_defaults(handler=_markdown)

    validate = sub.add_parser(
        "validate",
        help="check a JSON-lines file of events against the contract",
        description="Prints LINE: error for each bad line and a summary; exit 0 only when "
        "every line is a valid event.",
    )
    validate.add_argument(
        "--input",
        "-i",
        required=True,
        metavar="FILE.jsonl",
        help="file of events, one JSON object per line ('-' for stdin)",
    )
    validate.add_argument(
        "--job", metavar="JOB_ID", help="job_id for lines that carry none (structured trainer logs)"
    )
    validate.add_argument("--quiet", "-q", action="store_true", help="print only the summary")
    validate.set_defaults(handler=_validate)


def _export(args: argparse.Namespace) -> int:
    from rankwatch.schemas.jsonschema import export_json_schemas

    for path in export_json_schemas(args.directory):
        print(path)
    return 0


def _markdown(args: argparse.Namespace) -> int:
    from rankwatch.schemas.contract_doc import contract_markdown

    text = contract_markdown()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


def validate_lines(lines: TextIO | Any, job: str | None, report: TextIO | None) -> Counter[str]:
    """Validate each line; write ``LINE: error`` to ``report``; count kinds and errors."""
    from rankwatch.schemas import EventDecodeError, decode

    defaults = {"job_id": job} if job else None
    counts: Counter[str] = Counter()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue  # blank lines are layout, not events
        try:
            event = decode(line, defaults=defaults)
        except EventDecodeError as error:
            counts["invalid"] += 1
            if report is not None:
                print(f"{number}: {error}", file=report)
            continue
        counts[event.kind] += 1
    return counts


def _validate(args: argparse.Namespace) -> int:
    report = None if args.quiet else sys.stdout
    if args.input == "-":
        counts = validate_lines(sys.stdin.buffer, args.job, report)
    else:
        try:
            # Binary, so invalid UTF-8 on one line is that line's error, not the file's.
            with open(args.input, "rb") as handle:
                counts = validate_lines(handle, args.job, report)
        except OSError as error:
            print(
                f"rankwatch validate: cannot read {args.input}: {error.strerror}", file=sys.stderr
            )
            return 2
    valid = counts["step"] + counts["log"] + counts["alert"]
    print(
        f"{valid + counts['invalid']} events: {valid} valid "
        f"({counts['step']} step, {counts['log']} log, {counts['alert']} alert), "
        f"{counts['invalid']} invalid"
    )
    return 1 if counts["invalid"] else 0
