"""No file of the repository links outside it: README, docs, code and comments point at files of
the repository (the contract is docs/CONTRACT.md), never at a web page or a folder beside it.

What is not a link, and so allowed: loopback and reserved example hosts (``127.0.0.1``,
``localhost``, ``*.example``, one-label names such as ``http://am`` that resolve nowhere public),
templates (``http://{host}``), identifiers that merely have the form of a URL (XML namespaces,
the JSON Schema dialect), vendored third-party files as published (their licence banners), and
the few places below that must hold a real host as data, each with its reason.
"""

from __future__ import annotations

import re
import subprocess
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_URL = re.compile(r"https?://(\[[^\]]*\]|[^/\s\"'`<>()\[\]]+)")
_EXAMPLE_HOSTS = re.compile(
    r"^(127\.0\.0\.1|0\.0\.0\.0|localhost|\[::1?\]|[^.]+|.*\.(example|invalid|test|localhost|internal)"
    r"|(.*\.)?example\.(com|org|net))$"
)
#: Identifiers in URL form: names, never fetched.
_IDENTIFIERS = (
    re.compile(r'xmlns(:\w+)?="https?://[^"]*"'),
    re.compile(r'schemaLocation="[^"]*"'),
    re.compile(r"https://json-schema\.org/draft/2020-12/schema"),  # JSON Schema's dialect name
)
#: (path pattern, host): real hosts the repository needs as data, not as links.
_DATA = {
    # Output recorded from real torchrun runs: its error footer names PyTorch's docs.
    ("tests/producers/data/*.log", "pytorch.org"),
    ("tests/streams/detectors/test_failures.py", "pytorch.org"),
    # The secret scrubber must recognise real webhook URLs, and its tests must feed it some.
    ("producers/_scrub.py", r"hooks\.slack\.com"),
    ("tests/producers/test_scrub_secrets.py", "hooks.slack.com"),
    ("tests/producers/test_scrub_secrets.py", "oapi.dingtalk.com"),
}
#: Third-party files kept exactly as published (licence banners included).
_VENDORED = ("ui/static/vendor/*",)
#: Folders beside the repository that no file may send a reader to.
_OUTSIDE = re.compile(r"\.\./shared/|(?<![\w/])(shared/(seeds|CONTRACT|DESIGN)|seeds/\d)")
_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary (images, databases): no links to read


def external_links(relative: str, text: str) -> list[str]:
    """The links of one file that leave the repository, as ``LINE: URL``.

    >>> external_links("a.md", "see http://127.0.0.1:9092 and https://x.example/a")
    []
    >>> external_links("a.md", "see https://pytorch.org/docs")
    ['1: https://pytorch.org']
    """
    if any(fnmatch(relative, pattern) for pattern in _VENDORED):
        return []
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for identifier in _IDENTIFIERS:
            line = identifier.sub("", line)
        for match in _URL.finditer(line):
            host = match.group(1)
            if not host.startswith("["):  # user:password@host:port -> host
                host = host.rsplit("@", 1)[-1].split(":")[0]
            if "{" in host or _EXAMPLE_HOSTS.match(host):
                continue
            if any(fnmatch(relative, p) and host == h for p, h in _DATA):
                continue
            found.append(f"{number}: {match.group(0)}")
        if _OUTSIDE.search(line):
            found.append(f"{number}: {line.strip()}")
    return found


def test_no_file_links_outside_the_repository() -> None:
    problems = []
    for path in _files():
        relative = str(path.relative_to(ROOT))
        if relative == "tests/test_no_external_links.py":
            continue  # this file names what it looks for
        text = _text(path)
        if text is not None:
            problems += [f"{relative}:{found}" for found in external_links(relative, text)]
    assert problems == []


def test_markdown_links_point_at_files_of_the_repository() -> None:
    problems = []
    for path in _files():
        if path.suffix != ".md":
            continue
        for target in _MD_LINK.findall(path.read_text(encoding="utf-8")):
            if target.startswith(("#", "http://", "https://", "mailto:")):
                continue
            resolved = (path.parent / target.split("#")[0]).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                problems.append(f"{path.relative_to(ROOT)}: {target}")
    assert problems == []


def test_the_check_finds_what_it_is_for() -> None:
    assert external_links("README.md", "[the contract](../shared/CONTRACT.md)")
    assert external_links("cli/x.py", "# from shared/seeds/001.txt")
    assert external_links("schemas/x.py", 'ID = "https://rankwatch.dev/schema/v1"')
    assert external_links("config/x.toml", '# url = "https://hooks.slack.com/services/T/B/X"')
    assert not external_links("tests/x.py", 'URL = "https://hooks.slack.example/T000"')
    assert not external_links(
        "infra/pom.xml", '<project xmlns="http://maven.apache.org/POM/4.0.0">'
    )
