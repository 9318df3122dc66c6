"""The client commands of ``aif``: ``models list|get|delete|scale|events|wait``, ``apply``,
``diff``.

They talk to a running aif (``--url`` / ``AIF_URL``) with a key (``--api-key`` /
``AIF_API_KEY``, or ``--api-key-file``). Human output is a table; ``-o json|yaml`` prints the
API's own objects. A refusal prints the API's message on one line and exits 1; ``aif diff``
exits 0 when nothing would change, 1 when something would, 2 on error. :func:`register` adds
them to the ``aif`` app; ``aif accelerators`` (:mod:`api.cli_accelerators`) uses the same
options and client.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from api.apply import Action, FileSetError, load, parse_selector, plan
from api.client import DEFAULT_URL, AifClient, ApiError, Model, read_key

console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)
models_app = typer.Typer(
    help="List, show, scale, delete and wait for models on a running aif.",
    no_args_is_help=True,
)

# How often --wait reads the models: a status line appears within this of a change.
WAIT_POLL_S = 0.5
# Statuses a model rests in: the wait for it is over.
SETTLED = frozenset({"ACTIVE", "IDLE"})


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


UrlOption = Annotated[
    str, typer.Option("--url", envvar="AIF_URL", help="The aif to talk to [env: AIF_URL].")
]
KeyOption = Annotated[
    str | None,
    typer.Option("--api-key", envvar="AIF_API_KEY", help="An API key [env: AIF_API_KEY]."),
]
KeyFileOption = Annotated[
    Path | None, typer.Option("--api-key-file", help="A file holding the API key.")
]
OutputOption = Annotated[Output, typer.Option("--output", "-o", help="table, json or yaml.")]
FilesOption = Annotated[
    list[Path], typer.Option("--file", "-f", help="A model file, or a directory of them.")
]
SelectorOption = Annotated[
    list[str] | None,
    typer.Option(
        "--selector", "-l", help="key=value: the label marking the models this file set manages."
    ),
]
TimeoutOption = Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", markup=True)
    return typer.Exit(code)


@contextmanager
def connect(url: str, key: str | None, key_file: Path | None, code: int = 1) -> Iterator[AifClient]:
    """A client for the command; an ApiError inside ends the command with its message."""
    try:
        client = AifClient(url, read_key(key, key_file))
    except ApiError as exc:
        raise _fail(exc.message, code) from exc
    try:
        yield client
    except ApiError as exc:
        raise _fail(exc.message, code) from exc
    except FileSetError as exc:
        raise _fail(str(exc), code) from exc
    finally:
        client.close()


def emit(data: Any, output: Output, table: Table) -> None:
    if output is Output.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif output is Output.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        console.print(table)


def _model_table(models: list[Model]) -> Table:
    table = Table("name", "type", "status", "ready", "instances", "min", "max", "labels", "version")
    for m in models:
        table.add_row(
            m["name"], m["type"], m["status"], str(m["ready_instances"]), str(m["instances"]),
            str(m["min_instance"]), str(m["max_instance"]),
            ",".join(f"{k}={v}" for k, v in m.get("labels", {}).items()),
            m.get("resource_version", ""),
        )  # fmt: skip
    return table


@models_app.command("list")
def models_list(
    selector: SelectorOption = None,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Every model (with --selector, those carrying the label)."""
    with connect(url, api_key, api_key_file) as client:
        models = client.list(parse_selector(selector or []))
    emit({"models": models}, output, _model_table(models))


@models_app.command("get")
def models_get(
    name: Annotated[str, typer.Argument(help="The model's name or id.")],
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """One model, with its status message."""
    with connect(url, api_key, api_key_file) as client:
        model = client.get(name)
    table = _model_table([model])
    table.caption = model["status_msg"]
    emit({"model": model}, output, table)


@models_app.command("delete")
def models_delete(
    name: Annotated[str, typer.Argument(help="The model's name or id.")],
    if_match: Annotated[
        str | None, typer.Option("--if-match", help="Only if it is at this resource_version.")
    ] = None,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Start deleting a model (it shows DELETING until its deployment is gone)."""
    with connect(url, api_key, api_key_file) as client:
        model = client.delete(name, if_match)
    emit({"model": model}, output, _model_table([model]))


@models_app.command("scale")
def models_scale(
    name: Annotated[str, typer.Argument(help="The model's name or id.")],
    min_instance: Annotated[int | None, typer.Option("--min", help="min_instance.")] = None,
    max_instance: Annotated[int | None, typer.Option("--max", help="max_instance.")] = None,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Change a model's instance bounds; the scaler keeps its instances within them."""
    patch = {
        k: v
        for k, v in (("min_instance", min_instance), ("max_instance", max_instance))
        if v is not None
    }
    if not patch:
        raise _fail("give --min, --max or both", 2)
    with connect(url, api_key, api_key_file) as client:
        model = client.update(name, patch)
    emit({"model": model}, output, _model_table([model]))


@models_app.command("events")
def models_events(
    name: Annotated[str, typer.Argument(help="The model's name or id.")],
    limit: Annotated[int, typer.Option("--limit", help="The latest this many.")] = 100,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """The model's recorded changes, oldest first: who, what, when."""
    with connect(url, api_key, api_key_file) as client:
        events = client.events(name, limit)
    table = Table("at", "actor", "action", "changes", "reason")
    for e in events:
        changes = ", ".join(
            f"{k}: {c.get('from', '')}->{c.get('to', '')}" for k, c in e["changes"].items()
        )
        table.add_row(e["at"], e["actor"], e["action"], changes, e["reason"])
    emit({"events": events}, output, table)


@models_app.command("wait")
def models_wait(
    names: Annotated[list[str], typer.Argument(help="Model names or ids.")],
    timeout: TimeoutOption = 600.0,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Wait until every model is ACTIVE (or IDLE at zero); exit 1 on FAILED or the timeout."""
    with connect(url, api_key, api_key_file) as client:
        wait_for(client, names, timeout)


def wait_for(client: AifClient, names: list[str], timeout_s: float) -> None:
    """One line per model each time its status changes, until all are settled."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, str] = {}
    pending = list(names)
    while True:
        for name in list(pending):
            model = client.get(name)
            line = (
                f"{name}: {model['status']} "
                f"({model['ready_instances']}/{model['instances']} ready) {model['status_msg']}"
            ).rstrip()
            if last.get(name) != line:
                last[name] = line
                console.print(line)
            if model["status"] == "FAILED":
                raise _fail(f"{name} FAILED: {model['status_msg']}")
            if model["status"] in SETTLED and model["ready_instances"] >= min(
                model["instances"], 1
            ):
                pending.remove(name)
        if not pending:
            return
        if time.monotonic() >= deadline:
            waiting = "; ".join(last[n] for n in pending)
            raise _fail(f"timed out after {timeout_s:g}s waiting for: {waiting}")
        time.sleep(WAIT_POLL_S)


def _describe(action: Action) -> str:
    if action.kind == "update":
        return f"{action.name}: update {', '.join(sorted(action.body))}"
    return f"{action.name}: {action.kind.replace('create', 'created').replace('delete', 'deleted')}"


def register(app: typer.Typer) -> None:
    """Add the client commands to the ``aif`` app."""
    app.add_typer(models_app, name="models")
    app.command("apply")(apply)
    app.command("diff")(diff)


def _selector_and_documents(files: list[Path], selector: list[str] | None, code: int) -> Any:
    try:
        labels = parse_selector(selector or [])
        return labels, load(files, labels)
    except FileSetError as exc:
        raise _fail(str(exc), code) from exc


def apply(
    files: FilesOption,
    selector: SelectorOption = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete managed models (--selector) no longer listed.")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every model is ready.")] = False,
    timeout: TimeoutOption = 600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be done.")] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """Make the server's models match the files: create, update what differs, --prune."""
    if prune and not selector:
        raise _fail("--prune needs --selector: the label marking the models these files manage", 2)
    labels, documents = _selector_and_documents(files, selector, 1)
    with connect(url, api_key, api_key_file) as client:
        actions = plan(client, documents, labels if prune else {})
        suffix = " (dry run)" if dry_run else ""
        for action in actions:
            if not dry_run:
                _carry_out(client, action)
            console.print(_describe(action) + suffix)
        if wait and not dry_run:
            wait_for(client, [a.name for a in actions if a.kind != "delete"], timeout)


def _carry_out(client: AifClient, action: Action) -> None:
    try:
        if action.kind == "create":
            client.create(action.body)
        elif action.kind == "update":
            client.update(action.name, action.body, action.resource_version)
        elif action.kind == "delete":
            client.delete(action.name, action.resource_version)
    except ApiError as exc:
        if exc.status == 412:
            raise ApiError(
                f"{action.name}: changed on the server since it was read: {exc.message}", 412
            ) from exc
        raise ApiError(f"{action.name}: {exc.message}", exc.status) from exc


def diff(
    files: FilesOption,
    selector: SelectorOption = None,
    prune: Annotated[
        bool, typer.Option("--prune", help="Show the deletions apply --prune would make.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: KeyOption = None,
    api_key_file: KeyFileOption = None,
) -> None:
    """What apply would change, as a unified diff: exit 0 if nothing, 1 if something, 2 on error."""
    if prune and not selector:
        raise _fail("--prune needs --selector: the label marking the models these files manage", 2)
    labels, documents = _selector_and_documents(files, selector, 2)
    with connect(url, api_key, api_key_file, code=2) as client:
        actions = plan(client, documents, labels if prune else {})
    changes = [a for a in actions if a.kind != "unchanged"]
    for action in changes:
        sys.stdout.write(action.unified_diff())
    if changes:
        raise typer.Exit(1)
