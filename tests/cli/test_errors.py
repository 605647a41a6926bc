"""One root exception (RankwatchError) under every package's errors, caught in one place by the
CLI (``rankwatch.cli.main``) with the messages and exit codes the commands had before."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import rankwatch.config
from rankwatch.cli import main as cli_main
from rankwatch.cli._demo_procs import DemoError
from rankwatch.config import ConfigError
from rankwatch.infra.exceptions import InfraError
from rankwatch.producers._identity import IdentityError
from rankwatch.schemas import RankwatchError, SchemaError
from rankwatch.simulate.plan import PlanError
from rankwatch.sinks.exceptions import SinkError, StoreError
from rankwatch.streams.exceptions import StreamsError
from rankwatch.streams.rules.exceptions import RulesFileError

main = cli_main.main


@pytest.mark.parametrize(
    "error",
    [ConfigError, SchemaError, SinkError, InfraError, StreamsError, DemoError, RulesFileError,
     PlanError, IdentityError],
)  # fmt: skip
def test_every_package_root_derives_from_the_one_root(error: type[Exception]) -> None:
    assert issubclass(error, RankwatchError)


def test_main_catches_our_errors_in_one_except_clause() -> None:
    """No list of exception types in the CLI's entry point: one ``except RankwatchError``."""
    tree = ast.parse(inspect.getsource(cli_main))
    handlers = [node for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler)]
    caught = [ast.unparse(h.type) for h in handlers if h.type is not None]
    assert caught == ["KeyboardInterrupt", "RankwatchError"]


def test_a_config_error_keeps_its_message_and_exit_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[topics.steps]\npartitions = 0\n")
    assert main(["topics", "create", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"rankwatch: error: {path}: topics.steps.partitions: must be >= 1, got integer 0\n"
    )


def test_any_packages_error_is_caught_not_only_the_listed_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A storage error was never in the CLI's list: it is a RankwatchError, so it is caught.
    def fail(*_: object, **__: object) -> None:
        raise StoreError("sqlite:///x.db: disk full")

    monkeypatch.setattr(rankwatch.config, "load_settings", fail)
    assert main(["topics", "list"]) == 2
    assert capsys.readouterr().err == "rankwatch: error: sqlite:///x.db: disk full\n"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rankwatch.config, "load_settings", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["topics", "list"])


def test_a_sink_config_error_names_the_sink_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sinks.storag]\n")
    assert main(["sink", "storage", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        f"rankwatch sink storage: error: {path}: sinks: unknown key 'storag' "
        "(did you mean 'storage'?)\n"
    )


def test_a_query_error_names_the_query_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "--db", "sqlite:///:memory:", "--job", "j", "--since", "soon"]) == 2
    assert capsys.readouterr().err.startswith(
        "rankwatch logs: error: --since 'soon': expected a duration"
    )


def test_a_command_without_its_own_prefix_names_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import rankwatch.schemas.jsonschema

    def fail(*_: object, **__: object) -> None:
        raise SchemaError("cannot write the schema")

    monkeypatch.setattr(rankwatch.schemas.jsonschema, "export_json_schemas", fail)
    assert main(["schema", "export", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "rankwatch schema: error: cannot write the schema\n"
