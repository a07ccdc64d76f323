"""The national directory at growing sizes (DESIGN §13): loading a signed version (verify +
parse + check the registry), and resolving a recipient, from the shipped sample to national
size (34 provinces, 3,300 communes, 20,000 agencies); beside the bare cost of the same
bytes (``json.loads``) measured in the same run, and the memory the parsed directory takes.

Run: python -m benchmarks.bench_directory
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
import tracemalloc
from datetime import UTC, date, datetime
from pathlib import Path

from bus.directory.generate import make_directory, national
from bus.directory.signed import open_directory, sign_directory
from bus.trust.pki import CertRole, DevPki, KeyAlgorithm
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
    verifier = Verifier(TrustStore.load(pki.trust_dir))
    print(
        f"{'agencies':>9} {'units':>6} {'bytes':>10} {'load ms':>8} {'json.loads ms':>14} "
        f"{'load/bare':>9} {'resolve µs':>11} {'memory MB':>10}"
    )
    for communes, agencies in SIZES:
        registry = national(SEED, communes, agencies) if agencies > 10 else _small(SEED, 10)
        made = make_directory(registry, {}, 1, datetime.now(UTC))
        record = sign_directory(made, key)
        load = median_seconds(lambda: open_directory(record, verifier).parsed)  # noqa: B023
        bare = median_seconds(lambda: json.loads(made.to_json()))  # noqa: B023
        loaded = open_directory(record, verifier).parsed
        codes = random.Random(7).choices(list(loaded.agencies), k=20_000)
        start = time.perf_counter()
        for code in codes:
            loaded.resolve(code, ON)
        resolve = (time.perf_counter() - start) / len(codes)
        tracemalloc.start()
        kept = open_directory(record, verifier).parsed
        memory = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        del kept
        print(
            f"{len(loaded.agencies):>9,} {len(loaded.units):>6,} {len(record):>10,} "
            f"{load * 1000:>8.1f} {bare * 1000:>14.1f} {load / bare:>9.1f} "
            f"{resolve * 1e6:>11.1f} {memory:>10.1f}"
        )


def _small(seed: dict[str, list[dict[str, object]]], agencies: int) -> dict[str, object]:
    """The seed cut to its first ``agencies`` agencies (their units all kept)."""
    return {"units": seed["units"], "agencies": seed["agencies"][:agencies]}


if __name__ == "__main__":
    main()
