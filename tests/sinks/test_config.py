"""The [sinks] tables: one test per kind of mistake, each with its exact message."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankwatch.config import load_settings
from rankwatch.sinks.config import load_sinks_config
from rankwatch.sinks.exceptions import SinkConfigError

GOOD = """
[kafka]
bootstrap = "127.0.0.1:9092"

[sinks.storage]
db = "postgresql://rw@db.example/rankwatch"
retention = "30d"
step_retention = "7d"
linger = "500ms"

[sinks.notify.destinations.oncall]
type = "slack"
url = "https://hooks.slack.example/T000/B000"
timeout = "3s"
group_wait = "10s"

[sinks.notify.destinations.ops-cn]
type = "dingtalk"
url = "https://oapi.dingtalk.example/robot/send?access_token=x"

[[sinks.notify.routes]]
jobs = "llm-*"
min_severity = "critical"
to = ["oncall", "ops-cn"]
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "rankwatch.toml"
    path.write_text(text)
    return load_sinks_config(path)


def test_a_full_config_loads_and_kafka_settings_still_load_beside_it(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD)
    assert config.storage.retention == 30 * 86400  # type: ignore[attr-defined]
    assert config.storage.step_retention == 7 * 86400  # type: ignore[attr-defined]
    assert config.notify.destinations["oncall"].timeout == 3.0  # type: ignore[attr-defined]
    assert config.notify.routes[0].to == ("oncall", "ops-cn")  # type: ignore[attr-defined]
    assert load_settings(tmp_path / "rankwatch.toml").bootstrap == "127.0.0.1:9092"


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RANKWATCH_CONFIG", raising=False)
    assert load_sinks_config().storage.db == "sqlite:///.rankwatch/rankwatch.db"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sinks.storag]\n", "sinks: unknown key 'storag' (did you mean 'storage'?)"),
        (
            '[sinks.storage]\nlinger = "ten"\n',
            "sinks.storage.linger: 'ten' is not a duration (expected a number and a unit: "
            "500ms, 10s, 5m, 2h, 7d, 1w)",
        ),
        (
            '[sinks.storage]\nbatch_size = "3"\n',
            "sinks.storage.batch_size: Input should be a valid integer, got '3'",
        ),
        (
            "[sinks.storage]\nbatch_size = 0\n",
            "sinks.storage.batch_size: Input should be greater than or equal to 1, got 0",
        ),
        (
            '[sinks.storage]\nstep_retention = "a week"\n',
            "sinks.storage.step_retention: 'a week' is not a duration (expected a number and a "
            "unit: 500ms, 10s, 5m, 2h, 7d, 1w)",
        ),
        (
            "[sinks.storage]\nstep_retention = -5\n",
            "sinks.storage.step_retention: Input should be greater than or equal to 0, got -5",
        ),
        (
            "[sinks.storage]\nstep_retention = true\n",
            'sinks.storage.step_retention: expected a duration string such as "10s", got True',
        ),
        (
            '[sinks.storage]\nstep_retention = "0s"\n',
            "sinks.storage.step_retention: must be longer than 0s (leave it out to keep them)",
        ),
        (
            '[sinks.storage]\nretention = "30d"\nstep_retention = "40d"\n',
            "sinks.storage.step_retention: 40d is longer than retention (30d), which deletes "
            "every step first",
        ),
        (
            '[sinks.storage]\nstep_retension = "7d"\n',
            "sinks.storage: unknown key 'step_retension' (did you mean 'step_retention'?)",
        ),
        (
            '[sinks.storage]\ndb = "mysql://x"\n',
            "sinks.storage.db: expected sqlite:///PATH or postgresql://..., got 'mysql://x'",
        ),
        (
            '[sinks.notify.destinations.a]\ntype = "teams"\nurl = "http://x"\n',
            "sinks.notify.destinations.a.type: Input should be 'webhook', 'slack', 'dingtalk' "
            "or 'alertmanager', got 'teams'",
        ),
        (
            '[sinks.notify.destinations.a]\ntype = "slack"\nurl = "ftp://x"\n',
            "sinks.notify.destinations.a.url: expected an http:// or https:// URL, got 'ftp://x'",
        ),
        (
            '[sinks.notify.destinations.a]\ntype = "slack"\n',
            "sinks.notify.destinations.a.url: is required",
        ),
        (
            '[sinks.notify.destinations.a]\ntype = "slack"\nurl = "http://x"\ntimout = "1s"\n',
            "sinks.notify.destinations.a: unknown key 'timout' (did you mean 'timeout'?)",
        ),
        (
            '[[sinks.notify.routes]]\nto = ["pager"]\n',
            "sinks.notify.routes[0].to: no destination named 'pager' (none defined)",
        ),
        ('[[sinks.notify.routes]]\njobs = "x"\n', "sinks.notify.routes.0.to: is required"),
        (
            '[[sinks.notify.routes]]\nto = []\nmin_severity = "loud"\n',
            "sinks.notify.routes.0.min_severity: Input should be 'info', 'warning' or 'critical', "
            "got 'loud'",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(SinkConfigError) as info:
        load(tmp_path, text)
    assert str(info.value).splitlines()[0] == f"{tmp_path / 'rankwatch.toml'}: {message}"


def test_not_toml_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(SinkConfigError, match=r"rankwatch.toml: not valid TOML"):
        load(tmp_path, "[sinks\n")
