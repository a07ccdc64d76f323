"""A real Apache Kafka KRaft cluster on loopback for the tests (DESIGN §9).

``cluster up DIR [--brokers 3]`` fetches the Kafka release pinned in deploy/kafka/pom.xml
from Maven Central (once, into a cache outside the repository), makes a CA and TLS
certificates, formats each broker's storage with a SCRAM-SHA-512 credential for every
principal of deploy/acls.txt, starts the brokers (combined broker+controller), waits until
they serve metadata over the admin mTLS listener, applies deploy/acls.txt with Kafka's own
AclCommand and writes ``DIR/env/<principal>.env``. ``down DIR``, ``kill DIR N`` and
``start DIR N`` stop the cluster, kill one broker, and bring one back on its data; ``fetch``
only fetches the release (CI does it first, so an unreachable Maven fails early).

The brokers' settings come from docker-compose.yml's ``x-kafka-env`` (one source for both),
converted as the apache/kafka image does; only the keys in OVERRIDDEN are replaced, since
hosts, ports and paths differ on loopback.

Standard library, PyYAML and ``cryptography`` only: it runs from the project's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
POM = HERE / "pom.xml"
BATCH = HERE / "Batch.java"
COMPOSE = ROOT / "docker-compose.yml"
ACLS = ROOT / "deploy" / "acls.txt"

ADMIN = "kafka-admin"  # the admin certificate's CN: a super user in the compose settings
HOST = "127.0.0.1"
LISTENERS = ("INTERNAL", "CONTROLLER", "EXTERNAL", "BROKER")  # as in the compose file
SCRAM_ITERATIONS = 8192  # as deploy/kafka-setup.sh
START_TIMEOUT = 90.0
STOP_GRACE = 5.0

# Compose keys replaced on loopback: hosts, ports, node ids and paths. Every other
# KAFKA_* setting of x-kafka-env reaches server.properties unchanged (a test checks it).
OVERRIDDEN = frozenset(
    {
        "node.id",
        "listeners",
        "advertised.listeners",
        "controller.quorum.voters",
        "log.dirs",
        "ssl.keystore.location",
        "ssl.truststore.location",
    }
)
# Not in the compose file, added on loopback only: the tests' consumer groups should not
# wait the default 3 s for more members before their first assignment.
LOOPBACK_EXTRAS = {"group.initial.rebalance.delay.ms": "0"}
# The apache/kafka image leaves these KAFKA_* variables out of server.properties.
IMAGE_EXCLUDES = frozenset(
    {
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPT",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
    }
)
# Small heaps and a quick-starting JIT: three brokers share two cores in the tests.
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")
STORAGE_TOOLS = ("org.apache.kafka.tools.StorageTool", "kafka.tools.StorageTool")
ACL_COMMANDS = ("org.apache.kafka.tools.AclCommand", "kafka.admin.AclCommand")

LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <Console name="out" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="${sys:docbus.log.level:-INFO}"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""


STARTED = time.monotonic()


def note(message: str) -> None:
    """Progress on stderr (stdout carries only what a caller reads: DIR)."""
    print(f"cluster: {time.monotonic() - STARTED:5.1f}s {message}", file=sys.stderr, flush=True)


class ClusterError(Exception):
    """A failure reported as one line: what is missing or broken, and where to look."""


# -- the Kafka release: pinned in pom.xml, fetched by Maven into a cache ---------------------


def kafka_version(pom: Path = POM) -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    found = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if found is None or not found.text:
        raise ClusterError(f"no kafka.version property in {pom}")
    return found.text.strip()


def libs_dir(version: str) -> Path:
    if os.environ.get("DOCBUS_KAFKA_LIBS"):
        return Path(os.environ["DOCBUS_KAFKA_LIBS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "docbus" / f"kafka-{version}" / "libs"


@functools.cache
def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ClusterError("no `java` on PATH: Apache Kafka 4 needs a JDK 17 or newer")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):
        major = int(found.group(2))  # "1.8.0" style
    if major < 17:
        raise ClusterError(f"`java` is {major or 'unknown'}: Apache Kafka 4 needs Java 17+")
    modules = subprocess.run([java, "--list-modules"], capture_output=True, text=True).stdout
    if "jdk.compiler" not in modules:  # Batch.java runs by the source launcher
        raise ClusterError("`java` is a JRE without jdk.compiler: install a full JDK 17+")
    return java


def ensure_libs(version: str) -> Path:
    """The release's jars, copied by Maven once; a partial copy is never used."""
    libs = libs_dir(version)
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ClusterError("no `mvn` on PATH: Maven fetches Apache Kafka from Maven Central")
    libs.parent.mkdir(parents=True, exist_ok=True)
    partial = libs.parent / f"libs.partial-{os.getpid()}"
    log = libs.parent / "mvn.log"
    command = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies"]
    command += [f"-DoutputDirectory={partial}"]
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ClusterError(
            f"Maven could not fetch Apache Kafka {version} from Maven Central (see {log})"
        )
    (partial / ".complete").touch()
    try:
        partial.rename(libs)
    except OSError:  # another run finished first: its copy is as good
        shutil.rmtree(partial, ignore_errors=True)
    return libs


def find_class(libs: Path, candidates: Sequence[str]) -> str:
    """The first of ``candidates`` that this release ships (tools move between versions)."""
    wanted = {c.replace(".", "/") + ".class": c for c in candidates}
    present: set[str] = set()
    for jar in sorted(libs.glob("kafka*.jar")):
        with zipfile.ZipFile(jar) as z:
            present.update(n for n in z.namelist() if n in wanted)
    for entry, name in wanted.items():
        if entry in present:
            return name
    raise ClusterError(f"none of {', '.join(candidates)} in {libs}")


# -- the broker settings: docker-compose.yml's x-kafka-env, as the image converts them ------


def property_name(variable: str) -> str:
    """``KAFKA_FOO_BAR`` → ``foo.bar``, ``___`` → ``-``, ``__`` → ``_`` (the image's rule)."""
    key = variable.removeprefix("KAFKA_")
    key = re.sub(r"[^_]_[^_]", lambda m: m.group().replace("_", "."), key)
    return key.replace("___", "-").replace("__", "_").lower()


def compose_value(value: object) -> str:
    """A compose environment value as the container sees it (``$$`` is an escaped ``$``)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if re.search(r"(?<!\$)\$(?!\$)", text.replace("$$", "")):
        raise ClusterError(f"compose value {text!r} needs interpolation: not supported here")
    return text.replace("$$", "$")


def compose_environment(compose: Path = COMPOSE) -> dict[str, str]:
    loaded = yaml.safe_load(compose.read_text("utf-8"))
    env = loaded.get("x-kafka-env")
    if not isinstance(env, dict):
        raise ClusterError(f"no x-kafka-env mapping in {compose}")
    return {str(k): compose_value(v) for k, v in env.items()}


def compose_settings(compose: Path = COMPOSE) -> dict[str, str]:
    """The broker properties the compose file gives every broker."""
    env = compose_environment(compose)
    return {
        property_name(k): v
        for k, v in env.items()
        if k.startswith("KAFKA_") and k not in IMAGE_EXCLUDES
    }


def cluster_id(compose: Path = COMPOSE) -> str:
    return compose_environment(compose).get("CLUSTER_ID") or "docbus-loopback-cluster"


# -- the layout: nodes, ports, files -------------------------------------------------------


@dataclass
class Node:
    id: int
    ports: dict[str, int]  # listener name → port
    pid: int = 0


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports: all bound at once so none repeats."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def plan_nodes(brokers: int) -> list[Node]:
    ports = iter(free_ports(brokers * len(LISTENERS)))
    return [Node(i, {name: next(ports) for name in LISTENERS}) for i in range(1, brokers + 1)]


def principals(acls: Path = ACLS) -> list[str]:
    lines = acls.read_text("utf-8").splitlines()
    return sorted({line.split()[0] for line in lines if line.strip() and line[0] != "#"})


def acl_rules(acls: Path = ACLS) -> list[list[str]]:
    lines = acls.read_text("utf-8").splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


def bootstrap(nodes: Iterable[Node], listener: str = "INTERNAL") -> str:
    return ",".join(f"{HOST}:{n.ports[listener]}" for n in nodes)


def save_state(root: Path, nodes: Sequence[Node], version: str, libs: Path) -> None:
    state = {"version": version, "libs": str(libs), "nodes": [asdict(n) for n in nodes]}
    tmp = root / "cluster.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n", "utf-8")
    tmp.replace(root / "cluster.json")


def load_state(root: Path) -> tuple[list[Node], str, Path]:
    path = root / "cluster.json"
    if not path.exists():
        raise ClusterError(f"no cluster in {root} (no cluster.json): run `up` first")
    state = json.loads(path.read_text("utf-8"))
    nodes = [Node(n["id"], n["ports"], n.get("pid", 0)) for n in state["nodes"]]
    return nodes, state["version"], Path(state["libs"])


# -- TLS: a CA, one certificate per broker, one for the admin ------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted PKCS#8: the form Kafka's PEM keystore reads without ssl.key.password.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    cert = (
        _builder("docbus loopback Kafka CA", "docbus loopback Kafka CA", key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str) -> tuple[bytes, bytes]:
    """(PKCS#8 key PEM, certificate PEM) for ``cn``, valid for 127.0.0.1 and localhost."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(cn, "docbus loopback Kafka CA", key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_tls(root: Path, nodes: Sequence[Node]) -> None:
    """tls/ca.pem, tls/kafka-N.pem (key + certificate, Kafka's PEM keystore) and the admin's."""
    tls = root / "tls"
    ca = make_ca()
    tls.mkdir(parents=True, exist_ok=True, mode=0o700)
    (tls / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    for n in nodes:
        key, cert = issue(ca, f"kafka-{n.id}")
        write_secret(tls / f"kafka-{n.id}.pem", key + cert)
    key, cert = issue(ca, ADMIN)
    write_secret(tls / f"{ADMIN}.pem", key + cert)
    write_secret(tls / f"{ADMIN}.key.pem", key)
    (tls / f"{ADMIN}.cert.pem").write_bytes(cert)


# -- server.properties ----------------------------------------------------------------------


def loopback_settings(root: Path, node: Node, nodes: Sequence[Node]) -> dict[str, str]:
    """The OVERRIDDEN keys for ``node`` on loopback."""
    advertised = ("INTERNAL", "EXTERNAL", "BROKER")  # a controller listener is not advertised
    voters = ",".join(f"{n.id}@{HOST}:{n.ports['CONTROLLER']}" for n in nodes)
    return {
        "node.id": str(node.id),
        "listeners": ",".join(f"{name}://{HOST}:{node.ports[name]}" for name in LISTENERS),
        "advertised.listeners": ",".join(f"{a}://{HOST}:{node.ports[a]}" for a in advertised),
        "controller.quorum.voters": voters,
        "log.dirs": str(root / "data" / f"kafka-{node.id}"),
        "ssl.keystore.location": str(root / "tls" / f"kafka-{node.id}.pem"),
        "ssl.truststore.location": str(root / "tls" / "ca.pem"),
    }


def server_properties(root: Path, node: Node, nodes: Sequence[Node]) -> dict[str, str]:
    settings = compose_settings()
    loopback = loopback_settings(root, node, nodes)
    if set(loopback) != OVERRIDDEN:
        raise ClusterError("loopback settings and OVERRIDDEN disagree")
    return {**settings, **LOOPBACK_EXTRAS, **loopback}


def properties_path(root: Path, node_id: int) -> Path:
    return root / "config" / f"kafka-{node_id}.properties"


def write_properties(path: Path, props: dict[str, str]) -> None:
    # key=value unescaped, as the apache/kafka image renders its environment.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(props.items())), "utf-8")


def read_properties(path: Path) -> dict[str, str]:
    lines = path.read_text("utf-8").splitlines()
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {k: v for k, v in pairs}


def admin_properties(root: Path) -> Path:
    path = root / "config" / "admin.properties"
    props = {
        "security.protocol": "SSL",
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(root / "tls" / f"{ADMIN}.pem"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(root / "tls" / "ca.pem"),
    }
    write_properties(path, props)
    return path


# -- processes ------------------------------------------------------------------------------


def java_command(root: Path, libs: Path, main: str, *args: str, level: str = "WARN") -> list[str]:
    return [
        require_java(),
        "-Xmx512m",
        *JVM_FLAGS,
        "-cp",
        f"{libs}/*",
        f"-Dlog4j2.configurationFile={root / 'config' / 'log4j2.xml'}",
        f"-Ddocbus.log.level={level}",
        main,
        *args,
    ]


def run_tool(root: Path, libs: Path, what: str, command: list[str]) -> None:
    log = root / "logs" / f"{what}.log"
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=120)
    if done.returncode != 0:
        raise ClusterError(f"{what} failed (exit {done.returncode}); see {log}")


def scram_arguments(root: Path) -> list[str]:
    """A fresh password per principal (0600 files) and StorageTool's --add-scram for each."""
    args: list[str] = []
    for principal in principals():
        password = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: nothing to quote for the tool
        write_secret(root / "credentials" / principal / "password", password.encode())
        entry = f"name={principal},iterations={SCRAM_ITERATIONS},password={password}"
        args += ["--add-scram", f"SCRAM-SHA-512=[{entry}]"]
    return args


def format_storage(root: Path, libs: Path, nodes: Sequence[Node]) -> None:
    """Every node's log dir, with the SCRAM credentials in its bootstrap metadata."""
    tool = find_class(libs, STORAGE_TOOLS)
    scram = scram_arguments(root)
    cid = cluster_id()

    def one(node: Node) -> None:
        config = str(properties_path(root, node.id))
        args = ["format", "--config", config, "--cluster-id", cid, *scram]
        run_tool(root, libs, f"format-kafka-{node.id}", java_command(root, libs, tool, *args))

    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(one, nodes))


def start_broker(root: Path, libs: Path, node: Node) -> None:
    config = str(properties_path(root, node.id))
    command = java_command(root, libs, "kafka.Kafka", config, level="INFO")
    with (root / "logs" / f"kafka-{node.id}.log").open("ab") as out:
        # Its own session: a Ctrl-C in the caller's terminal does not reach the brokers.
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=root,
        )  # fmt: skip
    node.pid = proc.pid
    CHILDREN[proc.pid] = proc
    (root / "run").mkdir(exist_ok=True)
    (root / "run" / f"kafka-{node.id}.pid").write_text(f"{proc.pid}\n")


# The brokers this process started: their exit status explains an early death.
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def exit_status(node: Node) -> str:
    proc = CHILDREN.get(node.pid)
    code = proc.poll() if proc else None
    return "" if code is None else f" with status {code}"


def alive(root: Path, node: Node) -> bool:
    """Whether ``node.pid`` is still this cluster's broker (a pid can be reused)."""
    if node.pid <= 0:
        return False
    if node.pid in CHILDREN:  # ours: its status is exact (/proc races with its exec)
        return CHILDREN[node.pid].poll() is None
    try:
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{node.pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[1].split()[0] == "Z"
    return not zombie and str(properties_path(root, node.id)).encode() in cmdline


def signal_node(root: Path, node: Node, sig: int) -> None:
    if alive(root, node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, sig)


def stop_nodes(root: Path, nodes: Sequence[Node], grace: float = STOP_GRACE) -> None:
    for n in nodes:
        signal_node(root, n, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(alive(root, n) for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.1)
    for n in nodes:
        signal_node(root, n, signal.SIGKILL)
    for n in nodes:
        _reap(n.pid)
        n.pid = 0


def _reap(pid: int) -> None:
    """Collect a child we started ourselves (else it lingers as a zombie)."""
    if pid <= 0:
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# -- health: a Metadata request over the admin mTLS listener --------------------------------


def _uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _metadata_request(correlation: int) -> bytes:
    # Metadata v12 (flexible): header v2, no topics, no auto-creation, no authorized ops.
    client = b"docbus-cluster"
    header = struct.pack(">hhih", 3, 12, correlation, len(client)) + client + b"\x00"
    body = b"\x01" + b"\x00" + b"\x00" + b"\x00"
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _read_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by the broker")
        data += chunk
    return data


def _broker_ids(response: bytes) -> set[int]:
    """The node ids in a Metadata v12 response (header v1: correlation id, tagged fields)."""
    _, pos = _uvarint(response, 4)
    pos += 4  # throttle_time_ms
    count, pos = _uvarint(response, pos)
    ids: set[int] = set()
    for _ in range(count - 1):
        (node_id,) = struct.unpack_from(">i", response, pos)
        ids.add(node_id)
        host_len, pos = _uvarint(response, pos + 4)
        pos += host_len - 1 + 4  # host, port
        rack_len, pos = _uvarint(response, pos)
        pos += max(rack_len - 1, 0)
        tags, pos = _uvarint(response, pos)
        if tags:
            raise ValueError("tagged fields in a broker entry")
    return ids


def admin_context(root: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root / "tls" / "ca.pem"))
    context.load_cert_chain(root / "tls" / f"{ADMIN}.cert.pem", root / "tls" / f"{ADMIN}.key.pem")
    return context


def registered(root: Path, node: Node, context: ssl.SSLContext) -> set[int]:
    """The brokers that ``node`` reports (live and unfenced), asked as the admin."""
    with (
        socket.create_connection((HOST, node.ports["BROKER"]), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as sock,
    ):
        sock.sendall(_metadata_request(1))
        (size,) = struct.unpack(">i", _read_exactly(sock, 4))
        return _broker_ids(_read_exactly(sock, size))


def wait_until(root: Path, probe: Sequence[Node], expected: set[int], timeout: float) -> None:
    """Until every node in ``probe`` answers Metadata listing exactly ``expected``."""
    context = admin_context(root)
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        dead = [n for n in probe if not alive(root, n)]
        if dead:
            n = dead[0]
            log = f"{root}/logs/kafka-{n.id}.log"
            raise ClusterError(f"broker {n.id} exited{exit_status(n)}; see {log}")
        try:
            answers = {n.id: registered(root, n, context) for n in probe}
            if all(ids == expected for ids in answers.values()):
                return
            last = f"brokers report {answers}"
        except (OSError, ValueError, struct.error) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.5)
    raise ClusterError(f"cluster not healthy after {timeout:.0f}s ({last}); see {root}/logs")


# -- ACLs and the clients' settings ---------------------------------------------------------


def acl_calls(admin: Sequence[str]) -> list[list[str]]:
    """AclCommand argument lists for deploy/acls.txt: one per (principal, operation, pattern),
    since one call adds its operation on every resource it names."""
    grouped: dict[tuple[str, str, str], list[str]] = {}
    for principal, operation, resource, name, pattern in acl_rules():
        grouped.setdefault((principal, operation, pattern), []).extend([f"--{resource}", name])
    calls = []
    for (principal, operation, pattern), resources in grouped.items():
        args = [*admin, "--add", "--allow-principal", f"User:{principal}"]
        args += ["--operation", operation, *resources, "--resource-pattern-type", pattern]
        calls.append(args)
    return calls


def apply_acls(root: Path, libs: Path, nodes: Sequence[Node]) -> None:
    """deploy/acls.txt through Kafka's AclCommand, all calls in one JVM (Batch.java)."""
    tool = find_class(libs, ACL_COMMANDS)
    admin = ["--bootstrap-server", bootstrap(nodes, "BROKER")]
    admin += ["--command-config", str(admin_properties(root))]
    batch = root / "config" / "acls.batch"
    batch.write_text("".join("\t".join(a) + "\n" for a in acl_calls(admin)), "utf-8")
    command = java_command(root, libs, str(BATCH), tool, str(batch))
    run_tool(root, libs, "acls", command)


def write_env(path: Path, settings: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()), "utf-8")


def write_envs(root: Path, nodes: Sequence[Node]) -> None:
    tls = root / "tls"
    for principal in principals():
        write_env(
            root / "env" / f"{principal}.env",
            {
                "DOCBUS_BOOTSTRAP": bootstrap(nodes),
                "DOCBUS_SECURITY_PROTOCOL": "SASL_SSL",
                "DOCBUS_SASL_MECHANISM": "SCRAM-SHA-512",
                "DOCBUS_SASL_USERNAME": principal,
                "DOCBUS_SASL_PASSWORD_FILE": str(root / "credentials" / principal / "password"),
                "DOCBUS_SSL_CAFILE": str(tls / "ca.pem"),
            },
        )
    write_env(
        root / "env" / "admin.env",
        {
            "DOCBUS_BOOTSTRAP": bootstrap(nodes, "BROKER"),
            "DOCBUS_SECURITY_PROTOCOL": "SSL",
            "DOCBUS_SSL_CAFILE": str(tls / "ca.pem"),
            "DOCBUS_SSL_CERTFILE": str(tls / f"{ADMIN}.cert.pem"),
            "DOCBUS_SSL_KEYFILE": str(tls / f"{ADMIN}.key.pem"),
        },
    )


# -- commands -------------------------------------------------------------------------------


def up(root: Path, brokers: int) -> None:
    if (root / "cluster.json").exists():
        raise ClusterError(f"{root} already holds a cluster: `down` it or pick another DIR")
    require_java()  # before Maven runs, so a missing JDK is the error reported
    version = kafka_version()
    libs = ensure_libs(version)
    note(f"Apache Kafka {version} in {libs}")
    for sub in ("config", "logs", "run", "data"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "config" / "log4j2.xml").write_text(LOG4J2, "utf-8")
    nodes = plan_nodes(brokers)
    make_tls(root, nodes)
    for n in nodes:
        write_properties(properties_path(root, n.id), server_properties(root, n, nodes))
    format_storage(root, libs, nodes)
    note(f"{brokers} brokers' storage formatted, SCRAM credentials in it")
    try:
        for n in nodes:
            start_broker(root, libs, n)
        save_state(root, nodes, version, libs)
        wait_until(root, nodes, {n.id for n in nodes}, START_TIMEOUT)
        note("brokers up: all registered, Metadata answered over mTLS")
        apply_acls(root, libs, nodes)
        note(f"{len(acl_rules())} ACLs applied")
    except BaseException:
        stop_nodes(root, nodes, grace=0)
        save_state(root, nodes, version, libs)
        raise
    write_envs(root, nodes)


def down(root: Path) -> None:
    nodes, version, libs = load_state(root)
    stop_nodes(root, nodes)
    save_state(root, nodes, version, libs)
    note("stopped")


def node_of(nodes: Sequence[Node], node_id: int) -> Node:
    for n in nodes:
        if n.id == node_id:
            return n
    raise ClusterError(f"no broker {node_id} (brokers: {', '.join(str(n.id) for n in nodes)})")


def kill(root: Path, node_id: int) -> None:
    nodes, version, libs = load_state(root)
    node = node_of(nodes, node_id)
    signal_node(root, node, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(root, node) and time.monotonic() < deadline:
        time.sleep(0.05)
    node.pid = 0
    save_state(root, nodes, version, libs)


def start(root: Path, node_id: int) -> None:
    nodes, version, libs = load_state(root)
    node = node_of(nodes, node_id)
    if alive(root, node):
        raise ClusterError(f"broker {node_id} is running (pid {node.pid})")
    start_broker(root, libs, node)
    save_state(root, nodes, version, libs)
    running = [n for n in nodes if alive(root, n)]
    wait_until(root, running, {n.id for n in running}, START_TIMEOUT)
    note(f"broker {node_id} rejoined")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cluster", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("up", help="make, start and set up a cluster in DIR")
    p.add_argument("dir", type=Path)
    p.add_argument("--brokers", type=int, default=3)
    commands.add_parser("down", help="stop every broker").add_argument("dir", type=Path)
    commands.add_parser("fetch", help="fetch the pinned release from Maven Central (once)")
    for name, text in (("kill", "SIGKILL broker N"), ("start", "restart broker N")):
        p = commands.add_parser(name, help=text)
        p.add_argument("dir", type=Path)
        p.add_argument("node", type=int)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "fetch":
            require_java()
            print(ensure_libs(kafka_version()))
            return 0
        root = args.dir.resolve()
        if args.command == "up":
            if args.brokers < 1:
                raise ClusterError("--brokers must be at least 1")
            root.mkdir(parents=True, exist_ok=True)
            up(root, args.brokers)
            print(root)
        elif args.command == "down":
            down(root)
        elif args.command == "kill":
            kill(root, args.node)
        else:
            start(root, args.node)
    except ClusterError as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
