"""``docbus demo`` and ``docbus dev``: the whole bus on the embedded broker.

The services and the publisher run as separate ``docbus`` processes, as in a real
deployment: this package starts them and talks to Kafka, and imports neither
``producers`` nor ``consumers``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bus.demo.attacks import run_attacks
from bus.demo.scenarios import audit, run_scenarios, search_with_evidence
from bus.demo.stack import INBOXES, NODES, Stack, running
from bus.store.archive import open_archive
from bus.store.postgres import redacted
from bus.wire.errors import DocbusError, Reason


def run_demo(
    data_dir: Path | None, broker_binary: Path | None = None, database: str | None = None
) -> bool:
    """Run every scenario; True only if every document met its expected fate.

    With ``database`` the archive is in PostgreSQL, which must hold no archive yet: the
    demo's fates and its audit are judged over the entries it makes itself.
    """
    folder = data_dir or Path(tempfile.mkdtemp(prefix="docbus-demo-"))
    if database is not None:
        with open_archive(folder / "archive", create=True, database=database) as archive:
            if archive.count():
                raise DocbusError(
                    Reason.POLICY, f"the demo needs an empty archive; {archive.name} holds one"
                )
    console = Console(width=None if sys.stdout.isatty() else 120)
    started = time.monotonic()
    where = f"; archive in {redacted(database)}" if database else ""
    console.print(f"[bold]docbus demo[/] in {folder}{where}")
    with running(folder, broker_binary, database=database) as stack:
        console.print(
            f"broker {stack.broker.bootstrap}; gateway, archiver and inboxes of "
            f"{', '.join(INBOXES)} running"
        )
        scenarios = run_scenarios(stack)
        scenarios.extend(run_attacks(stack))
        scenarios.append(search_with_evidence(stack, scenarios[0].document_id))
        scenarios.append(audit(stack))
    table = Table(title="What happened")
    for column in ("scenario", "document", "expected", "outcome", ""):
        table.add_column(column)
    for s in scenarios:
        table.add_row(s.name, s.document_id[:13], s.expect, s.outcome, "✓" if s.ok else "✗")
    console.print(table)
    for s in scenarios:
        if s.note:
            console.print(s.note)
    ok = all(s.ok for s in scenarios)
    console.print(
        f"{'[green]all outcomes as expected' if ok else '[red]some outcomes differ'}[/] "
        f"in {time.monotonic() - started:.1f}s; data in {folder}"
    )
    return ok


def run_dev(
    data_dir: Path | None, broker_binary: Path | None = None, database: str | None = None
) -> None:
    """The same stack as the demo, left running until Ctrl-C."""
    folder = data_dir or Path(tempfile.mkdtemp(prefix="docbus-dev-"))
    console = Console(width=None if sys.stdout.isatty() else 160)
    with running(folder, broker_binary, nodes=True, database=database) as stack:
        bootstrap = stack.broker.bootstrap
        console.print(f"broker:      {bootstrap}  (export DOCBUS_BOOTSTRAP={bootstrap})")
        console.print(f"trust store: {stack.trust}")
        console.print(f"keys:        {stack.pki / 'agencies'}")
        console.print(f"archive:     {redacted(database) if database else folder / 'archive'}")
        console.print(f"logs:        {folder / 'logs'}")
        table = Table(title="agency nodes (HTTP API; send the token as Authorization: Bearer)")
        for column in ("agency", "url", "token file"):
            table.add_column(column)
        for agency in NODES:
            table.add_row(agency, stack.node_url(agency), str(stack.node_dir(agency) / "token"))
        console.print(table)
        console.print("Ctrl-C stops everything.")
        signal.signal(signal.SIGTERM, _interrupt)
        with contextlib.suppress(KeyboardInterrupt):
            while not (dead := died(stack)):
                time.sleep(0.5)
            for name, why in dead:
                console.print(f"[red]{name} died: {why}[/]")
            console.print("stopping everything else")
            raise SystemExit(1)


def died(stack: Stack) -> list[tuple[str, str]]:
    """Which of ``stack``'s processes (the broker included) died by themselves, and why:
    the exit code or signal, and the last lines of the service's log."""
    dead = []
    if (code := stack.broker.exit_code) is not None:
        dead.append(("the broker", _ended(code)))
    for name, process in stack.processes.items():
        if (code := process.poll()) is not None:
            log = stack.folder / "logs" / f"{name}.log"
            tail = log.read_text("utf-8", "replace").splitlines()[-3:] if log.is_file() else []
            dead.append((name, "; ".join([_ended(code), *tail])))
    return dead


def _ended(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
