"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 keys, and tlog-cosignature/v1
cosignatures (c2sp.org/tlog-cosignature), signed and checked with cryptography directly.

A note is UTF-8 text ending in a newline, a blank line, then one line per signature:
``— <name> <base64(key hash ‖ signature)>``. The key hash is the first four bytes of
SHA-256(name ‖ "\\n" ‖ algorithm byte ‖ public key). Parsing is strict, as Go's
``golang.org/x/mod/sumdb/note`` is: what it does not write back byte for byte is malformed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bus.wire.errors import BusError

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
MAX_NOTE = 1_000_000
MAX_SIGNATURES = 100
_DASH = "— "  # U+2014 EM DASH and a space


class NoteError(BusError, ValueError):
    """A note that is malformed, or whose signatures do not verify."""


def key_hash(name: str, alg: int, public: bytes) -> bytes:
    """The four-byte key hash that names a key in signature lines."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def _raw(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _valid_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() or c == "+" for c in name)


@dataclass(frozen=True)
class NoteVerifier:
    """A public key that checks one name's signatures (``alg`` 0x01 note, 0x04 cosignature)."""

    name: str
    alg: int
    key: ed25519.Ed25519PublicKey

    @property
    def hash(self) -> bytes:
        return key_hash(self.name, self.alg, _raw(self.key))

    def encode(self) -> str:
        """The verifier key string: ``name+hexhash+base64(alg ‖ key)``."""
        blob = base64.b64encode(bytes([self.alg]) + _raw(self.key)).decode()
        return f"{self.name}+{self.hash.hex()}+{blob}"

    @classmethod
    def parse(cls, text: str) -> NoteVerifier:
        """A verifier key string; NoteError if anything in it is off."""
        parts = text.split("+", 2)  # base64 may hold "+" too
        if len(parts) != 3 or not _valid_name(parts[0]) or len(parts[1]) != 8:
            raise NoteError(f"malformed verifier key {text!r}")
        try:
            blob = base64.b64decode(parts[2], validate=True)
            wanted = bytes.fromhex(parts[1])
        except (binascii.Error, ValueError) as exc:
            raise NoteError(f"malformed verifier key {text!r}") from exc
        if len(blob) != 33 or blob[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
            raise NoteError(f"unknown key type in {text!r}")
        verifier = cls(parts[0], blob[0], ed25519.Ed25519PublicKey.from_public_bytes(blob[1:]))
        if verifier.hash != wanted or verifier.encode() != text:
            raise NoteError(f"verifier key {text!r} does not match its hash")
        return verifier


@dataclass(frozen=True)
class NoteSigner:
    """An Ed25519 private key that signs notes as ``name``."""

    name: str
    key: ed25519.Ed25519PrivateKey

    def __post_init__(self) -> None:
        if not _valid_name(self.name):
            raise NoteError(f"{self.name!r} cannot name a note key")

    def verifier(self, alg: int = ALG_ED25519) -> NoteVerifier:
        return NoteVerifier(self.name, alg, self.key.public_key())

    def sign(self, text: str) -> str:
        """The signature line over ``text`` (a note body)."""
        _check_text(text)
        sig = self.key.sign(text.encode())
        return _line(self.name, self.verifier().hash + sig)

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        """A tlog-cosignature/v1 line over a checkpoint body at ``timestamp`` (Unix seconds)."""
        _check_text(checkpoint_text)
        message = f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()
        body = struct.pack(">Q", timestamp) + self.key.sign(message)
        return _line(self.name, self.verifier(ALG_COSIGNATURE_V1).hash + body)


def _line(name: str, blob: bytes) -> str:
    return f"{_DASH}{name} {base64.b64encode(blob).decode()}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise NoteError("a note body is non-empty lines, each ending in a newline")


@dataclass(frozen=True)
class SignatureLine:
    name: str
    hash: bytes
    blob: bytes  # what follows the key hash


@dataclass(frozen=True)
class Note:
    """A parsed note: its text, the signatures that verified and the ones nobody could check."""

    text: str
    verified: tuple[SignatureLine, ...]
    unverified: tuple[SignatureLine, ...]
    cosigned_at: Mapping[str, int]  # cosigner name → the time it cosigned

    def signed_by(self, name: str) -> bool:
        return any(s.name == name for s in self.verified)


def sign_note(text: str, signers: Iterable[NoteSigner]) -> bytes:
    """``text`` signed by every signer, as a signed note."""
    return (text + "\n" + "".join(s.sign(text) for s in signers)).encode()


def add_lines(note: bytes, lines: Iterable[str]) -> bytes:
    """A signed note with more signature lines (cosignatures) appended."""
    return note + "".join(lines).encode()


def split_note(data: bytes) -> tuple[str, list[SignatureLine]]:
    """The text and signature lines of a note; NoteError(malformed) for anything else."""
    if len(data) > MAX_NOTE:
        raise NoteError("malformed note: too large")
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("malformed note: not UTF-8") from exc
    if any(c < " " and c != "\n" for c in whole):
        raise NoteError("malformed note: control characters")
    cut = whole.rfind("\n\n")
    if cut < 0 or not whole.endswith("\n"):
        raise NoteError("malformed note")
    text, block = whole[: cut + 1], whole[cut + 2 :]
    lines = block.split("\n")[:-1]
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError("malformed note: no or too many signatures")
    parsed = []
    for line in lines:
        if not line.startswith(_DASH):
            raise NoteError("malformed note: bad signature line")
        name, _, encoded = line[len(_DASH) :].partition(" ")
        if not _valid_name(name) or " " in encoded:
            raise NoteError("malformed note: bad signature line")
        try:
            blob = base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise NoteError("malformed note: bad signature encoding") from exc
        if len(blob) < 5 or base64.b64encode(blob).decode() != encoded:
            raise NoteError("malformed note: bad signature encoding")
        parsed.append(SignatureLine(name, blob[:4], blob[4:]))
    return text, parsed


def open_note(data: bytes, verifiers: Iterable[NoteVerifier]) -> Note:
    """Parse and check a note: every line by a known key must verify, and at least one does.

    Cosignature keys (0x04) check tlog-cosignature/v1 lines. Raises NoteError.
    """
    text, lines = split_note(data)
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for v in verifiers:
        if (v.name, v.hash) in known:
            raise NoteError(f"ambiguous key {v.name}+{v.hash.hex()}")
        known[(v.name, v.hash)] = v
    verified: list[SignatureLine] = []
    unverified: list[SignatureLine] = []
    cosigned: dict[str, int] = {}
    for line in lines:
        found = known.get((line.name, line.hash))
        if found is None:
            if line not in unverified:
                unverified.append(line)
            continue
        when = _check(found, text, line.blob)
        if when is not None:
            cosigned[line.name] = when
        if line not in verified:
            verified.append(line)
    if not verified:
        raise NoteError("note has no verifiable signatures")
    return Note(text, tuple(verified), tuple(unverified), cosigned)


def _check(v: NoteVerifier, text: str, blob: bytes) -> int | None:
    """Raise NoteError unless ``blob`` is ``v``'s signature; a cosignature's time."""
    try:
        if v.alg == ALG_ED25519:
            v.key.verify(blob, text.encode())
            return None
        if len(blob) != 8 + 64:
            raise InvalidSignature
        (timestamp,) = struct.unpack(">Q", blob[:8])
        v.key.verify(blob[8:], f"cosignature/v1\ntime {timestamp}\n{text}".encode())
        return int(timestamp)
    except InvalidSignature as exc:
        raise NoteError(f"invalid signature for key {v.name}+{v.hash.hex()}") from exc
