"""The national directory at growing sizes (DESIGN §13): loading a signed version (verify the
manifest, assemble its parts, parse and check the registry), and resolving a recipient,
from the shipped sample to national size (34 provinces, 3,300 communes, 20,000 agencies,
each with an encryption certificate and a signing chain); beside the bare cost of the same
content (``json.loads``) measured in the same run, the memory the loaded directory takes,
and what one renewed certificate costs to publish.

Run: python -m benchmarks.bench_directory
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import tempfile
import time
import tracemalloc
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from bus.directory.generate import make_directory, national
from bus.directory.model import Directory
from bus.directory.signed import open_directory, sign_directory
from bus.trust.pki import CertRole, DevPki, KemAlgorithm, KeyAlgorithm
from bus.trust.signing import SigningKey
from bus.trust.truststore import TrustStore
from bus.trust.verifier import Verifier
from bus.wire.model import Role

SEED = json.loads((Path(__file__).resolve().parents[1] / "bus/data/registry.json").read_text())
SIZES = ((0, 10), (330, 2_000), (3_300, 20_000))  # (communes, agencies)
ON = date(2026, 12, 3)


def median_seconds(work: object, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="docbus-directory-"))
    pki = DevPki(folder / "pki")
    pki.init()
    key = SigningKey.load(
        Role.SERVICE, *pki.issue("docbus.directory", CertRole.SERVICE, KeyAlgorithm.ED25519)
    )
    encryption = pki.issue_encryption("000.00.00.G22", KemAlgorithm.MLKEM768_X25519)[1]
    signer = pki.issue("000.00.00.G22", CertRole.SIGNER, KeyAlgorithm.ED25519)[1]
    pems = (encryption.read_text("ascii"), signer.read_text("ascii"))
    verifier = Verifier(TrustStore.load(pki.trust_dir))
    print(
        f"{'agencies':>9} {'units':>6} {'records':>7} {'bytes':>11} {'load ms':>8} "
        f"{'json.loads ms':>14} {'load/bare':>9} {'resolve µs':>11} {'memory MB':>10} "
        f"{'renewal bytes':>13}"
    )
    for communes, agencies in SIZES:
        registry = national(SEED, communes, agencies) if agencies > 10 else _small(SEED, 10)
        made = _with_certificates(registry, pems)
        records = sign_directory(made, key)
        load = median_seconds(lambda: open_directory(records, verifier).parsed)  # noqa: B023
        bare = median_seconds(lambda: json.loads(made.to_json()))  # noqa: B023
        loaded = open_directory(records, verifier).parsed
        codes = random.Random(7).choices(list(loaded.agencies), k=20_000)
        start = time.perf_counter()
        for code in codes:
            loaded.resolve(code, ON)
        resolve = (time.perf_counter() - start) / len(codes)
        tracemalloc.start()
        kept = open_directory(records, verifier)
        memory = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        del kept
        print(
            f"{len(loaded.agencies):>9,} {len(loaded.units):>6,} {len(records):>7} "
            f"{sum(len(v) for _, v in records):>11,} {load * 1000:>8.1f} {bare * 1000:>14.1f} "
            f"{load / bare:>9.1f} {resolve * 1e6:>11.1f} {memory:>10.1f} "
            f"{_renewal(made, records, key):>13,}"
        )


def _with_certificates(registry: dict[str, Any], pems: tuple[str, str]) -> Directory:
    """Every agency with an encryption certificate and a signing chain: the same genuine
    PEM for each, since size, not validity, is measured."""
    codes = [a["code"] for a in registry["agencies"]]
    encryption = {code: pems[0] for code in codes}
    signing = {code: [pems[1]] for code in codes}
    return make_directory(registry, encryption, 1, datetime.now(UTC), signing=signing)


def _renewal(made: Directory, records: list[tuple[bytes, bytes]], key: SigningKey) -> int:
    """The bytes a new version renewing one agency's certificate writes to the topic (the
    parts it shares with the version before are not written again)."""
    code = made.registry["agencies"][-1]["code"]
    renewed = dataclasses.replace(
        made, version=2, encryption={**made.encryption, code: made.encryption[code] + "\n"}
    )
    present = {k for k, _ in records}
    return sum(len(v) for k, v in sign_directory(renewed, key) if k not in present)


def _small(seed: dict[str, list[dict[str, object]]], agencies: int) -> dict[str, object]:
    """The seed cut to its first ``agencies`` agencies (their units all kept)."""
    return {"units": seed["units"], "agencies": seed["agencies"][:agencies]}


if __name__ == "__main__":
    main()
