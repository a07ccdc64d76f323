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
import yaml

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
    brokers = {name: s for name, s in services.items() if name.startswith("kafka-")}
    assert len(brokers) == 3
    ids = {s["environment"]["KAFKA_NODE_ID"] for s in brokers.values()}
    assert ids == {"1", "2", "3"}
    for name, s in brokers.items():
        env = s["environment"]
        assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
        assert sorted(v.split("@")[1] for v in voters) == [f"kafka-{i}:9093" for i in (1, 2, 3)]
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == 3
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2  # acks=all survives one broker down


def test_every_service_waits_for_its_topics_and_runs_a_real_command() -> None:
    services = _compose()["services"]
    for name in ("gateway", "archiver", "inbox-nghe-an"):
        s = services[name]
        assert s["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert s["environment"]["DOCBUS_BOOTSTRAP"].count("kafka-") == 3
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
