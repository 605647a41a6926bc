"""The same settings rendered for each client library: confluent-kafka, aiokafka, faust."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from rankwatch.config import Settings, load_settings

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
SCRAM_SSL = {
    "RANKWATCH_BOOTSTRAP": "k1:9093,k2:9093",
    "RANKWATCH_SECURITY_PROTOCOL": "SASL_SSL",
    "RANKWATCH_SASL_MECHANISM": "SCRAM-SHA-256",
    "RANKWATCH_SASL_USERNAME": "trainer",
    "RANKWATCH_SASL_PASSWORD": "s3cret",
}


def test_plaintext_defaults_for_confluent() -> None:
    assert Settings().confluent_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "client.id": "rankwatch",
        "security.protocol": "PLAINTEXT",
    }


def test_plaintext_for_aiokafka_and_faust() -> None:
    settings = Settings().with_bootstrap("a:1,b:2")
    assert settings.aiokafka_kwargs() == {
        "bootstrap_servers": ["a:1", "b:2"],
        "client_id": "rankwatch",
        "security_protocol": "PLAINTEXT",
    }
    assert settings.faust_broker_url() == "kafka://a:1;b:2"
    assert settings.faust_credentials() is None


@pytest.mark.skipif(not SYSTEM_CA.is_file(), reason="needs a CA bundle")
def test_sasl_ssl_for_every_client(tmp_path: Path) -> None:
    settings = load_settings(
        env={**SCRAM_SSL, "RANKWATCH_SSL_CAFILE": str(SYSTEM_CA)}, cwd=tmp_path
    )
    assert settings.confluent_config() == {
        "bootstrap.servers": "k1:9093,k2:9093",
        "client.id": "rankwatch",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "trainer",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(SYSTEM_CA),
    }
    kwargs = settings.aiokafka_kwargs()
    assert isinstance(kwargs.pop("ssl_context"), ssl.SSLContext)
    assert kwargs == {
        "bootstrap_servers": ["k1:9093", "k2:9093"],
        "client_id": "rankwatch",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "trainer",
        "sasl_plain_password": "s3cret",
    }
    credentials = settings.faust_credentials()
    assert credentials is not None
    assert credentials.protocol.value == "SASL_SSL"  # type: ignore[attr-defined]
    assert credentials.mechanism.value == "SCRAM-SHA-256"  # type: ignore[attr-defined]


def test_with_bootstrap_validates() -> None:
    with pytest.raises(ValueError, match="'nope' is not host:port"):
        Settings().with_bootstrap("nope")
