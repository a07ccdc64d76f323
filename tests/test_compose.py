"""docker-compose.yml: valid against the official Compose schema, and the stack it describes.

No Docker engine runs on these machines, so the file is checked, not started: the schema
(tests/data/compose-spec, from compose-spec/compose-spec) and the topology a production
deployment relies on, and every docbus command in it is one the CLI accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bus.settings import documented, load_settings
from tests.acls import acls, writers

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    return loaded


def test_the_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads(
        (ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json").read_text("utf-8")
    )
    validator = jsonschema.Draft7Validator(schema)
    validator.validate(_compose())
    broken = _compose()
    broken["services"]["gateway"]["restart_policy"] = "always"  # not a Compose key
    assert not validator.is_valid(broken)


def test_three_kraft_brokers_that_survive_losing_one() -> None:
    services = _compose()["services"]
    brokers = {
        name: s for name, s in services.items() if name.startswith("kafka-") and name[-1].isdigit()
    }
    assert len(brokers) == 3
    ids = {s["environment"]["KAFKA_NODE_ID"] for s in brokers.values()}
    assert ids == {"1", "2", "3"}
    for name, s in brokers.items():
        env = s["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert sorted(v.split("@")[1] for v in voters) == [f"kafka-{i}:9093" for i in (1, 2, 3)]
        assert f"INTERNAL://{name}:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2  # acks=all survives one broker down


def test_every_service_waits_for_its_topics_and_runs_a_real_command() -> None:
    services = _compose()["services"]
    for name in ("gateway", "archiver", "witness", "inbox-nghe-an"):
        s = services[name]
        assert s["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert s["environment"]["DOCBUS_BOOTSTRAP"].count("kafka-") == 3
    for name, s in services.items():
        if s.get("image") != "docbus:latest" or "entrypoint" in s:
            continue
        command = s["command"]
        # the CLI accepts the command line (parsed, not run: no broker here)
        words = [w for w in command if not w.startswith("/")]
        subcommand = command[:2]
        done = subprocess.run(
            [sys.executable, "-m", "bus", *subcommand, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, name
        for option in (w for w in words if w.startswith("--")):
            assert option in done.stdout, (name, option)
    assert services["topics"]["command"][:2] == ["topics", "ensure"]


def test_the_ca_keys_stay_in_the_pki_job() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    for name, service in compose["services"].items():
        mounts = [str(v) for v in service.get("volumes", [])]
        if name == "pki":
            assert "pki-ca:/pki/ca" in mounts
        else:
            assert not any(m.startswith("pki-ca:") for m in mounts), name
            assert all(m.endswith(":ro") for m in mounts if m.startswith("pki:")), name


DOCBUS_SERVICES = ("gateway", "archiver", "witness", "inbox-nghe-an")


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str | None, bool]]:
    """(volume, target, subpath, read-only) of each volume mount, short or long syntax."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1], None, parts[2:] == ["ro"]))
        else:
            subpath = (v.get("volume") or {}).get("subpath")
            out.append((v["source"], v["target"], subpath, bool(v.get("read_only"))))
    return out


def test_brokers_speak_only_tls_and_authenticate_everyone() -> None:
    services = _compose()["services"]
    for i in (1, 2, 3):
        env = services[f"kafka-{i}"]["environment"]
        protocols = dict(
            p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
        )
        assert protocols == {
            "INTERNAL": "SASL_SSL",  # the services, one SCRAM principal each
            "EXTERNAL": "SASL_SSL",  # agency nodes from outside
            "CONTROLLER": "SSL",
            "BROKER": "SSL",
        }
        assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
        assert env["KAFKA_LISTENER_NAME_BROKER_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH"] == "required"
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "BROKER"
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert env["KAFKA_SUPER_USERS"].split(";") == [
            "User:kafka-1", "User:kafka-2", "User:kafka-3", "User:kafka-admin"
        ]  # fmt: skip
        # The external listener is published on the host and advertised there.
        assert services[f"kafka-{i}"]["ports"] == [f"{19091 + i}:9094"]
        assert f"EXTERNAL://localhost:{19091 + i}" in env["KAFKA_ADVERTISED_LISTENERS"]
        # The log is on the broker's own volume (not the image's /tmp default).
        mounts = _mounts(services[f"kafka-{i}"])
        assert (f"kafka-{i}", env["KAFKA_LOG_DIRS"], None, False) in mounts
        assert ("tls", "/etc/kafka/secrets", f"kafka-{i}", True) in mounts


def test_each_service_writes_only_its_own_topics() -> None:
    services = _compose()["services"]
    setup = services["kafka-setup"]
    assert ("./deploy/acls.txt", "/acls.txt", None, True) in _mounts(setup)
    assert setup["depends_on"] == {
        f"kafka-{i}": {"condition": "service_healthy"} for i in (1, 2, 3)
    }
    assert writers("docbus.deliver.nghe-an") == {"gateway"}  # the gateway alone delivers
    assert writers("docbus.checkpoints") == {"archiver", "witness"}  # notes, cosignatures
    assert writers("docbus.submitted") == {"agency-g22", "agency-g10"}  # publishers alone
    assert "gateway" not in writers("docbus.checkpoints")
    assert all(p not in writers("docbus.deliver.ha-noi") for p in ("archiver", "agency-g22"))
    # Every service that reaches Kafka has a principal, and its password alone.
    principals = {a[0] for a in acls()}
    for name in DOCBUS_SERVICES:
        env = services[name]["environment"]
        user = env["DOCBUS_SASL_USERNAME"]
        assert user in principals, name
        assert env["DOCBUS_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert ("credentials", "/run/credentials", user, True) in _mounts(services[name])
    done = subprocess.run(["bash", "-n", str(ROOT / "deploy" / "kafka-setup.sh")])
    assert done.returncode == 0
    assert subprocess.run(["sh", "-n", str(ROOT / "deploy" / "pki.sh")]).returncode == 0


def test_every_service_is_health_checked_and_waited_for_when_healthy() -> None:
    compose = _compose()
    services = compose["services"]
    declared = set(compose["volumes"])
    for name, s in services.items():
        for source, _, _, _ in _mounts(s):
            assert source.startswith("./") or source in declared, (name, source)
        for needed, how in (s.get("depends_on") or {}).items():
            assert needed in services, (name, needed)
            assert how["condition"] in ("service_healthy", "service_completed_successfully")
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], needed
        if s.get("restart") == "unless-stopped":  # long-running: health checked
            check = s.get("healthcheck")
            assert check and not check.get("disable") and check["test"], name
    for name in DOCBUS_SERVICES:
        assert services[name]["environment"]["DOCBUS_LISTEN"] == "0.0.0.0:9100"
        assert "9100/readyz" in " ".join(services[name]["healthcheck"]["test"])
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")
    assert "\nUSER docbus" in dockerfile and "HEALTHCHECK" in dockerfile


def test_the_archive_is_postgresql_and_its_api_reads_as_a_role_that_cannot_write() -> None:
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert ("postgres", "/var/lib/postgresql/data", None, False) in _mounts(services["postgres"])
    archiver = services["archiver"]
    assert archiver["environment"]["DOCBUS_DATABASE"].startswith("postgresql://docbus@postgres")
    assert archiver["depends_on"]["postgres"]["condition"] == "service_healthy"
    reader = services["archive-reader"]["command"]
    assert reader[:3] == ["archive", "grant-reader", "docbus_reader"]
    api = services["archive-api"]["environment"]["DOCBUS_DATABASE"]
    assert api.startswith("postgresql://docbus_reader@")


def test_secrets_stay_with_whoever_needs_them() -> None:
    services = _compose()["services"]
    for name, s in services.items():
        for source, _, subpath, read_only in _mounts(s):
            if source == "pki-ca":
                assert name == "pki", name  # the CA keys: the pki job alone
            if source == "tls" and name != "pki":
                assert subpath is not None and read_only, name  # a broker's own key only
            if source == "credentials" and name not in ("pki", "kafka-setup"):
                assert subpath is not None and read_only, name  # one's own password only


def test_every_docbus_variable_in_the_stack_is_a_setting_the_services_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Settings ignore a variable they do not know, so a misspelt one would be silently
    # lost in a deployment: each is one of the documented settings, and each service's
    # environment loads as its settings do.
    known = {variable for variable, _, _ in documented()}
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        if service.get("image") != "docbus:latest":
            continue
        assert {v for v in env if v.startswith("DOCBUS_")} <= known, (name, set(env) - known)
        with monkeypatch.context() as m:
            for variable in known:
                m.delenv(variable, raising=False)
            for variable, value in env.items():
                m.setenv(variable, str(value))
            load_settings()  # a value of the wrong kind or form fails here
