"""Python rules by module path and by entry point; ``rules test`` and ``replay --rules/--diff``
on files (the broker versions are in test_rules_broker.py)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import rules_data

from rankwatch.cli.main import main
from rankwatch.schemas import LogEvent, decode
from rankwatch.streams.rules import RulesFileError, parse_rules

PLUGIN = '''
from rankwatch.streams.findings import Finding


class Shout:
    """Every CRITICAL record is a finding (a LogDetector)."""

    name = "shout"

    def __init__(self, severity="warning"):
        self.severity = severity

    def new_job_state(self):
        return {}

    def on_log(self, job, rank, state, event):
        if event.level != "CRITICAL":
            return ()
        return (Finding("shout", rank.rank, self.severity, event.epoch, event.message),)
'''


@pytest.fixture
def plugin_dist(tmp_path: Path) -> Iterator[Path]:
    """A package ``shout_rules`` with a ``rankwatch.rules`` entry point, on sys.path."""
    (tmp_path / "shout_rules.py").write_text(PLUGIN)
    info = tmp_path / "shout_rules-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-rules\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rankwatch.rules]\nshout = shout_rules:Shout\n")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("shout_rules", None)


@pytest.mark.parametrize("how", ["class = 'shout_rules:Shout'", "entry_point = 'shout'"])
def test_python_rule_by_path_and_by_entry_point(plugin_dist: Path, how: str) -> None:
    rules = parse_rules(
        f"[[rule]]\nname = 'shout'\nkind = 'python'\n{how}\noptions = {{ severity = 'info' }}\n"
    )
    engine = rules.engine()
    event = LogEvent(job_id="j", rank=4, timestamp=1.0, level="CRITICAL", message="on fire")
    alerts = engine.process(event) + engine.flush()
    assert [(a.rule, a.ranks, a.severity) for a in alerts] == [("shout", [4], "info")]


def test_python_rule_problems(plugin_dist: Path) -> None:
    cases = {
        "entry_point = 'nope'": "no entry point 'nope' in group 'rankwatch.rules' (installed: ",
        "class = 'shout_rules:Missing'": "module 'shout_rules' has no 'Missing'",
        "class = 'shout_rules:Shout'\noptions = { loud = 1 }": "Shout(**options) failed: ",
        "class = 'rankwatch.streams.rules.model:RulesFile'": "RulesFile has no string 'name'",
    }
    for how, message in cases.items():
        with pytest.raises(RulesFileError) as info:
            parse_rules(f"[[rule]]\nname = 'p'\nkind = 'python'\n{how}\n")
        assert message in str(info.value), str(info.value)


def test_rules_test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(rules_data.RULES)
    events = rules_data.write_events(tmp_path / "events.jsonl", rules_data.job_events("llama-1"))
    expect = tmp_path / "expect.jsonl"
    args = ["rules", "test", str(rules), "--input", str(events), "--expect", str(expect)]
    assert main([*args, "--update"]) == 0
    assert "wrote 7 expected alerts" in capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("ok: 7 alerts as expected")
    # hand-written expectations: rule, ranks, step only; one wrong, one missing
    expect.write_text(
        '{"rule": "disk_full", "ranks": [0, 2], "step": 40}\n'
        '{"rule": "low_mfu", "ranks": [1], "step": 31}\n'
        '{"rule": "retry_storm", "ranks": [0], "step": 20}\n'
        '{"rule": "loss_plateau", "ranks": [0, 1, 2, 3], "step": 0}\n'
    )
    assert main(args) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "- missing:    low_mfu ranks=[1] step=31",
        "+ unexpected: crash job=llama-1 ranks=[0] step=40",
        "+ unexpected: crash job=llama-1 ranks=[0, 2, 3] step=40",
        "+ unexpected: loss_explosion job=llama-1 ranks=[2] step=50",
        "+ unexpected: low_mfu job=llama-1 ranks=[1] step=30",
        "FAILED: 1 missing, 4 unexpected, 3 as expected (246 events)",
    ]


def test_replay_file_with_rules_and_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(rules_data.RULES)
    events = rules_data.write_events(tmp_path / "events.jsonl", rules_data.job_events("llama-1"))
    out = tmp_path / "alerts.jsonl"
    argv = ["replay", "--input", str(events), "--rules", str(rules), "--output", str(out)]
    assert main([*argv, "--diff", "builtin"]) == 0
    err = capsys.readouterr().err
    alerts = [decode(line) for line in out.read_bytes().splitlines()]
    assert {a.rule for a in alerts} >= {"disk_full", "low_mfu", "loss_plateau"}  # type: ignore[union-attr]
    assert re.search(r"^  low_mfu +1 +0$", err, re.MULTILINE), err
    assert "+ low_mfu job=llama-1 ranks=[1] step=30: MFU 0.20 on rank 1 since step 30" in err
    assert "diff: 4 added, 0 removed" in err  # loss_explosion fires under both
    assert main(["replay", "--input", str(events), "--from", "1h"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[builtin.nope]\n")
    assert main(["replay", "--input", str(events), "--rules", str(bad)]) == 2
    assert "bad.toml:1: builtin.nope: unknown built-in rule" in capsys.readouterr().err
