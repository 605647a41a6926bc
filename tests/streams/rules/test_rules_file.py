"""The rules file: every problem with its line and field; what a valid file builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import rules_data

from rankwatch.cli.main import main
from rankwatch.streams.rules import RulesFileError, check_rules, load_rules, parse_rules

BAD = """\
version = 1

[builtin.loss_explosion]
sustain_steps = "5"

[builtin.straggle]
enabled = false

[builtin.throughput_drop]
drop_ratio = 1.5

[[rule]]
name = "disk_full"
kind = "log_pattern"
pattern = "No space left ("
severity = "urgent"

[[rule]]
name = "low_mfu"
kind = "threshold"
field = "mfu"
op = "<"
colour = "red"

[[rule]]
name = "p"
kind = "python"
class = "no_such_module_here:Thing"

[[rule]]
name = "x"
kind = "magic"

[[rule]]
name = "loss_explosion"
kind = "frequency"
pattern = "a"
count = 3
window_s = 5

[[jobs]]
match = "llama-*"
[jobs.builtin.loss_explosion]
ratoi = 3
"""


def test_every_problem_has_its_line_and_field() -> None:
    with pytest.raises(RulesFileError) as info:
        parse_rules(BAD, "bad.toml")
    got = [(p.line, p.field, p.message) for p in info.value.problems]
    expected = [
        (4, "builtin.loss_explosion.sustain_steps", "expected an integer, got str"),
        (6, "builtin.straggle", "unknown built-in rule"),
        (10, "builtin.throughput_drop.drop_ratio", "ThroughputDropConfig.drop_ratio must be "),
        (15, "rule[0].pattern", "bad regex: missing ), unterminated subpat"),
        (16, "rule[0].severity", "Input should be 'info', 'warning' or 'cr"),
        (23, "rule[1].colour", "unknown key"),
        (28, "rule[2].class", "cannot import 'no_such_module_here': Mod"),
        (32, "rule[3].kind", "unknown kind 'magic'"),
        (35, "rule[4].name", "'loss_explosion' is a built-in rule id"),
        (44, "jobs[0].builtin.loss_explosion.ratoi", "unknown setting"),
    ]
    assert len(got) == len(expected)
    for (line, field, message), (want_line, want_field, want_start) in zip(
        got, expected, strict=True
    ):
        assert (line, field) == (want_line, want_field) and message.startswith(want_start), message
    assert str(info.value).startswith("bad.toml: 10 problems in the rules file:\n  bad.toml:4: ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[rule]]\nname = 'x'\nkind = 'threshold'\nfield = 'mfu'\nop = '<'\n",
         "1: rule[0]: op '<' needs a value"),
        ("version = 2\n", "1: version: Input should be 1"),
        ("[rules]\n", "1: rules: unknown key"),
        ("x = \n", "1: not TOML: Invalid value"),
        ("[[rule]]\nname = 'a b'\nkind = 'log_pattern'\npattern = 'x'\n",
         "2: rule[0].name: String should match pattern"),
        ("[[rule]]\nname = 'a'\nkind = 'log_pattern'\npattern = 'x'\n"
         "[[rule]]\nname = 'a'\nkind = 'log_pattern'\npattern = 'y'\n",
         "6: rule[1].name: 'a' is also rule[0]"),
        ("[[rule]]\nname = 'a'\nkind = 'log_pattern'\npattern = 'x'\nsummary = '{who}'\n",
         "5: rule[0].summary: unknown placeholder(s) ['who']"),
        ("[[jobs]]\nmatch = 'x-*'\nrule.nope.enabled = false\n",
         "3: jobs[0].rule.nope: no user rule named 'nope'"),
        ("[builtin.loss_explosion]\nratio = 2.0\n[[jobs]]\nmatch = 'x'\n"
         "builtin.loss_explosion.recover_ratio = 2.5\n",
         "5: jobs[0].builtin.loss_explosion.recover_ratio: LossExplosionConfig.recover_ratio"),
        ("[[rule]]\nname = 'p'\nkind = 'python'\n"
         "class = 'rankwatch.streams.rules.examples:LossPlateau'\noptions = { window = 1 }\n",
         "4: rule[0].class: LossPlateau(**options) failed: window must be >= 2"),
    ],
)  # fmt: skip
def test_one_problem(text: str, expected: str) -> None:
    with pytest.raises(RulesFileError) as info:
        parse_rules(text, "r.toml")
    rendered = [p.render("r.toml") for p in info.value.problems]
    assert any(r.startswith(f"r.toml:{expected}") for r in rendered), rendered


def test_valid_file_builds_profiles_per_job_glob() -> None:
    rules = parse_rules(rules_data.RULES)
    names = {getattr(d, "rule", d.name) for d in rules.detectors_for("llama-7b")}
    assert {"disk_full", "low_mfu", "retry_storm", "loss_plateau", "loss_explosion"} <= names
    assert "straggler" not in names
    bench = {getattr(d, "rule", d.name) for d in rules.detectors_for("bench-1")}
    assert "low_mfu" not in bench and "loss_explosion" not in bench and "disk_full" in bench
    assert rules.detectors_for("smoke-2") is rules.detectors_for("bench-1")  # one list, cached


def test_rules_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(rules_data.RULES)
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    assert main(["rules", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok\n"
    assert main(["rules", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}: ok" and len(out) == 11
    assert out[1] == f"{bad}:4: builtin.loss_explosion.sustain_steps: expected an integer, got str"
    assert check_rules(tmp_path / "missing.toml")[0].message.startswith("cannot read")
    assert load_rules(good).default.detectors
