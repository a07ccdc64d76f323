"""The house rules of DESIGN §2 and §10: the import arrow, one settings object, a lazy CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bus.kafka.clients import PIPELINE_FETCH_WAIT_MS, KafkaSettings
from bus.settings import Settings, SettingsError, documented, load_settings

ROOT = Path(__file__).resolve().parent.parent

# Each layer and what of ``bus`` it may import (besides itself).
ALLOWED = {
    "bus.wire": set(),
    "bus.tlog": {"bus.wire"},
    "bus.trust": {"bus.wire", "bus.tlog", "bus.registry"},
    "bus.directory": {"bus.wire", "bus.trust", "bus.registry"},
    "bus.kafka": {
        *("bus.wire", "bus.tlog", "bus.trust", "bus.registry", "bus.settings", "bus.store"),
        "bus.directory",
    },
    "bus.store": {"bus.wire", "bus.tlog"},
    "bus.audit": {"bus.wire", "bus.tlog", "bus.trust", "bus.kafka", "bus.store", "bus.registry"},
    "bus.registry": {"bus.wire"},
    "bus.settings": {"bus.wire"},
    "bus.logs": set(),
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_before_it(layer: str) -> None:
    folder = ROOT / Path(*layer.split("."))
    files = sorted(folder.rglob("*.py")) if folder.is_dir() else [folder.with_suffix(".py")]
    wrong = {
        f"{f.relative_to(ROOT)} imports {m}"
        for f in files
        for m in _imports(f)
        if m.split(".")[0] in ("bus", "producers", "consumers")
        and _layer(m) != layer
        and _layer(m) not in ALLOWED[layer]
    }
    assert not wrong, sorted(wrong)


def test_producers_and_consumers_never_import_each_other() -> None:
    for side, other in (("producers", "consumers"), ("consumers", "producers")):
        for f in (ROOT / side).glob("*.py"):
            assert not any(m.split(".")[0] == other for m in _imports(f)), f


def test_pure_layers_import_no_kafka_or_database_code() -> None:
    for layer in ("wire", "tlog", "trust"):
        for f in (ROOT / "bus" / layer).rglob("*.py"):
            heavy = {
                m for m in _imports(f) if m.split(".")[0] in ("aiokafka", "sqlite3", "psycopg")
            }
            assert not heavy, f"{f}: {heavy}"


def test_a_bad_variable_is_named_with_what_it_expects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCBUS_SESSION_TIMEOUT_MS", "10s")
    with pytest.raises(SettingsError, match=r"DOCBUS_SESSION_TIMEOUT_MS=10s: .*integer"):
        load_settings()
    monkeypatch.setenv("DOCBUS_SESSION_TIMEOUT_MS", "5000")
    monkeypatch.setenv("DOCBUS_SECURITY_PROTOCOL", "TLS")
    with pytest.raises(SettingsError, match=r"DOCBUS_SECURITY_PROTOCOL=TLS: .*SASL_SSL"):
        load_settings()


def test_precedence_is_option_then_environment_then_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "docbus.toml"
    config.write_text('bootstrap = "file:9092"\ntopic_prefix = "national"\n', "utf-8")
    assert load_settings(config).bootstrap == "file:9092"
    monkeypatch.setenv("DOCBUS_BOOTSTRAP", "env:9092")
    chosen = load_settings(config)
    assert (chosen.bootstrap, chosen.topic_prefix) == ("env:9092", "national")
    assert load_settings(config, bootstrap="option:9092").bootstrap == "option:9092"
    monkeypatch.setenv("DOCBUS_CONFIG", str(config))
    assert load_settings().topic_prefix == "national"


def test_a_bad_file_key_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "docbus.toml"
    config.write_text('session_timeout_ms = "soon"\nbootstrapp = "x"\n', "utf-8")
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert f"session_timeout_ms in {config}" in str(caught.value)
    assert f"bootstrapp in {config}" in str(caught.value)


def test_the_fetch_wait_is_each_services_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # The gateway and the archiver ask the broker more often (a document's latency is made
    # there); an operator's DOCBUS_FETCH_MAX_WAIT_MS is the last word for every service.
    assert KafkaSettings.from_settings(load_settings(), "b:9092").fetch_max_wait_ms == 100
    pipeline = KafkaSettings.from_settings(load_settings(), "b:9092", PIPELINE_FETCH_WAIT_MS)
    assert pipeline.fetch_max_wait_ms == 20
    monkeypatch.setenv("DOCBUS_FETCH_MAX_WAIT_MS", "250")
    for wait in (100, PIPELINE_FETCH_WAIT_MS):
        assert KafkaSettings.from_settings(load_settings(), "b:9092", wait).fetch_max_wait_ms == 250


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCBUS_SASL_PASSWORD", "hunter2-secret")
    chosen = load_settings()
    assert "hunter2-secret" not in repr(chosen)
    assert chosen.sasl_password is not None
    assert chosen.sasl_password.get_secret_value() == "hunter2-secret"


def test_the_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    for variable, _, meaning in documented():
        assert f"`{variable}`" in readme, variable
        assert meaning
    assert set(Settings.model_fields) == {v[len("DOCBUS_") :].lower() for v, _, _ in documented()}


def test_the_cli_imports_only_the_command_it_runs() -> None:
    probe = (
        "import sys\n"
        "from bus.cli import cli\n"
        "try:\n"
        "    cli(['registry', 'resolve', '000.00.00.H04', '--at', '2025-08-01'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.startswith(('bus.demo', 'bus.kafka.broker',"
        " 'producers', 'consumers', 'bus.audit', 'bus.cli.pki')))\n"
        "print('HEAVY', heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "Bắc Ninh" in done.stdout
    assert "HEAVY []" in done.stdout


def test_plugins_and_own_commands_are_all_listed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bus", "--help"], capture_output=True, text=True, timeout=60
    )
    for name in ("publish", "serve", "archive", "outbox", "audit", "pki", "demo", "edxml"):
        assert f"  {name} " in done.stdout, name
    edxml = subprocess.run(
        [sys.executable, "-m", "bus", "edxml", "--help"], capture_output=True, text=True
    )
    assert "import" in edxml.stdout and "export" in edxml.stdout
