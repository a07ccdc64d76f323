"""The ``docbus`` command line root.

Sub-commands are imported only when they run: the bus's own from the table below,
``producers``' and ``consumers``' through the ``docbus.commands`` entry-point group (so
this package imports neither).
"""

from __future__ import annotations

from pathlib import Path

import click

from bus.cli.options import CONFIG, LazyGroup, settings
from bus.logs import configure_logging

_OWN = {
    "pki": "bus.cli.pki:pki",
    "verify": "bus.cli.verify:verify",
    "open": "bus.cli.verify:open_command",
    "registry": "bus.cli.registry:registry",
    "directory": "bus.cli.directory:directory",
    "topics": "bus.cli.topics:topics",
    "demo": "bus.cli.demo:demo",
    "dev": "bus.cli.demo:dev",
    "audit": "bus.cli.audit:audit",
    "evidence": "bus.cli.evidence:evidence",
    "edxml": "bus.cli:edxml",
}


#: Commands that run until stopped: their libraries' warnings are worth a (rate-limited) line.
_SERVICES = ("serve", "dev")


def _config(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    ctx.meta[CONFIG] = value


@click.group(cls=LazyGroup, lazy=_OWN)
@click.version_option(package_name="docbus")
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DOCBUS_CONFIG",
    expose_value=False,
    is_eager=True,
    callback=_config,
    help="A TOML settings file (env DOCBUS_CONFIG); DOCBUS_* variables override it.",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """docbus: signed documents between government agencies, over Kafka."""
    configure_logging(settings().log_level, service=ctx.invoked_subcommand in _SERVICES)


@click.group(cls=LazyGroup, plugin_prefix="edxml")
def edxml() -> None:
    """The edXML bridge: legacy document management systems on the bus."""


def main() -> None:
    """Console-script entry point."""
    cli()
