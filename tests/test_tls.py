"""A login the embedded broker refuses is told in one line (DESIGN §9).

The pipeline over SASL_SSL, mTLS, and every way a client can be set up wrong (password,
user, mechanism, CA, missing login or certificate) are tested on the real Kafka cluster, in
tests/test_on_kafka.py. The embedded broker has a login of its own: with --authentication it
requires SCRAM and, its memory storage keeping no credential, refuses every one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bus.kafka.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


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
