"""C2SP signed notes, tlog-checkpoint and tlog-cosignature: Go's known answers
(golang.org/x/mod/sumdb/note, note_test.go), hostile input, and our own round trips."""

from __future__ import annotations

import base64
import os
import shutil
import string
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given
from hypothesis import strategies as st

from bus.tlog.checkpoint import MAX_SIZE, Checkpoint, open_checkpoint
from bus.tlog.note import (
    ALG_COSIGNATURE_V1,
    NoteError,
    NoteSigner,
    NoteVerifier,
    add_lines,
    open_note,
    sign_note,
    split_note,
)
from bus.wire.errors import DocbusError

# From golang.org/x/mod/sumdb/note/note_test.go.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngot"
    "pRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox"
    "33WWd1RvMc+QQ=\n"
)


def _peter() -> NoteSigner:
    _, _, name, _, blob = PETER_SKEY.split("+", 4)  # Go's PRIVATE+KEY+name+hash+key
    seed = base64.b64decode(blob)[1:]
    return NoteSigner(name, ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def test_go_signs_and_we_sign_the_same_bytes() -> None:
    peter = _peter()
    assert peter.verifier().encode() == PETER_VKEY
    assert sign_note(TEXT, [peter]) == (TEXT + "\n" + PETER_SIG).encode()


def test_go_notes_open_with_one_or_both_keys() -> None:
    note = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    peter, enoch = NoteVerifier.parse(PETER_VKEY), NoteVerifier.parse(ENOCH_VKEY)
    one = open_note(note, [peter])
    assert one.text == TEXT
    assert [s.name for s in one.verified] == ["PeterNeumann"]
    assert [s.name for s in one.unverified] == ["EnochRoot"]
    both = open_note(note, [peter, enoch])
    assert [s.name for s in both.verified] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(NoteError, match="no verifiable signatures"):
        open_note(note, [])
    with pytest.raises(NoteError, match="ambiguous key"):
        open_note(note, [enoch, peter, enoch])


@pytest.mark.parametrize(
    "message",
    [
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvq"
        "fqdngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        TEXT + "\n" + PETER_SIG * 101,
    ],
)
def test_go_malformed_notes_are_malformed(message: str) -> None:
    with pytest.raises(NoteError, match="malformed"):
        open_note(message.encode(), [NoteVerifier.parse(PETER_VKEY)])


def test_a_bad_signature_by_a_known_key_is_an_error_not_a_skip() -> None:
    bent = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match="invalid signature for key PeterNeumann"):
        open_note((TEXT + "\n" + bent).encode(), [NoteVerifier.parse(PETER_VKEY)])


def test_mangled_verifier_keys_are_refused() -> None:
    for i in range(len(PETER_VKEY)):
        mangled = PETER_VKEY[:i] + chr(ord(PETER_VKEY[i]) + 1) + PETER_VKEY[i + 1 :]
        with pytest.raises(NoteError):
            NoteVerifier.parse(mangled)
    with pytest.raises(NoteError):
        NoteVerifier.parse("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_a_checkpoint_is_a_note_any_tlog_tool_reads() -> None:
    key = NoteSigner("docbus.archiver", ed25519.Ed25519PrivateKey.generate())
    cp = Checkpoint("docbus.archiver", 7, bytes(range(32)))
    note = cp.sign(key)
    text, lines = split_note(note)
    assert text == "docbus.archiver\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    assert [line.name for line in lines] == ["docbus.archiver"]
    opened, _ = open_checkpoint(note, key.verifier())
    assert opened == cp
    other = NoteSigner("docbus.archiver", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(DocbusError):
        open_checkpoint(note, other.verifier())  # the same name, another key
    impostor = NoteSigner("bridge.vpcp", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(DocbusError):
        open_checkpoint(Checkpoint("bridge.vpcp", 7, bytes(32)).sign(impostor), key.verifier())


def test_cosignatures_carry_their_time_and_verify_with_the_witness_key() -> None:
    log = NoteSigner("docbus.archiver", ed25519.Ed25519PrivateKey.generate())
    witness = NoteSigner("witness.h41", ed25519.Ed25519PrivateKey.generate())
    cp = Checkpoint("docbus.archiver", 3, bytes(32))
    note = add_lines(cp.sign(log), [witness.cosign(cp.text(), 1_764_000_000)])
    _, opened = open_checkpoint(note, log.verifier(), (witness.verifier(ALG_COSIGNATURE_V1),))
    assert opened.cosigned_at == {"witness.h41": 1_764_000_000}
    forged_time = note.replace(b"\n\xe2\x80\x94 witness.h41 ", b"\n\xe2\x80\x94 witness.h41 ")
    assert forged_time == note
    # A cosignature moved onto another checkpoint does not verify.
    other = Checkpoint("docbus.archiver", 4, bytes(32))
    moved = add_lines(other.sign(log), [witness.cosign(cp.text(), 1_764_000_000)])
    with pytest.raises(DocbusError, match="invalid signature"):
        open_checkpoint(moved, log.verifier(), (witness.verifier(ALG_COSIGNATURE_V1),))


@pytest.mark.parametrize(
    "text",
    [
        "o\n+7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "o\n07\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "o\n7_0\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "o\n-1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "o\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\n",
        "o\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "o\n7\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n\n",
    ],
)
def test_only_what_is_written_back_byte_for_byte_parses(text: str) -> None:
    with pytest.raises(DocbusError):
        Checkpoint.parse(text)


@given(
    st.text(alphabet=string.ascii_letters + ".-_/", min_size=1, max_size=40),
    st.integers(min_value=0, max_value=2**64),
    st.binary(min_size=32, max_size=32),
    st.lists(st.text(alphabet=string.printable.strip(), min_size=1, max_size=20), max_size=3),
)
def test_checkpoints_round_trip(origin: str, size: int, root: bytes, ext: list[str]) -> None:
    # Up to the largest tree size (Go's tlog, SQLite: 2^63-1); past it, malformed.
    cp = Checkpoint(origin, size, root, tuple(ext))
    if size <= MAX_SIZE:
        assert Checkpoint.parse(cp.text()) == cp
    else:
        with pytest.raises(DocbusError, match="size"):
            Checkpoint.parse(cp.text())


@given(st.binary(max_size=400))
def test_any_bytes_are_a_note_or_a_clear_error(data: bytes) -> None:
    try:
        note = open_note(data, [NoteVerifier.parse(PETER_VKEY)])
    except NoteError as exc:
        assert str(exc)
    else:
        assert note.text.endswith("\n") and note.verified


GO_SOURCE = Path(__file__).parent / "go" / "notecheck"
GO_PATH = Path("/usr/share/gocode")  # Debian's golang-golang-x-mod-dev


@pytest.fixture(scope="module")
def notecheck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Go's reference note code, built here (.ci/run installs Go and x/mod from Debian)."""
    go = shutil.which("go")
    assert go is not None, "Go is needed: apt-get install golang-go golang-golang-x-mod-dev"
    assert (GO_PATH / "src/golang.org/x/mod/sumdb/note").is_dir(), "golang-golang-x-mod-dev"
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(GO_PATH), "GOCACHE": str(out)}
    subprocess.run(
        [go, "build", "-o", str(out / "notecheck"), "."], cwd=GO_SOURCE, env=env, check=True
    )
    return out / "notecheck"


def test_go_verifies_our_checkpoints_and_refuses_a_changed_one(
    notecheck: Path, tmp_path: Path
) -> None:
    log = NoteSigner("docbus.archiver", ed25519.Ed25519PrivateKey.generate())
    cp = Checkpoint("docbus.archiver", 12, bytes(range(32)))
    note = tmp_path / "checkpoint"
    note.write_bytes(cp.sign(log))
    done = subprocess.run(
        [notecheck, "verify", log.verifier().encode(), note], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == cp.text()
    note.write_bytes(note.read_bytes().replace(b"\n12\n", b"\n13\n"))
    done = subprocess.run([notecheck, "verify", log.verifier().encode(), note], text=True)
    assert done.returncode == 1


def test_we_read_what_go_signs_byte_for_byte(notecheck: Path, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    ours = NoteSigner("witness.h41", key)
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    skey = "+".join(
        [
            "PRIVATE",
            "KEY",
            ours.name,
            ours.verifier().hash.hex(),
            base64.b64encode(b"\x01" + seed).decode(),
        ]
    )
    text = tmp_path / "text"
    text.write_text(Checkpoint("docbus.archiver", 3, bytes(32)).text())
    signed = subprocess.run([notecheck, "sign", skey, text], capture_output=True, check=True).stdout
    assert signed == sign_note(text.read_text(), [ours])
    assert open_note(signed, [ours.verifier()]).text == text.read_text()
