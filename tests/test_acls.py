"""A grant taken away while a service runs: the service is not ready while its batch is
retried, then stops in one line (DESIGN §7, §9).

Every principal of deploy/acls.txt running the pipeline on the real Kafka cluster under its
own ACLs, and being refused what they deny, is tested in tests/test_on_kafka.py. What needs
this stand-in (tests/saslproxy.py, playing Kafka's authorizer for writes) is a grant removed
from one running service: on the shared session cluster that would refuse the module's own
services too.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bus.kafka.broker import EMBEDDED_SESSION_TIMEOUT_MS, EmbeddedBroker, free_port
from bus.kafka.clients import KafkaSettings
from bus.registry import Registry
from bus.trust.pki import CertRole, KeyAlgorithm
from producers.document import new_document
from tests.acls import may_write
from tests.conftest import MINISTRY, Pki
from tests.saslproxy import sasl_listener
from tests.serving import ready
from tests.stack import NGHE_AN, running_stack

pytestmark = pytest.mark.integration

PASSWORDS = {"gateway": "g-secret", "archiver": "a-secret", "agency-g22": "m-secret"}


def _sasl(user: str) -> dict[str, str]:
    return {
        "DOCBUS_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "DOCBUS_SASL_MECHANISM": "SCRAM-SHA-512",
        "DOCBUS_SASL_USERNAME": user,
        "DOCBUS_SASL_PASSWORD": PASSWORDS[user],
    }


def _agency(bootstrap: str) -> KafkaSettings:
    """The ministry's node, logged in as its own principal."""
    return KafkaSettings(
        bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="agency-g22",
        sasl_password=PASSWORDS["agency-g22"],
        session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
    )


def _serve(
    broker: EmbeddedBroker, bootstrap: str, pki: Pki, service: str, folder: Path, *more: str
) -> subprocess.Popen[bytes]:
    key, cert = pki.dev.issue(
        f"docbus.{service}", CertRole.SERVICE, KeyAlgorithm.ED25519, replace=True
    )
    folder.mkdir(parents=True, exist_ok=True)
    extra = [*(["--data-dir", str(folder)] if service == "archiver" else []), *more]
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "bus", "serve", service, "--bootstrap", bootstrap),
            *("--trust", str(pki.dev.trust_dir), "--key", f"{key},{cert}", *extra),
        ],
        env={**broker.client_env(), **_sasl(service)},
        stdout=(folder / "log").open("wb"),
        stderr=subprocess.STDOUT,
    )


async def test_a_service_the_broker_will_not_let_write_is_not_ready_then_stops_in_one_line(
    pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    # An ACL the gateway lacks (its grant on the delivery topics): its batch is retried,
    # nothing is lost, and /readyz says which part fails, so an orchestrator sees it.
    def lacking(principal: str, topic: str) -> bool:
        delivering = principal == "gateway" and topic.startswith("docbus.deliver.")
        return may_write(principal, topic) and not delivering

    port, ops = free_port(), free_port()
    bootstrap = f"127.0.0.1:{port}"
    with EmbeddedBroker(advertised_port=port) as broker:
        async with sasl_listener(port, broker.port, PASSWORDS, lacking):
            agency = _agency(bootstrap)
            async with running_stack(
                broker.bootstrap, pki, registry, tmp_path, services=False, settings=agency
            ) as stack:
                listen = ("--listen", f"127.0.0.1:{ops}")
                gateway = _serve(broker, bootstrap, pki, "gateway", tmp_path / "g", *listen)
                try:
                    await ready(ops, 200, 60)
                    await stack.publisher.publish(new_document(MINISTRY, [NGHE_AN], "Công văn"))
                    body = await ready(ops, 503, 60)
                    assert body["publishing (docbus.gateway)"] is False
                    assert body["broker (docbus.gateway)"] is True
                    # No retry grants an ACL: after a bounded number of refusals the gateway
                    # stops with the broker's refusal in one line (exit 2), its batch
                    # uncommitted, rather than retrying forever.
                    code = await asyncio.to_thread(gateway.wait, 120)
                finally:
                    if gateway.poll() is None:
                        gateway.kill()
                        gateway.wait(30)
                assert code == 2
                said = (tmp_path / "g" / "log").read_text().strip().splitlines()[-1]
                assert said.startswith("Error: the broker refused: TopicAuthorizationFailed"), said
