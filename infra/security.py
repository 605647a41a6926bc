"""The local cluster's secure mode: TLS from a CA made here, and SASL/SCRAM users.

``LocalCluster.create(secure=True)`` (``rankwatch broker start --secure``) keeps everything in
``<cluster dir>/security/``, made once by :meth:`BrokerSecurity.ensure` with the ``openssl``
command:

- ``ca.pem`` / ``ca.key``: a CA made for this cluster alone; clients trust ``ca.pem`` only.
- ``server.pem`` / ``server.key``: the brokers' certificate (``127.0.0.1`` and ``localhost``),
  signed by that CA.
- ``users.json``: two random passwords: ``admin`` (brokers among themselves and to the
  controllers) and ``rankwatch`` (every client). Mode 0600, like the keys.
- ``client.toml``: a ready rankwatch config for the ``rankwatch`` user (``--config`` it, or copy
  its keys into your own file / ``RANKWATCH_*`` variables).

The brokers then listen with ``SASL_SSL`` only: clients authenticate with SCRAM-SHA-512 (users
are created at format time, ``--add-scram``), brokers talk to each other over the same listener
as ``admin``, and the controller listener is ``SASL_SSL`` too with ``PLAIN`` (KRaft controllers
cannot check SCRAM: its credentials live in the metadata they serve). No port of a secure
cluster answers without TLS and a password. There is no authorizer: every authenticated user
may do everything, which is what a development cluster needs.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rankwatch.infra.exceptions import BrokerError

ADMIN_USER = "admin"
CLIENT_USER = "rankwatch"
MECHANISM = "SCRAM-SHA-512"
LISTENER = "SASL_SSL"
# Kafka's default is 1 year of validity for nothing; a local cluster's CA lives until purged.
_DAYS = "3650"


@dataclass(frozen=True)
class BrokerSecurity:
    """The security files of one local cluster, in ``directory``."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def users_file(self) -> Path:
        return self.directory / "users.json"

    @property
    def client_config_file(self) -> Path:
        """A rankwatch TOML config for the ``rankwatch`` user (see :meth:`write_client_config`)."""
        return self.directory / "client.toml"

    # ----- creation -----------------------------------------------------------------------------

    def ensure(self) -> None:
        """Make the CA, the broker certificate and the users' passwords, unless already there."""
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        if not (self.ca_file.is_file() and self.cert_file.is_file() and self.key_file.is_file()):
            self._make_certificates()
        if not self.users_file.is_file():
            users = {ADMIN_USER: secrets.token_urlsafe(24), CLIENT_USER: secrets.token_urlsafe(24)}
            _write_private(self.users_file, json.dumps(users, indent=2) + "\n")

    def _make_certificates(self) -> None:
        if shutil.which("openssl") is None:
            raise BrokerError(
                "the secure broker needs the `openssl` command to make its certificates: "
                "install OpenSSL (e.g. apt-get install openssl)"
            )
        d = self.directory
        ext = d / "server.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
            "subjectKeyIdentifier=hash\n"
            "authorityKeyIdentifier=keyid,issuer\n"
        )
        csr = d / "server.csr"
        ec_key = ("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
        try:
            _openssl(*ec_key, "-out", str(self.ca_key))
            _openssl(*ec_key, "-out", str(self.key_file))
            os.chmod(self.ca_key, 0o600)
            os.chmod(self.key_file, 0o600)
            # The CA's extensions are spelled out: strict verifiers (Python 3.13's default
            # context, Java) want a CA that says it is one and may sign certificates.
            _openssl(
                "req", "-x509", "-new", "-key", str(self.ca_key), "-sha256", "-days", _DAYS,
                "-subj", f"/CN=rankwatch local CA {secrets.token_hex(4)}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                "-addext", "subjectKeyIdentifier=hash",
                "-out", str(self.ca_file),
            )  # fmt: skip
            _openssl(
                "req", "-new", "-key", str(self.key_file), "-subj", "/CN=localhost",
                "-out", str(csr),
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(self.ca_file),
                "-CAkey", str(self.ca_key), "-set_serial", str(secrets.randbits(63)),
                "-days", _DAYS, "-sha256", "-extfile", str(ext), "-out", str(self.cert_file),
            )  # fmt: skip
        finally:
            csr.unlink(missing_ok=True)
            ext.unlink(missing_ok=True)

    def users(self) -> dict[str, str]:
        """``{user: password}``; the passwords are secrets: never log them."""
        try:
            users: dict[str, str] = json.loads(self.users_file.read_text())
        except (OSError, ValueError) as exc:
            raise BrokerError(
                f"{self.users_file} is unreadable ({exc}): purge the cluster"
            ) from None
        return users

    # ----- what the brokers and the clients are given -------------------------------------------

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments creating the SCRAM users in the cluster metadata."""
        args: list[str] = []
        for user, password in self.users().items():
            args += ["--add-scram", f"{MECHANISM}=[name={user},password={password}]"]
        return args

    def broker_properties(self, port: int, controller_port: int, host: str) -> dict[str, str]:
        """``server.properties`` lines that replace the plain listeners of one node."""
        admin = self.users()[ADMIN_USER]
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return {
            "listeners": f"{LISTENER}://{host}:{port},CONTROLLER://{host}:{controller_port}",
            "advertised.listeners": f"{LISTENER}://{host}:{port}",
            "listener.security.protocol.map": f"{LISTENER}:SASL_SSL,CONTROLLER:SASL_SSL",
            "inter.broker.listener.name": LISTENER,
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                f'{scram} required username="{ADMIN_USER}" password="{admin}";'
            ),
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required username="{ADMIN_USER}" password="{admin}" '
                f'user_{ADMIN_USER}="{admin}";'
            ),
            # PEM straight in the properties (Kafka 4 reads them; no JKS/PKCS12 to build).
            "ssl.keystore.type": "PEM",
            "ssl.keystore.certificate.chain": _escape(self.cert_file.read_text()),
            "ssl.keystore.key": _escape(self.key_file.read_text()),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.certificates": _escape(self.ca_file.read_text()),
            "ssl.client.auth": "none",
        }

    def client_config(self, bootstrap: str, user: str = CLIENT_USER) -> dict[str, str]:
        """librdkafka properties for ``user`` (holds the password: never log the result)."""
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": LISTENER,
            "sasl.mechanism": MECHANISM,
            "sasl.username": user,
            "sasl.password": self.users()[user],
            "ssl.ca.location": str(self.ca_file),
        }

    def write_client_config(self, bootstrap: str) -> Path:
        """Write ``client.toml``: the ``[kafka]`` table of a rankwatch config for this cluster."""
        servers = ", ".join(f'"{server}"' for server in bootstrap.split(","))
        _write_private(
            self.client_config_file,
            "# Written by rankwatch for the local secure cluster; --config this file, or copy\n"
            "# its keys (the password is better kept in $RANKWATCH_SASL_PASSWORD).\n"
            "[kafka]\n"
            f"bootstrap = [{servers}]\n"
            f'security_protocol = "{LISTENER}"\n'
            f'sasl_mechanism = "{MECHANISM}"\n'
            f'sasl_username = "{CLIENT_USER}"\n'
            f'sasl_password = "{self.users()[CLIENT_USER]}"\n'
            f'ssl_cafile = "{self.ca_file.name}"\n',
        )
        return self.client_config_file


def _openssl(*args: str) -> None:
    result = subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def _escape(pem: str) -> str:
    """A PEM block as one ``server.properties`` value: newlines as ``\\n`` escapes."""
    return pem.strip().replace("\n", "\\n")


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created so, never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
