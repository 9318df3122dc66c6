"""The ``aif`` command: run the control plane, one role or all, and render manifests.

``aif serve`` is the embedded default: every role in one process, the embedded store in the
data dir and engines as local processes. The single-role commands are what the four
Deployments of an installation run, against a shared MongoDB.
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from api.app import ALL_ROLES, Role, create_app, serves_inference
from api.errors import describe_validation_errors
from api.server import server_options
from api.store import preflight
from api.workers import ChatWorkers, Listeners
from domain.errors import StoreError
from domain.settings import Settings

app = typer.Typer(
    help="aif: register, deploy, scale and serve large language models.",
    no_args_is_help=True,
    add_completion=False,
)
err_console = Console(stderr=True, soft_wrap=True)

HostOption = Annotated[
    str | None, typer.Option("--host", help="Address to listen on [env: AIF_HOST].")
]
PortOption = Annotated[int | None, typer.Option("--port", help="Port [env: AIF_PORT].")]
ChatWorkersOption = Annotated[
    int | None,
    typer.Option(
        "--chat-workers",
        help="Processes serving the port, for the chat path [env: AIF_CHAT_WORKERS; default 1].",
    ),
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Embedded store and engine state [env: AIF_DATA_DIR]."),
]


def _settings(**overrides: Any) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        message, _ = describe_validation_errors(list(exc.errors()))
        err_console.print(f"[red]invalid settings:[/red] {message}")
        raise typer.Exit(2) from exc


def _run(
    roles: frozenset[Role],
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    chat_workers: int | None = None,
) -> None:
    settings = _settings(host=host, port=port, data_dir=data_dir, chat_workers=chat_workers)
    _logging(settings)
    try:
        preflight(settings)
    except (StoreError, OSError) as exc:
        err_console.print(f"[red]cannot start:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(1) from exc
    if settings.chat_workers == 1 or not serves_inference(settings, roles):
        _serve(create_app(settings, roles), settings, roles)
        return
    try:
        listeners = Listeners.bind(settings)
    except OSError as exc:
        err_console.print(f"[red]cannot listen:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    workers = ChatWorkers(listeners, settings, chat_only=Role.FRONTEND not in roles)
    application = create_app(settings, roles, workers=workers, gateways=listeners.urls)
    try:
        _serve(application, settings, roles, listeners.this_process())
    finally:
        listeners.close()


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def _serve(
    application: Any,
    settings: Settings,
    roles: frozenset[Role],
    sockets: list[socket.socket] | None = None,
) -> None:
    # uvloop and httptools for the request path; the plain asyncio loop where Pulumi's inline
    # programs run (a model-job-executor deploying to Kubernetes).
    runs_pulumi = Role.MODEL_JOB_EXECUTOR in roles and settings.runtime == "kubernetes"
    config = uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        loop="asyncio" if runs_pulumi else "uvloop",
        # No proxy in front that aif should trust for client addresses: skip the rewrite.
        proxy_headers=False,
        log_level=settings.log_level.lower(),
        access_log=False,
        # httptools, with deadlines for slow clients, and the server's limits.
        **server_options(settings),
    )
    uvicorn.Server(config).run(sockets=sockets)


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    data_dir: DataDirOption = None,
    chat_workers: ChatWorkersOption = None,
) -> None:
    """Run the whole control plane in one process (the embedded default)."""
    _run(ALL_ROLES, host, port, data_dir, chat_workers)


@app.command()
def frontend(
    host: HostOption = None,
    port: PortOption = None,
    data_dir: DataDirOption = None,
    chat_workers: ChatWorkersOption = None,
) -> None:
    """Run the frontend: the /v1/models API and the OpenAI-compatible endpoint."""
    _run(frozenset({Role.FRONTEND}), host, port, data_dir, chat_workers)


@app.command("model-job-executor")
def model_job_executor(
    host: HostOption = None, port: PortOption = None, data_dir: DataDirOption = None
) -> None:
    """Run the model-job-executor: reconcile registered models into deployments."""
    _run(frozenset({Role.MODEL_JOB_EXECUTOR}), host, port, data_dir)


@app.command("chat-job-executor")
def chat_job_executor(
    host: HostOption = None,
    port: PortOption = None,
    data_dir: DataDirOption = None,
    chat_workers: ChatWorkersOption = None,
) -> None:
    """Run the chat-job-executor: route inference requests to ready instances."""
    _run(frozenset({Role.CHAT_JOB_EXECUTOR}), host, port, data_dir, chat_workers)


@app.command("chat-worker", hidden=True)
def chat_worker(
    fd: Annotated[list[int], typer.Option("--fd", help="An inherited listening socket.")],
    gateways: Annotated[str, typer.Option("--gateways", help="Every process's own address.")],
    chat_only: Annotated[bool, typer.Option("--chat-only")] = False,
) -> None:
    """One more process of a command run with --chat-workers (see api.workers); not for use
    on its own: it serves the sockets its parent passed and dies with it."""
    settings = _settings()
    _logging(settings)
    roles = frozenset({Role.CHAT_JOB_EXECUTOR if chat_only else Role.FRONTEND})
    application = create_app(settings, roles, gateways=gateways.split(","))
    _serve(application, settings, roles, [socket.socket(fileno=f) for f in fd])


@app.command("task-executor-manager")
def task_executor_manager(
    host: HostOption = None, port: PortOption = None, data_dir: DataDirOption = None
) -> None:
    """Run the task-executor-manager: watch instances' load and health."""
    _run(frozenset({Role.TASK_EXECUTOR_MANAGER}), host, port, data_dir)


@app.command()
def render(
    file: Annotated[
        str, typer.Option("--file", "-f", help="A register body (JSON), or - for stdin.")
    ],
) -> None:
    """Print the Kubernetes manifests of a model as multi-document YAML, with no cluster."""
    from api.render import render_documents

    body = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    try:
        documents = render_documents(body, _settings().cluster)
    except ValidationError as exc:
        message, _ = describe_validation_errors(list(exc.errors()))
        err_console.print(f"[red]invalid model:[/red] {message}")
        raise typer.Exit(2) from exc
    except ValueError as exc:
        err_console.print(f"[red]invalid model:[/red] {exc}")
        raise typer.Exit(2) from exc
    sys.stdout.write(documents)


if __name__ == "__main__":
    app()
