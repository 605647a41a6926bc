"""docs/CONTRACT.md is generated from the models (rankwatch.schemas.contract_doc) and kept up to
date: change a model, then run ``rankwatch schema markdown -o docs/CONTRACT.md``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from rankwatch.schemas import STEP_METRICS, Alert, LogEvent, StepEvent
from rankwatch.schemas.contract_doc import _check_meanings, contract_markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "CONTRACT.md"


def test_docs_contract_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == contract_markdown(), (
        "docs/CONTRACT.md is stale: run `rankwatch schema markdown -o docs/CONTRACT.md`"
    )


def test_every_field_of_every_model_is_on_the_page_with_a_meaning() -> None:
    assert _check_meanings() == []
    page = contract_markdown()
    for model in (StepEvent, LogEvent, Alert):
        for name in model.model_fields:
            assert f"| `{name}` |" in page, name
    assert all(f"`{name}`" in page for name in STEP_METRICS)


def test_ranges_come_from_the_models() -> None:
    page = contract_markdown()
    assert "| `gpu_memory_usage` | float, 0-100 | no |" in page
    assert "| `rank` | int (64-bit) >= 0 | yes |" in page
    assert "| `loss` | float or non-finite | no |" in page


def test_the_command_writes_the_same_page(tmp_path: Path) -> None:
    out = tmp_path / "CONTRACT.md"
    subprocess.run(
        [sys.executable, "-m", "rankwatch.cli", "schema", "markdown", "-o", str(out)],
        check=True,
        timeout=60,
    )
    assert out.read_text(encoding="utf-8") == contract_markdown()


def test_the_readme_points_at_the_page() -> None:
    assert "](docs/CONTRACT.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
