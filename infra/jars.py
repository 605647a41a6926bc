"""Assemble the Apache Kafka jars that local brokers run on, with Maven, once.

``infra/pom.xml`` lists Kafka and a log4j2 binding; ``mvn package`` copies the runtime classpath
into ``<kafka home>/lib``. The kafka home is ``$RANKWATCH_KAFKA_HOME`` or ``infra/.kafka`` (ignored
by git). A marker file naming the Kafka version makes the step idempotent: when it is there, no
Maven runs, so tests and ``rankwatch broker start`` pay the ~10 s only the first time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from rankwatch.infra.exceptions import KafkaJarsError

# Keep in step with <kafka.version> in infra/pom.xml.
KAFKA_VERSION = "4.1.1"
KAFKA_HOME_ENV = "RANKWATCH_KAFKA_HOME"
_INFRA_DIR = Path(__file__).resolve().parent
POM = _INFRA_DIR / "pom.xml"
LOG4J2_PROPERTIES = _INFRA_DIR / "log4j2.properties"


def kafka_home() -> Path:
    """Where the jars live: ``$RANKWATCH_KAFKA_HOME`` or ``infra/.kafka``."""
    override = os.environ.get(KAFKA_HOME_ENV)
    return Path(override).expanduser().resolve() if override else _INFRA_DIR / ".kafka"


def _marker(lib: Path) -> Path:
    return lib / f".rankwatch-kafka-{KAFKA_VERSION}"


def jars_present(home: Path | None = None) -> bool:
    """True when ``home/lib`` holds a complete assembly of this Kafka version."""
    return _marker((home or kafka_home()) / "lib").is_file()


def ensure_kafka_jars(home: Path | None = None, *, timeout_s: float = 600) -> Path:
    """Return the ``lib`` folder with the Kafka jars, running Maven first if they are missing.

    Raises KafkaJarsError naming what failed (no ``mvn``, Maven's own error output).
    """
    home = home or kafka_home()
    lib = home / "lib"
    if _marker(lib).is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaJarsError(
            f"Kafka jars missing in {lib} and `mvn` is not on PATH: install Maven, or point "
            f"{KAFKA_HOME_ENV} at a folder whose lib/ holds the Kafka {KAFKA_VERSION} jars"
        )
    # A half-copied lib/ from an interrupted run would mix versions: start clean.
    if lib.exists():
        shutil.rmtree(lib)
    command = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "package",
        f"-Dkafka.lib.dir={lib}",
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise KafkaJarsError(f"Maven did not finish within {timeout_s:.0f} s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise KafkaJarsError(f"`{' '.join(command)}` failed ({result.returncode}):\n{tail}")
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise KafkaJarsError(f"Maven succeeded but no Kafka jar landed in {lib}")
    _marker(lib).write_text(f"Apache Kafka {KAFKA_VERSION}, assembled from {POM}\n")
    return lib


def classpath(lib: Path) -> str:
    """The ``-cp`` argument for java: every jar of the folder (java expands the ``*``)."""
    return str(lib.resolve() / "*")
