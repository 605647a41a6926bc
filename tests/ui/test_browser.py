"""What a person sees in Debian's chromium: the leaking rank marked in the memory heatmap, an
alert's evidence and its culprit's curve, a new alert arriving live, tracebacks folded."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from rankwatch.ui.testing import (
    ChromiumUnavailable,
    Filled,
    UIServer,
    browser_page,
    fill_store,
    find_chromium,
    write_alert_like,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    try:
        find_chromium()
    except ChromiumUnavailable as why:
        pytest.skip(f"no browser for the dashboard's tests: {why}")
    with browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # A content-security-policy violation is logged to the console as an error.
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.errors = errors
        yield page


def test_the_leaking_rank_is_the_marked_row_of_the_memory_heatmap(
    page: Any, server: UIServer
) -> None:
    page.goto(server.url + "/")
    page.get_by_role("link", name="ui-job").click()
    page.wait_for_selector("body[data-heatmap-drawn]")
    assert page.locator("#metric").input_value() == "gpu_memory_allocated_mb"
    assert page.locator("#heatmap-marked").inner_text().startswith("rank 5 deviates most")
    assert page.locator("#heatmap").get_attribute("data-marked") == "5"
    # The outline is drawn on rank 5's row: its pixels are the marker's red.
    red = page.evaluate(
        """() => { const c = document.getElementById('heatmap');
        const rh = Math.max(1, Math.min(12, Math.floor(640 / 16)));
        const y = heatmap.TOP + 5 * rh - 2;  // the outline's top edge, above rank 5's row
        const [r, g, b] = c.getContext('2d').getImageData(c.width / 2, y, 1, 1).data;
        return [r, g, b]; }"""
    )
    assert red == [228, 0, 43]
    measure = page.evaluate("performance.getEntriesByName('heatmap').length")
    assert measure == 1
    # Switching the metric redraws: loss marks nobody in particular, but draws.
    page.select_option("#metric", "loss")
    expect(page.locator("#heatmap-title")).to_have_text(re.compile(r"^loss, max"))
    assert page.errors == []


def test_an_alert_opens_its_evidence_and_the_culprits_curve(
    page: Any, server: UIServer, filled: tuple[str, Filled]
) -> None:
    page.goto(server.url + "/jobs/ui-job")
    page.wait_for_selector("body[data-heatmap-drawn]")
    row = page.locator("#alerts tbody tr", has_text="memory_growth")
    row.get_by_role("link").click()
    page.wait_for_selector("body[data-curve-drawn]")
    assert page.locator("#alert-rule").inner_text() == "memory_growth"
    assert page.locator("#alert-summary").inner_text().startswith("rank 5: GPU memory")
    evidence = page.locator("#evidence-numbers").inner_text()
    assert "slope_per_step" in evidence and "rise" in evidence
    legend = page.locator("#alert-curve .u-legend").inner_text()
    assert "rank 5" in legend and "job median" in legend
    assert page.locator("#alert-logs tbody tr").count() >= 1
    assert page.errors == []


def test_a_new_alert_appears_live_without_a_reload(
    page: Any, server: UIServer, filled: tuple[str, Filled]
) -> None:
    page.goto(server.url + "/jobs/ui-job")
    page.wait_for_selector("body[data-heatmap-drawn]")
    page.evaluate("window.__sameDocument = true")
    leak = next(a for a in filled[1].alerts if a.rule == "memory_growth")
    write_alert_like(filled[0], leak, "browser-live-1", "rank 5: a new incident, live")
    page.locator("#alerts tbody tr", has_text="a new incident, live").wait_for(timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    assert page.locator("#live").inner_text() == "live"


def test_logs_fold_tracebacks_whole(
    page: Any, server: UIServer, filled: tuple[str, Filled]
) -> None:
    # The leaking rank's OOM at its last step: `rankwatch simulate`'s cuda_oom traceback.
    fill_store(filled[0], job_id="ui-oom", ranks=8, steps=40, leak_rank=2, extra="cuda_oom@39:2")
    page.goto(server.url + "/logs?job=ui-oom&level=ERROR")
    folded = page.locator("#logs details.folded")
    folded.first.wait_for()
    summary = folded.first.locator("summary").inner_text()
    assert summary.startswith("Traceback (most recent call last):")
    assert "torch.OutOfMemoryError: CUDA out of memory" in summary
    assert not folded.first.locator("pre").is_visible()
    folded.first.locator("summary").click()
    whole = folded.first.locator("pre").inner_text()
    assert 'File "/workspace/train.py", line 412, in <module>' in whole
    assert page.errors == []
