"""No Kafka client in rankwatch is configured by hand: all take the settings' rendering.

A client config built from a bare bootstrap string would silently ignore the security settings
(it connects in plaintext, without credentials) and fail only against a secure cluster. The
only places that may spell out ``bootstrap.servers`` are the settings themselves and ``infra``,
which runs the local brokers and knows how each one is secured.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "config", "producers", "streams", "sinks", "cli", "simulate")
ALLOWED = {Path("config/settings.py")}
HAND_BUILT = re.compile(r"""["'](?:bootstrap\.servers|bootstrap_servers)["']|bootstrap_servers=""")


def test_client_configs_come_from_the_settings() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.relative_to(ROOT) not in ALLOWED
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if HAND_BUILT.search(line)
    ]
    assert not offenders, "use settings.confluent_config() / aiokafka_kwargs():\n" + "\n".join(
        offenders
    )


def test_the_worker_hands_its_credentials_to_faust() -> None:
    worker = (ROOT / "streams" / "worker.py").read_text()
    assert "broker_credentials=settings.faust_credentials()" in worker
