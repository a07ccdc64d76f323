"""``docbus inbox list|show|ack``: an agency node's inbox from a terminal (over its API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import httpx
from rich.console import Console
from rich.table import Table

from bus.cli.options import DocbusGroup, path_option
from bus.wire.errors import Unavailable
from consumers.agency.models import FEEDBACK_CODES

_node_option = click.option(
    "--node", default="http://127.0.0.1:8470", show_default=True, help="The agency node's URL."
)
_token_option = path_option(
    "--token-file", exists=True, required=True, help="The node's token (DATA_DIR/token)."
)


def _call(node: str, token_file: Path, method: str, path: str, **kw: Any) -> Any:
    """One API call: its JSON, or one line and exit 1 (refused) or 75 (node unavailable)."""
    token = token_file.read_text("utf-8").strip()
    try:
        response = httpx.request(
            method,
            node.rstrip("/") + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kw,
        )
    except httpx.TransportError as exc:
        raise Unavailable("node", str(exc)) from None
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = f"{problem.get('reason') or problem['status']}: {problem['detail']}"
        except (ValueError, KeyError):
            detail = f"HTTP {response.status_code}"
        raise click.ClickException(detail)
    return response.json()


def _document_path(sender: str, document_id: str, revision: int) -> str:
    return f"/v1/inbox/{quote(sender, safe='')}/{quote(document_id, safe='/')}/{revision}"


@click.group(cls=DocbusGroup)
def inbox() -> None:
    """What an agency node received: list, show, acknowledge."""


@inbox.command("list")
@_node_option
@_token_option
@click.option("--after", default=0, show_default=True, help="Cursor: list what came after it.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def inbox_list(node: str, token_file: Path, after: int, limit: int, as_json: bool) -> None:
    """Documents received, oldest first."""
    page = _call(node, token_file, "GET", "/v1/inbox", params={"after": after, "limit": limit})
    if as_json:
        click.echo(json.dumps(page, ensure_ascii=False))
        return
    table = Table()
    for column in ("sender", "document", "rev", "subject", "received"):
        table.add_column(column)
    for item in page["items"]:
        table.add_row(
            item["sender"],
            item["document_id"],
            str(item["revision"]),
            item["subject"],
            item["received_at"][:19],
        )
    Console().print(table)
    if page["next"] is not None:
        click.echo(f"more: --after {page['next']}")


@inbox.command("show")
@click.argument("sender")
@click.argument("document_id")
@click.option("--revision", default=0, show_default=True)
@_node_option
@_token_option
def inbox_show(sender: str, document_id: str, revision: int, node: str, token_file: Path) -> None:
    """One received document with what was verified, as JSON."""
    shown = _call(node, token_file, "GET", _document_path(sender, document_id, revision))
    click.echo(json.dumps(shown, ensure_ascii=False, indent=2))


@inbox.command("ack")
@click.argument("sender")
@click.argument("document_id")
@click.option("--revision", default=0, show_default=True)
@click.option("--code", type=click.Choice(FEEDBACK_CODES), default="ACCEPTED", show_default=True)
@click.option("--message", help="A note for the sender.")
@_node_option
@_token_option
def inbox_ack(
    sender: str,
    document_id: str,
    revision: int,
    code: str,
    message: str | None,
    node: str,
    token_file: Path,
) -> None:
    """Send the agency's signed feedback about a received document."""
    path = _document_path(sender, document_id, revision) + "/status"
    _call(node, token_file, "POST", path, json={"code": code, "message": message})
    click.echo(f"{document_id} {code} sent")
