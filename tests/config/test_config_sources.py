"""Where settings come from and in which order: defaults < file < environment < --bootstrap."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankwatch.config import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "rankwatch.example.toml"
SASL_ENV = {
    "RANKWATCH_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "RANKWATCH_SASL_MECHANISM": "SCRAM-SHA-512",
    "RANKWATCH_SASL_USERNAME": "trainer",
    "RANKWATCH_SASL_PASSWORD": "hunter2-very-secret",
}


def test_defaults_without_any_file(tmp_path: Path) -> None:
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings == Settings()
    assert settings.bootstrap == "127.0.0.1:9092"
    assert [t.name for t in settings.topics.by_role().values()] == [
        "rankwatch.steps",
        "rankwatch.logs",
        "rankwatch.alerts",
        "rankwatch.deadletter",
    ]


def test_example_file_parses_and_documents_the_defaults() -> None:
    assert load_settings(EXAMPLE, env={}) == Settings()


def test_rankwatch_toml_in_cwd_is_found(tmp_path: Path) -> None:
    (tmp_path / "rankwatch.toml").write_text('[kafka]\nbootstrap = "k1:9092, k2:9092"\n')
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.kafka.bootstrap == ("k1:9092", "k2:9092")


def test_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.toml"
    path.write_text('[kafka]\nbootstrap = ["k3:9092"]\n')
    assert load_settings(env={"RANKWATCH_CONFIG": str(path)}, cwd=tmp_path).bootstrap == "k3:9092"


def test_explicit_file_wins_over_env_file(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine.toml", tmp_path / "theirs.toml"
    mine.write_text('[kafka]\nbootstrap = "mine:1"\n')
    theirs.write_text('[kafka]\nbootstrap = "theirs:1"\n')
    settings = load_settings(mine, env={"RANKWATCH_CONFIG": str(theirs)})
    assert settings.bootstrap == "mine:1"


def test_one_topic_key_keeps_the_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text("[topics.steps]\npartitions = 48\n")
    steps = load_settings(path, env={}).topics.steps
    assert (steps.name, steps.partitions, steps.replication_factor) == ("rankwatch.steps", 48, -1)


def test_env_overrides_file_and_flag_overrides_env(tmp_path: Path) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text('[kafka]\nbootstrap = "file:9092"\nclient_id = "from-file"\n')
    env = {"RANKWATCH_BOOTSTRAP": "env:9092", "RANKWATCH_CLIENT_ID": "from-env"}
    settings = load_settings(path, env=env)
    assert (settings.bootstrap, settings.kafka.client_id) == ("env:9092", "from-env")
    assert load_settings(path, env=env, bootstrap="flag:9092").bootstrap == "flag:9092"


def test_empty_env_var_counts_as_unset(tmp_path: Path) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text('[kafka]\nbootstrap = "file:9092"\n')
    assert load_settings(path, env={"RANKWATCH_BOOTSTRAP": ""}).bootstrap == "file:9092"


def test_security_from_env_completes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rankwatch.toml"
    path.write_text('[kafka]\nsecurity_protocol = "sasl_plaintext"\nsasl_mechanism = "PLAIN"\n')
    env = {k: v for k, v in SASL_ENV.items() if "USERNAME" in k or "PASSWORD" in k}
    kafka = load_settings(path, env=env).kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username) == (
        "SASL_PLAINTEXT",
        "PLAIN",
        "trainer",
    )


def test_relative_tls_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("not checked here")
    path = tmp_path / "rankwatch.toml"
    path.write_text('[kafka]\nsecurity_protocol = "SSL"\nssl_cafile = "certs/ca.pem"\n')
    assert load_settings(path, env={}).kafka.ssl_cafile == str(tmp_path / "certs" / "ca.pem")


def test_password_never_in_repr_str_or_json(tmp_path: Path) -> None:
    settings = load_settings(env=SASL_ENV, cwd=tmp_path)
    secret = SASL_ENV["RANKWATCH_SASL_PASSWORD"]
    for text in (
        repr(settings),
        str(settings),
        repr(settings.kafka),
        str(settings.kafka),
        settings.model_dump_json(),
        f"{settings!r} {settings}",
    ):
        assert secret not in text
    assert "**********" in repr(settings.kafka)
    # Where a client library needs it, it is there.
    assert settings.confluent_config()["sasl.password"] == secret


def test_password_not_in_errors(tmp_path: Path) -> None:
    env = {**SASL_ENV, "RANKWATCH_SECURITY_PROTOCOL": "PLAINTEXT"}
    with pytest.raises(Exception) as info:
        load_settings(env=env, cwd=tmp_path)
    assert SASL_ENV["RANKWATCH_SASL_PASSWORD"] not in str(info.value)
    assert "sasl_password" in str(info.value)


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.kafka.client_id = "x"  # type: ignore[misc]


def test_example_file_sinks_section_loads_with_its_commented_examples(tmp_path: Path) -> None:
    # Uncommenting the documented destination and route must give a valid file.
    import re

    from rankwatch.sinks.config import load_sinks_config

    text = EXAMPLE.read_text()
    keys = (
        "type|url|timeout|group_wait|max_group|rate_limit|burst|max_attempts|backoff|"
        "max_backoff|jobs|rules|min_severity|statuses|to|continue"
    )
    text = re.sub(rf"^# (\[|(?:{keys}) )", r"\1", text, flags=re.MULTILINE)
    path = tmp_path / "rankwatch.toml"
    path.write_text(text)
    config = load_sinks_config(path)
    assert list(config.notify.destinations) == ["oncall"]
    assert len(config.notify.routes) == 1
