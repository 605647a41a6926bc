"""Every kind of bad configuration, with the exact message a person gets (one per line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankwatch.config import ConfigError, load_settings

# (TOML text, expected message; {file} stands for the config file's path)
BAD_FILES = {
    "unknown top-level key": ('bootstrap = "a:1"', "{file}: (top level): unknown key 'bootstrap'"),
    "unknown kafka key, with a suggestion": (
        '[kafka]\nbootstrapp = "a:1"',
        "{file}: kafka: unknown key 'bootstrapp' (did you mean 'bootstrap'?)",
    ),
    "unknown topic key": (
        "[topics.steps]\nparts = 3",
        "{file}: topics.steps: unknown key 'parts' (did you mean 'partitions'?)",
    ),
    "unknown topic role": (
        '[topics.metrics]\nname = "x"',
        "{file}: topics: unknown key 'metrics'",
    ),
    "partitions as a string": (
        '[topics.steps]\npartitions = "3"',
        "{file}: topics.steps.partitions: expected an integer, got string '3'",
    ),
    "partitions as a float": (
        "[topics.logs]\npartitions = 3.0",
        "{file}: topics.logs.partitions: expected an integer, got float 3.0",
    ),
    "partitions zero": (
        "[topics.steps]\npartitions = 0",
        "{file}: topics.steps.partitions: must be >= 1, got integer 0",
    ),
    "replication factor zero": (
        "[topics.alerts]\nreplication_factor = 0",
        "{file}: topics.alerts.replication_factor: must be >= 1, or -1 for the broker's default",
    ),
    "retention zero": (
        "[topics.deadletter]\nretention_ms = 0",
        "{file}: topics.deadletter.retention_ms: must be > 0, or -1 to keep messages forever",
    ),
    "retention as a boolean": (
        "[topics.steps]\nretention_ms = true",
        "{file}: topics.steps.retention_ms: expected an integer, got boolean True",
    ),
    "topic as a value, not a table": (
        "[topics]\nsteps = 3",
        "{file}: topics.steps: expected a table, got integer 3",
    ),
    "illegal topic name": (
        '[topics.steps]\nname = "rank watch"',
        "{file}: topics.steps.name: 'rank watch' is not a legal Kafka topic name "
        "([A-Za-z0-9._-], 1-249)",
    ),
    "two roles, one topic": (
        '[topics.logs]\nname = "rankwatch.steps"',
        "{file}: topics: logs and steps both use topic 'rankwatch.steps'",
    ),
    "bootstrap without port": (
        '[kafka]\nbootstrap = "localhost"',
        "{file}: kafka.bootstrap: 'localhost' is not host:port",
    ),
    "bootstrap with a bad port": (
        '[kafka]\nbootstrap = ["a:9092", "b:99999"]',
        "{file}: kafka.bootstrap: 'b:99999' is not host:port",
    ),
    "bootstrap of the wrong type": (
        "[kafka]\nbootstrap = 9092",
        '{file}: kafka.bootstrap: expected a "host:port,..." string or an array of them, got 9092',
    ),
    "empty bootstrap": (
        '[kafka]\nbootstrap = ""',
        "{file}: kafka.bootstrap: needs at least one host:port",
    ),
    "unknown security protocol": (
        '[kafka]\nsecurity_protocol = "TLS"',
        "{file}: kafka.security_protocol: must be one of 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' "
        "or 'SASL_SSL', got string 'TLS'",
    ),
    "unknown SASL mechanism": (
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "GSSAPI"',
        "{file}: kafka.sasl_mechanism: must be one of 'PLAIN', 'SCRAM-SHA-256' or "
        "'SCRAM-SHA-512', got string 'GSSAPI'",
    ),
    "SASL without credentials": (
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"',
        "{file}: kafka: security_protocol SASL_SSL needs sasl_username, sasl_password",
    ),
    "credentials without SASL": (
        '[kafka]\nsasl_username = "u"',
        "{file}: kafka: sasl_username set but security_protocol is PLAINTEXT "
        "(use SASL_PLAINTEXT or SASL_SSL)",
    ),
    "TLS files without TLS": (
        '[kafka]\nssl_cafile = "/etc/hostname"',
        "{file}: kafka: ssl_cafile set but security_protocol is PLAINTEXT (use SSL or SASL_SSL)",
    ),
    "missing CA file, relative to the config file": (
        '[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "certs/ca.pem"',
        "{file}: kafka.ssl_cafile: file not found: {dir}/certs/ca.pem",
    ),
    "password of the wrong type is not echoed": (
        '[kafka]\nsecurity_protocol = "SASL_SSL"\nsasl_password = 123456',
        "{file}: kafka.sasl_password: expected a string, got a value (not shown)",
    ),
    "not TOML": (
        "[kafka\n",
        "{file}: not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 7)",
    ),
}


@pytest.mark.parametrize("text,expected", BAD_FILES.values(), ids=list(BAD_FILES))
def test_bad_file_is_an_error_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == expected.format(file=path, dir=tmp_path)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text('[kafka]\nclient = "x"\n[topics.steps]\npartitions = -1\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value).splitlines() == [
        f"{path}: kafka: unknown key 'client' (did you mean 'client_id'?)",
        f"{path}: topics.steps.partitions: must be >= 1, got integer -1",
    ]


def test_bad_env_var_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RANKWATCH_SECURITY_PROTOCOL": "kerberos"}, cwd=tmp_path)
    assert str(info.value) == (
        "environment variable RANKWATCH_SECURITY_PROTOCOL: kafka.security_protocol: must be one "
        "of 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or 'SASL_SSL', got string 'KERBEROS'"
    )


def test_section_error_names_every_source_involved(tmp_path: Path) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text('[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"RANKWATCH_SASL_USERNAME": "u"})
    assert str(info.value) == (
        f"{path}, environment variable RANKWATCH_SASL_USERNAME: kafka: "
        "security_protocol SASL_PLAINTEXT needs sasl_mechanism, sasl_password"
    )


def test_bad_bootstrap_flag_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(bootstrap="nohost", env={}, cwd=tmp_path)
    assert str(info.value) == "--bootstrap: kafka.bootstrap: 'nohost' is not host:port"


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"{path}: config file not found (named by --config)"


def test_missing_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(env={"RANKWATCH_CONFIG": str(path)})
    assert str(info.value) == f"{path}: config file not found (named by RANKWATCH_CONFIG)"
