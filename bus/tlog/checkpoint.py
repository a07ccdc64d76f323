"""Signed checkpoints of the archive's transparency log: tree size, root hash, time.

The body is plain text (origin, size, base64 root, ISO time, one per line). Signing it is
the trust layer's (:func:`bus.trust.signing.sign_checkpoint`): this module is pure format.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime

from bus.wire.errors import DocbusError, Reason

CHECKPOINT_TYPE = "application/vnd.docbus.checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """The state of a log: ``size`` leaves with root hash ``root`` at time ``at``."""

    origin: str
    size: int
    root: bytes
    at: datetime

    def body(self) -> bytes:
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\n{self.at.isoformat()}\n".encode()

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """The checkpoint in ``body``; DocbusError(malformed) for anything else."""
        try:
            origin, size, root, at, rest = body.decode("utf-8").split("\n")
            if rest:
                raise ValueError("trailing text")
            return cls(
                origin, int(size), base64.b64decode(root, validate=True), datetime.fromisoformat(at)
            )
        except (UnicodeDecodeError, ValueError, binascii.Error) as exc:
            raise DocbusError(Reason.MALFORMED, f"not a checkpoint: {exc}") from exc
