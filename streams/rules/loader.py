"""Reading a rules file: every problem with its line, then a :class:`RuleSet` ready to run.

>>> rules = parse_rules('''
... [builtin.straggler]
... enabled = false
...
... [[rule]]
... name = "disk_full"
... kind = "log_pattern"
... pattern = "No space left on device"
... severity = "critical"
...
... [[jobs]]
... match = "bench-*"
... rule.disk_full.enabled = false
... ''')
>>> [d.rule for d in rules.detectors_for("llama-70b") if hasattr(d, "rule")][-1:]
['disk_full']
>>> any(hasattr(d, "rule") and d.rule == "disk_full" for d in rules.detectors_for("bench-1"))
False
>>> parse_rules('[[rule]]\\nname = "x"\\nkind = "log_pattern"\\npattern = "("\\n', "r.toml")
Traceback (most recent call last):
...
rankwatch.streams.rules.exceptions.RulesFileError: r.toml: 1 problem in the rules file:
  r.toml:4: rule[0].pattern: bad regex: missing ), unterminated subpattern at position 0
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rankwatch.schemas.validation import RULES_STYLE, dotted, field_errors
from rankwatch.streams.engine import Detector, Engine, EngineConfig
from rankwatch.streams.exceptions import DetectorConfigError
from rankwatch.streams.incidents import IncidentPolicy
from rankwatch.streams.rules import builtin, plugins, user_rules
from rankwatch.streams.rules._lines import KeyLines, Loc
from rankwatch.streams.rules.exceptions import PluginError, Problem, RulesFileError
from rankwatch.streams.rules.model import KINDS, PythonRule, RulesFile, UserRule

_USER_RULE: TypeAdapter[Any] = TypeAdapter(UserRule)
_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")


@dataclass
class Profile:
    """The rules of one group of jobs: the top level, or one ``[[jobs]]`` override."""

    match: tuple[str, ...]  # globs; empty for the top level
    detectors: list[Detector]
    #: rule -> its effective definition (for telling what a reload changed)
    described: dict[str, Any] = field(default_factory=dict)


@dataclass
class RuleSet:
    """A validated rules file: the detectors of each group of jobs.

    :meth:`detectors_for` is the engine's ``resolve``: it is asked once per job (globs are
    matched then, never per event); the first ``[[jobs]]`` that matches wins.
    """

    source: str
    default: Profile
    overrides: list[Profile] = field(default_factory=list)

    def detectors_for(self, job_id: str) -> list[Detector]:
        for profile in self.overrides:
            if any(fnmatchcase(job_id, pattern) for pattern in profile.match):
                return profile.detectors
        return self.default.detectors

    def engine(self, config: EngineConfig | None = None) -> Engine:
        """A fresh engine running these rules."""
        config = config or EngineConfig()
        config = dataclasses.replace(config, incidents=self.policy(config.incidents))
        resolve = self.detectors_for if self.overrides else None
        return Engine(self.default.detectors, config, resolve=resolve)

    def install(self, engine: Engine) -> None:
        """Make a running engine use these rules (live reload)."""
        resolve = self.detectors_for if self.overrides else None
        engine.replace_detectors(self.default.detectors, resolve=resolve)
        engine.book.policy = self.policy(engine.book.policy)

    def policy(self, base: IncidentPolicy) -> IncidentPolicy:
        """``base`` with the single-record pattern rules alerting at once, like ``cuda_oom``:
        a rank's own record is news now, not after the wait that gathers ranks."""
        names = {
            d.rule
            for p in (self.default, *self.overrides)
            for d in p.detectors
            if isinstance(d, user_rules.LogPatternDetector) and d.config.min_ranks == 1
        }
        return dataclasses.replace(base, immediate_rules=base.immediate_rules | names)

    def describe(self) -> dict[str, Any]:
        """Every rule's effective settings, keyed ``rule`` and ``jobs[GLOBS].rule``."""
        out = dict(self.default.described)
        for p in self.overrides:
            out.update({f"jobs[{','.join(p.match)}].{k}": v for k, v in p.described.items()})
        return out


def changes(old: RuleSet, new: RuleSet) -> list[str]:
    """What differs between two rule sets, one line per rule: for the worker's log."""
    before, after = old.describe(), new.describe()
    out = [f"added {k}" for k in after if k not in before]
    out += [f"removed {k}" for k in before if k not in after]
    for key in before.keys() & after.keys():
        if before[key] != after[key]:
            a, b = before[key], after[key]
            diff = [
                f"{s}: {a.get(s)!r} -> {b.get(s)!r}"
                for s in sorted(a.keys() | b.keys())
                if a.get(s) != b.get(s)
            ]
            out.append(f"changed {key} ({', '.join(diff)})")
    return sorted(out)


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rules file; raises :class:`RulesFileError` listing every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesFileError(str(p), [Problem(None, "", f"cannot read: {exc}")]) from None
    return parse_rules(text, str(p))


def check_rules(path: str | Path) -> list[Problem]:
    """Every problem of a rules file (empty: it is valid)."""
    try:
        load_rules(path)
    except RulesFileError as exc:
        return exc.problems
    return []


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Validate a rules file's text; see the module docstring."""
    return _Parser(text, source).run()


def _dotted(loc: Loc) -> str:
    return dotted(loc, brackets=True)


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.problems: list[Problem] = []
        self.lines: KeyLines | None = None

    def problem(self, loc: Loc, message: str) -> None:
        line = self.lines.line(loc) if self.lines is not None else None
        self.problems.append(Problem(line, _dotted(loc), message))

    def pydantic(self, prefix: Loc, exc: ValidationError, tag: str | None = None) -> None:
        # ``tag``: the discriminated union's own level, not a key of the file.
        for problem in field_errors(exc, RULES_STYLE, prefix=tuple(prefix), drop=tag):
            self.problem(problem.loc, problem.message)

    def fail(self) -> RulesFileError:
        self.problems.sort(key=lambda p: (p.line or 0, p.field))
        return RulesFileError(self.source, self.problems)

    def run(self) -> RuleSet:
        try:
            data = tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            m = _TOML_AT.search(str(exc))
            line = int(m.group(1)) if m else None
            message = _TOML_AT.sub("", str(exc)).strip()
            raise RulesFileError(self.source, [Problem(line, "", f"not TOML: {message}")]) from None
        self.lines = KeyLines(self.text)
        try:
            shape = RulesFile.model_validate(data)
        except ValidationError as exc:
            self.pydantic([], exc)
            shape = None
        raw_rules: list[Any] = data["rule"] if isinstance(data.get("rule"), list) else []
        rules = self.user_rules(raw_rules)
        base_builtin = data.get("builtin") if isinstance(data.get("builtin"), dict) else {}
        self.builtin_settings(["builtin"], base_builtin)
        if shape is None or self.problems:
            # Overrides are checked against a valid base only: report what is wrong first.
            if shape is not None:
                self.check_overrides(shape, rules)
            raise self.fail()
        default = self.profile((), ["builtin"], shape.builtin, rules)
        overrides = []
        for i, jobs in enumerate(shape.jobs):
            merged_builtin = {
                k: {**shape.builtin.get(k, {}), **jobs.builtin.get(k, {})}
                for k in shape.builtin.keys() | jobs.builtin.keys()
            }
            self.builtin_settings(["jobs", i, "builtin"], jobs.builtin, shape.builtin)
            merged_rules = self.override_rules(["jobs", i, "rule"], raw_rules, rules, jobs.rule)
            overrides.append(
                self.profile(
                    tuple(jobs.match), ["jobs", i, "builtin"], merged_builtin, merged_rules
                )
            )
        if self.problems:
            raise self.fail()
        return RuleSet(self.source, default, overrides)

    # -- user rules -------------------------------------------------------------------------
    def user_rules(self, raw: list[Any]) -> list[Any | None]:
        out: list[Any | None] = []
        names: dict[str, int] = {}
        for i, item in enumerate(raw):
            out.append(self.user_rule(["rule", i], item))
            name = item.get("name") if isinstance(item, dict) else None
            if isinstance(name, str):
                if name in builtin.CONFIGS:
                    self.problem(["rule", i, "name"], f"{name!r} is a built-in rule id")
                elif name in names:
                    self.problem(["rule", i, "name"], f"{name!r} is also rule[{names[name]}]")
                names.setdefault(name, i)
        return out

    def user_rule(self, loc: Loc, item: Any) -> Any | None:
        if not isinstance(item, dict):
            self.problem(loc, "a rule must be a table")
            return None
        kind = item.get("kind")
        if kind not in KINDS:
            self.problem([*loc, "kind"], f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
            return None
        try:
            rule = _USER_RULE.validate_python(item)
        except ValidationError as exc:
            self.pydantic(loc, exc, tag=kind)
            return None
        if isinstance(rule, PythonRule):
            try:
                self.plugin(rule)
            except PluginError as exc:
                self.problem([*loc, "class" if rule.class_ else "entry_point"], str(exc))
                return None
        return rule

    @staticmethod
    def plugin(rule: PythonRule) -> Any:
        cls = (
            plugins.load_class(rule.class_)
            if rule.class_
            else plugins.entry_point_class(rule.entry_point or "")
        )
        return plugins.instantiate(cls, rule.options)

    def override_rules(
        self, loc: Loc, raw: list[Any], rules: list[Any], changes: dict[str, dict[str, Any]]
    ) -> list[Any]:
        by_name = {r.name: i for i, r in enumerate(rules) if r is not None}
        out = list(rules)
        for name, change in changes.items():
            if name not in by_name:
                known = ", ".join(sorted(by_name)) or "none"
                self.problem([*loc, name], f"no user rule named {name!r} (rules: {known})")
                continue
            i = by_name[name]
            if "name" in change or "kind" in change:
                self.problem([*loc, name], "an override cannot change 'name' or 'kind'")
                continue
            merged = {**raw[i], **change}
            try:
                rule = _USER_RULE.validate_python(merged)
            except ValidationError as exc:
                self.pydantic([*loc, name], exc, tag=merged.get("kind"))
                continue
            if isinstance(rule, PythonRule):
                try:
                    self.plugin(rule)
                except PluginError as exc:
                    self.problem([*loc, name], str(exc))
                    continue
            out[i] = rule
        return out

    def check_overrides(self, shape: RulesFile, rules: list[Any]) -> None:
        for i, jobs in enumerate(shape.jobs):
            self.builtin_settings(["jobs", i, "builtin"], jobs.builtin, shape.builtin)

    # -- built-in rules ---------------------------------------------------------------------
    def builtin_settings(
        self, loc: Loc, section: Any, base: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Check settings' names and types, then the configs' own checks (merged on ``base``
        for a ``[[jobs]]`` override)."""
        if not isinstance(section, dict):
            return
        for rule, settings in section.items():
            if not isinstance(settings, dict):
                self.problem([*loc, rule], "must be a table of settings")
                continue
            problems = builtin.check_settings(rule, settings)
            if not problems:
                merged = {**(base or {}).get(rule, {}), **settings}
                problems = builtin.check_config(rule, merged)
            for key, message in problems:
                self.problem([*loc, rule, key] if key else [*loc, rule], message)

    def profile(
        self,
        match: tuple[str, ...],
        loc: Loc,
        builtin_settings: dict[str, dict[str, Any]],
        rules: Sequence[Any],
    ) -> Profile:
        detectors: list[Detector] = []
        try:
            detectors = builtin.build_detectors(builtin_settings)
        except DetectorConfigError as exc:
            rule = exc.args[1] if len(exc.args) > 1 else ""
            key, message = builtin.config_problem(rule, DetectorConfigError(exc.args[0]))
            self.problem([*loc, rule, key] if key else [*loc, rule], message)
        described: dict[str, Any] = {
            rule: {"enabled": True, **builtin_settings.get(rule, {})} for rule in builtin.RULE_IDS
        }
        slots: dict[str, str] = {}
        for i, rule in enumerate(rules):
            if rule is None:
                continue
            described[rule.name] = rule.model_dump(mode="json", by_alias=True)
            if not rule.enabled:
                continue
            detector = self.plugin(rule) if isinstance(rule, PythonRule) else user_rules.build(rule)
            if detector.name in slots or detector.name in {d.name for d in detectors}:
                self.problem(
                    ["rule", i, "name"],
                    f"state slot {detector.name!r} is already used by "
                    f"{slots.get(detector.name, 'a built-in detector')}",
                )
                continue
            slots[detector.name] = rule.name
            detectors.append(detector)
        return Profile(match, detectors, described)
