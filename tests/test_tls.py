"""The pipeline over TLS with certificates from `docbus pki tls`, and over SASL_SSL with
SCRAM-SHA-512 as in docker-compose.yml; clients that get it wrong told so in one line
(DESIGN §9).

The embedded broker cannot serve TLS itself (Tansu 0.6 never reads its --cert), so a TLS
terminator from tests/tlsproxy.py stands in for its TLS listener and demands a client
certificate (mTLS); the broker advertises the terminator's port. Nor can it log anyone in:
with --authentication it requires SCRAM, but its memory storage keeps no credential, so
every login fails. For SASL, tests/saslproxy.py stands in for Kafka's SASL listener
(SCRAM by scramp, Kafka's own refusal), behind the TLS terminator.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus.kafka.broker import EMBEDDED_SESSION_TIMEOUT_MS, EmbeddedBroker, free_port
from bus.kafka.clients import KafkaSettings
from bus.registry import Registry
from bus.store.outbox import State
from bus.trust.pki import DevPki
from producers.document import new_document
from tests.conftest import MINISTRY, Pki
from tests.saslproxy import sasl_listener
from tests.stack import NGHE_AN, running_stack
from tests.tlsproxy import tls_terminator

pytestmark = pytest.mark.integration


async def test_the_pipeline_runs_over_tls_and_a_misconfigured_client_is_told_why(
    pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    tls_port = free_port()
    server = pki.dev.issue_tls("broker", ["localhost", "127.0.0.1"], replace=True)
    client = pki.dev.issue_tls("client", ["docbus-client"], replace=True)
    ca = pki.dev.trust_dir / "root-ca.cert.pem"
    chain = tmp_path / "ca.pem"  # the root and the issuing CA that signs the certificates
    chain.write_bytes(ca.read_bytes() + (pki.dev.trust_dir / "issuing-ca.cert.pem").read_bytes())
    with EmbeddedBroker(advertised_port=tls_port) as broker:
        async with tls_terminator(tls_port, broker.port, server, client_ca=chain):
            settings = KafkaSettings(
                f"localhost:{tls_port}",
                security_protocol="SSL",
                ssl_cafile=str(ca),
                ssl_certfile=str(client),
                ssl_keyfile=str(client),
                session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
            )
            await _archived_over(settings, broker, pki, registry, tmp_path)  # all over TLS

            rogue = DevPki(tmp_path / "rogue")
            rogue.init()
            env = {
                "DOCBUS_SECURITY_PROTOCOL": "SSL",
                "DOCBUS_SSL_CAFILE": str(ca),
                "DOCBUS_SSL_CERTFILE": str(client),
                "DOCBUS_SSL_KEYFILE": str(client),
            }
            cases = {
                "right": (env, 0, "topics"),
                "another CA": (
                    {**env, "DOCBUS_SSL_CAFILE": str(rogue.trust_dir / "root-ca.cert.pem")},
                    2,
                    "the broker's certificate is not trusted",
                ),
                "no client certificate": (
                    {"DOCBUS_SECURITY_PROTOCOL": "SSL", "DOCBUS_SSL_CAFILE": str(ca)},
                    2,
                    "the broker refused this client's certificate or wants one",
                ),
            }
            await _told(f"localhost:{tls_port}", cases)


async def test_the_pipeline_runs_over_sasl_ssl_and_a_wrong_login_is_told_why(
    pki: Pki, registry: Registry, tmp_path: Path
) -> None:
    tls_port, sasl_port = free_port(), free_port()
    server = pki.dev.issue_tls("broker", ["localhost", "127.0.0.1"], replace=True)
    ca = pki.dev.trust_dir / "root-ca.cert.pem"
    users = {"docbus-services": "pipeline-secret", "gateway": "gateway-secret"}
    with EmbeddedBroker(advertised_port=tls_port) as broker:
        async with (
            sasl_listener(sasl_port, broker.port, users) as logins,
            tls_terminator(tls_port, sasl_port, server),
        ):
            settings = KafkaSettings(
                f"localhost:{tls_port}",
                security_protocol="SASL_SSL",
                sasl_mechanism="SCRAM-SHA-512",
                sasl_username="docbus-services",
                sasl_password="pipeline-secret",
                ssl_cafile=str(ca),
                session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
            )
            await _archived_over(settings, broker, pki, registry, tmp_path)  # all logged in
            assert set(logins) == {"docbus-services"}

            # As docker-compose.yml sets a service up: its password from a mounted file.
            secret = tmp_path / "gateway.password"
            secret.write_text("gateway-secret\n")
            env = {
                "DOCBUS_SECURITY_PROTOCOL": "SASL_SSL",
                "DOCBUS_SSL_CAFILE": str(ca),
                "DOCBUS_SASL_MECHANISM": "SCRAM-SHA-512",
                "DOCBUS_SASL_USERNAME": "gateway",
                "DOCBUS_SASL_PASSWORD_FILE": str(secret),
            }
            wrong = {**env, "DOCBUS_SASL_PASSWORD": "not-the-password"}
            del wrong["DOCBUS_SASL_PASSWORD_FILE"]
            cases = {
                "right": (env, 0, "topics"),
                "wrong password": (wrong, 2, "SASL authentication failed"),
                "unknown user": ({**env, "DOCBUS_SASL_USERNAME": "mallory"}, 2, "SASL auth"),
                "no login": (
                    {"DOCBUS_SECURITY_PROTOCOL": "SSL", "DOCBUS_SSL_CAFILE": str(ca)},
                    2,
                    "wants a SASL login",
                ),
                "a mechanism not offered": (
                    {**env, "DOCBUS_SASL_MECHANISM": "PLAIN"},
                    2,
                    "does not offer SASL PLAIN",
                ),
            }
            await _told(f"localhost:{tls_port}", cases)
            assert logins.count("gateway") >= 1 and "mallory" not in logins


async def _archived_over(
    settings: KafkaSettings, broker: EmbeddedBroker, pki: Pki, registry: Registry, folder: Path
) -> None:
    """A document published over ``settings`` comes back ARCHIVED, its receipt verified."""
    async with running_stack(broker.bootstrap, pki, registry, folder, settings=settings) as stack:
        doc = new_document(MINISTRY, [NGHE_AN], "Văn bản qua kênh bảo vệ")
        await stack.publisher.publish(doc)
        async with asyncio.timeout(60):
            entry = await stack.publisher.wait(doc.document_id)
        assert entry.state is State.ARCHIVED


async def _told(bootstrap: str, cases: dict[str, tuple[dict[str, str], int, str]]) -> None:
    """``docbus topics check`` under each case's variables: its exit code (0 may be 1: the
    topics differ) and what it says, in one line and no traceback when it fails."""
    for name, (variables, code, said) in cases.items():
        done = await asyncio.to_thread(_topics_check, bootstrap, variables)
        assert done.returncode in (code, 1 if code == 0 else code), (name, done)
        assert said in done.stdout + done.stderr, (name, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, name
        if code:
            assert len(done.stderr.strip().splitlines()) == 1, (name, done.stderr)


def _topics_check(bootstrap: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bus", "topics", "check", "--bootstrap", bootstrap],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **env},
    )


def test_a_login_the_broker_refuses_is_told_in_one_line(tmp_path: Path) -> None:
    # The embedded broker with --authentication requires SCRAM and knows no user (its
    # memory storage keeps no credential): any login is refused, as a wrong password is.
    with EmbeddedBroker(authentication=True) as broker:
        done = _topics_check(
            broker.bootstrap,
            {
                "DOCBUS_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "DOCBUS_SASL_MECHANISM": "SCRAM-SHA-512",
                "DOCBUS_SASL_USERNAME": "gateway",
                "DOCBUS_SASL_PASSWORD": "not-the-password",
            },
        )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "SASL authentication failed" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
