"""The client commands of ``aif accelerators``: the card inventory of a running aif, and an
admin's quarantine and release of one card.

``aif accelerators`` prints the totals per node and every card not free (``--all``: every card);
``-o json|yaml`` prints ``GET /v1/accelerators`` as it is. ``quarantine NODE INDEX --reason``
and ``release NODE INDEX`` are the admin routes of the same names, each audited by the server.
Connection, key and output options are those of ``aif models`` (:mod:`api.cli_models`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from api.cli_models import (
    KeyFileOption,
    KeyOption,
    Output,
    OutputOption,
    UrlOption,
    connect,
    console,
    emit,
)
from api.client import DEFAULT_URL

accelerators_app = typer.Typer(
    help="The accelerator inventory of a running aif; quarantine and release cards (admin).",
    invoke_without_command=True,
)

NodeArgument = Annotated[str, typer.Argument(help="The node, as GET /v1/accelerators names it.")]
IndexArgument = Annotated[int, typer.Argument(help="The card's index on the node.")]


def _nodes_table(inventory: dict[str, Any]) -> Table:
    table = Table("node", "resource type", "free", "allocated", "quarantined")
    for node in inventory["nodes"]:
        table.add_row(
            node["node"], node["resource_type"], str(node.get("free", 0)),
            str(node.get("allocated", 0)), str(node.get("quarantined", 0)),
        )  # fmt: skip
    return table


def _cards_table(cards: list[dict[str, Any]]) -> Table:
    table = Table("card", "state", "model", "instance", "reason")
    for card in cards:
        quarantine = card.get("quarantine") or {}
        table.add_row(
            f"{card['node']}/{card['index']}", card["state"], card.get("model") or "",
            card.get("instance_id") or "", quarantine.get("reason", ""),
        )  # fmt: skip
    return table


@accelerators_app.callback()
def accelerators(
    ctx: typer.Context,
    every_card: Annotated[bool, typer.Option("--all", help="List free cards too.")] = False,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """The cards per node, and each card allocated or quarantined (admin key)."""
    if ctx.invoked_subcommand is not None:
        return
    with connect(url, api_key, api_key_file) as client:
        inventory = client.accelerators()
    emit(inventory, output, _nodes_table(inventory))
    if output is Output.table:
        cards = [c for c in inventory["cards"] if every_card or c["state"] != "free"]
        if cards:
            console.print(_cards_table(cards))


@accelerators_app.command("quarantine")
def quarantine(
    node: NodeArgument,
    index: IndexArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")],
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Take a card out of service: no new instance is placed on it."""
    with connect(url, api_key, api_key_file) as client:
        change = client.quarantine(node, index, reason)
    done = "quarantined" if change["changed"] else "already quarantined"
    console.print(f"{node}/{index}: {done}")


@accelerators_app.command("release")
def release(
    node: NodeArgument,
    index: IndexArgument,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Put a quarantined card back in service."""
    with connect(url, api_key, api_key_file) as client:
        change = client.release(node, index)
    console.print(f"{node}/{index}: {'released' if change['changed'] else 'was not quarantined'}")
