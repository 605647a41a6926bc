"""Secrets stay home: redact credentials from log messages before they leave the process.

Runs on the producer's background thread (never on the training thread), once per log record.
Each pattern keeps the part that tells a reader *what* was there (``password=``, the URL's user)
and replaces the secret itself with ``[REDACTED]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

REDACTED = "[REDACTED]"

# (pattern, replacement). Replacements keep group 1 (the label) where there is one.
_BUILTIN: tuple[tuple[str, str], ...] = (
    # PEM private keys (a key file dumped into a log), the whole block.
    (
        r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
        r"-----BEGIN \1PRIVATE KEY-----" + REDACTED + r"-----END \1PRIVATE KEY-----",
    ),
    # Authorization headers first: their token may itself look like one of the others.
    (
        r"(?i)(\bauthorization\s*[:=]\s*[\"']?(?:bearer|basic|token)\s+)[A-Za-z0-9._~+/=-]+",
        r"\1" + REDACTED,
    ),
    (r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}", r"\1" + REDACTED),
    # Hugging Face user/org access tokens.
    (r"\bhf_[A-Za-z0-9]{30,}\b", REDACTED),
    # OpenAI-style keys: sk-..., sk-proj-..., sk-ant-... (Anthropic).
    (r"\bsk-[A-Za-z0-9_-]{16,}", REDACTED),
    # GitHub tokens, classic and fine-grained.
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}\b", REDACTED),
    (r"\bgithub_pat_[A-Za-z0-9_]{22,}", REDACTED),
    # Slack tokens, and Slack incoming-webhook URLs (the path is the secret).
    (r"\bxox[abposre]-[A-Za-z0-9-]{10,}", REDACTED),
    (r"(https://hooks\.slack\.com/services/)[A-Za-z0-9/_-]+", r"\1" + REDACTED),
    # Google API keys.
    (r"\bAIza[0-9A-Za-z_-]{35}", REDACTED),
    # Bare JWTs (header.payload.signature), e.g. a token printed without "Bearer".
    (r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+", REDACTED),
    # AWS access key ids (long-term AKIA, temporary ASIA).
    (r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", REDACTED),
    # AWS secret keys where they are named (config files, env dumps, boto errors).
    (r"(?i)(\baws_secret_access_key[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{20,}", r"\1" + REDACTED),
    # Passwords inside URLs: scheme://user:password@host.
    (r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(@)", r"\1" + REDACTED + r"\2"),
    # Generic assignments: password=..., token: ..., api_key="...", secret=...
    (
        r"(?i)(\b[\w.-]*(?:password|passwd|pwd|secret|token|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)"
        r"(?!\[REDACTED\])[^\s\"',;&]+",
        r"\1" + REDACTED,
    ),
)


@dataclass(frozen=True)
class Scrubber:
    """Applies the built-in patterns and ``extra_patterns`` (regexes, matches fully replaced).

    >>> s = Scrubber(extra_patterns=[r"wandb-[0-9a-f]{8}"])
    >>> s("login with hf_abcdefghijklmnopqrstuvwxyzABCDEFGH at https://bob:hunter2@db/x")
    'login with [REDACTED] at https://bob:[REDACTED]@db/x'
    >>> s("key wandb-0badf00d, password=swordfish")
    'key [REDACTED], password=[REDACTED]'
    """

    extra_patterns: Iterable[str] = ()
    _rules: list[tuple[re.Pattern[str], str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rules = [(re.compile(p), r) for p, r in _BUILTIN]
        rules += [(re.compile(p), REDACTED) for p in self.extra_patterns]
        object.__setattr__(self, "_rules", rules)

    def __call__(self, text: str) -> str:
        for pattern, replacement in self._rules:
            text = pattern.sub(replacement, text)
        return text


def scrub(text: str) -> str:
    """Redact with the built-in patterns only.

    >>> scrub("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc")
    'Authorization: Bearer [REDACTED]'
    """
    return _DEFAULT(text)


_DEFAULT = Scrubber()
