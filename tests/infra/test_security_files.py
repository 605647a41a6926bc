"""The secure mode's files, without a broker: certificates, users, the client config."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from rankwatch.config import load_settings
from rankwatch.infra import BrokerError, LocalCluster
from rankwatch.infra.security import BrokerSecurity


def openssl(*args: str) -> str:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_a_ca_signs_the_broker_certificate_for_the_loopback_address(tmp_path: Path) -> None:
    sec = BrokerSecurity(tmp_path / "security")
    sec.ensure()
    assert "OK" in openssl("verify", "-CAfile", str(sec.ca_file), str(sec.cert_file))
    names = openssl("x509", "-in", str(sec.cert_file), "-noout", "-ext", "subjectAltName")
    assert "IP Address:127.0.0.1" in names and "DNS:localhost" in names
    for private in (sec.ca_key, sec.key_file, sec.users_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert stat.S_IMODE(sec.directory.stat().st_mode) == 0o700

    users, ca = sec.users(), sec.ca_file.read_bytes()
    assert set(users) == {"admin", "rankwatch"} and users["admin"] != users["rankwatch"]
    sec.ensure()  # made once: a restart keeps its CA and passwords
    assert (sec.users(), sec.ca_file.read_bytes()) == (users, ca)


def test_the_client_config_file_is_a_rankwatch_config(tmp_path: Path) -> None:
    sec = BrokerSecurity(tmp_path / "security")
    sec.ensure()
    path = sec.write_client_config("127.0.0.1:19092,127.0.0.1:19093")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    settings = load_settings(path, env={})
    kafka = settings.kafka
    assert kafka.bootstrap == ("127.0.0.1:19092", "127.0.0.1:19093")
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert kafka.ssl_cafile == str(sec.ca_file)  # relative to the file's folder
    assert kafka.sasl_password is not None
    assert kafka.sasl_password.get_secret_value() == sec.users()["rankwatch"]
    assert sec.users()["rankwatch"] not in repr(settings)
    rendered = settings.confluent_config()
    assert rendered.pop("client.id") == "rankwatch"
    assert rendered == sec.client_config(settings.bootstrap)


def test_broker_properties_leave_no_plaintext_port(tmp_path: Path) -> None:
    sec = BrokerSecurity(tmp_path / "security")
    sec.ensure()
    props = sec.broker_properties(19092, 19093, "127.0.0.1")
    assert props["listeners"] == "SASL_SSL://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["listener.security.protocol.map"] == "SASL_SSL:SASL_SSL,CONTROLLER:SASL_SSL"
    assert "PLAINTEXT" not in props["listener.security.protocol.map"].replace("SASL_", "")
    assert "\n" not in "".join(props.values())  # one properties line each
    assert sec.format_args()[1].startswith("SCRAM-SHA-512=[name=admin,password=")


def test_secure_and_plain_clusters_are_not_mixed_up(tmp_path: Path) -> None:
    cluster = LocalCluster.create(tmp_path, port=0, secure=True)
    cluster._save()  # as `broker start --secure` leaves it, without running a broker
    reopened = LocalCluster.open(tmp_path)
    assert reopened is not None and reopened.secure
    with pytest.raises(BrokerError, match=r"holds a secure cluster.*replace it with a plain one"):
        LocalCluster.start_or_reuse(tmp_path, secure=False)
    plain = LocalCluster.create(tmp_path / "plain", port=0)
    assert not plain.secure and plain.client_config() == {"bootstrap.servers": plain.bootstrap}


def test_missing_openssl_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="needs the `openssl` command"):
        BrokerSecurity(tmp_path / "security").ensure()
