"""Rules that users write, test and replay against history.

One TOML rules file tunes or disables each built-in rule, overrides them per job (by job-id
glob), and adds user rules without code (``log_pattern``, ``threshold``, ``frequency``) or in
Python (``python``: a detector class, see :mod:`.plugins` and :mod:`.examples`).
:func:`load_rules` validates it (every problem with its line) into a :class:`RuleSet` whose
``engine()`` runs in the worker and in replay alike.
"""

from rankwatch.streams.rules.exceptions import PluginError, Problem, RulesError, RulesFileError
from rankwatch.streams.rules.loader import (
    Profile,
    RuleSet,
    changes,
    check_rules,
    load_rules,
    parse_rules,
)

__all__ = [
    "PluginError",
    "Problem",
    "Profile",
    "RuleSet",
    "RulesError",
    "RulesFileError",
    "changes",
    "check_rules",
    "load_rules",
    "parse_rules",
]
