"""The ``aif`` command: run the control plane, one role or all, render manifests, manage keys.

``aif serve`` is the embedded default: every role in one process, the embedded store in the
data dir and engines as local processes. The single-role commands are what the four
Deployments of an installation run, against a shared MongoDB.

``aif serve`` on an address other than loopback refuses to start while no API key is
configured (``AIF_ADMIN_KEY``, ``AIF_ADMIN_KEY_FILE`` or a key in the store) unless given
``--insecure``, which ``AIF_ENVIRONMENT=production`` refuses in turn. The single-role
commands (an installation's pods, which get ``aif:adminKey`` from the install program) start
either way and log a warning when they serve beyond loopback with no key.

``aif keys create|list|update|revoke`` and ``aif usage`` work on the store directly
(``--data-dir``, or ``AIF_MONGODB_URL``), as an operator on the machine or with the
database's credentials does: that is how the first key is made with no admin key
configured. A running server sees a change within ``AIF_KEYS_REFRESH_S``. Through a running
server, the same is ``/v1/keys`` and ``/v1/usage``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from api import cli_accelerators, cli_models
from api.app import ALL_ROLES, Role, create_app, serves_inference
from api.auth import Principal
from api.cli_models import Output, OutputOption, emit
from api.cli_usage import usage_data, usage_table
from api.errors import AifError, describe_validation_errors
from api.schemas import KeyCreate, KeyUpdate
from api.server import server_options
from api.services.keys import KeyService
from api.services.usage import UsageService
from api.store import open_store, preflight
from api.workers import ChatWorkers, Listeners
from domain.errors import StoreError
from domain.keys import CLI, ApiKey
from domain.records import format_timestamp
from domain.settings import Settings
from domain.store import ModelStore

app = typer.Typer(
    help="aif: register, deploy, scale and serve large language models.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(
    help="Create, list and revoke API keys, in the store directly (see /v1/keys for the API).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")
cli_models.register(app)
app.add_typer(cli_accelerators.accelerators_app, name="accelerators")
console = Console(soft_wrap=True)
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


def quiet_routine_calls() -> None:
    """Successful routine calls are DEBUG: the HTTP clients' one INFO line per request (health
    probes of every engine every reconcile pass, metric scrapes) shows only at DEBUG."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(logging.DEBUG):
            logger.setLevel(logging.WARNING)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]cannot start:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(code)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _has_key(settings: Settings) -> bool:
    """Whether any API key is configured: the bootstrap admin key, or one in the store."""
    if settings.admin_secret():
        return True
    store = open_store(settings)
    try:
        return bool(store.list_keys())
    finally:
        store.close()


def _check_exposure(settings: Settings, insecure: bool) -> None:
    """Refuse to serve unauthenticated beyond this machine (see the module)."""
    if insecure and settings.environment == "production":
        raise _fail(
            "--insecure is refused with AIF_ENVIRONMENT=production: set AIF_ADMIN_KEY "
            "(or AIF_ADMIN_KEY_FILE), or create a key with `aif keys create`",
            2,
        )
    if is_loopback(settings.host) or insecure or _has_key(settings):
        return
    raise _fail(
        f"no API key is configured and --host {settings.host} is reachable from other "
        "machines: set AIF_ADMIN_KEY (or AIF_ADMIN_KEY_FILE), create a key with "
        "`aif keys create`, or pass --insecure to serve without keys",
        2,
    )


def _warn_if_open(settings: Settings) -> None:
    """A single role (an installation's pod) starts either way; it says when it is open.

    Its store may not answer yet (a MongoDB starting beside it): the role retries that
    itself, so nothing here stops it.
    """
    if is_loopback(settings.host):
        return
    try:
        if _has_key(settings):
            return
    except (StoreError, OSError):
        return
    logging.getLogger(__name__).warning(
        "no API key is configured: /v1 on %s is open to anyone who reaches it (set AIF_ADMIN_KEY)",
        settings.host,
    )


def _run(
    roles: frozenset[Role],
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    chat_workers: int | None = None,
    *,
    insecure: bool | None = None,
) -> None:
    settings = _settings(host=host, port=port, data_dir=data_dir, chat_workers=chat_workers)
    _logging(settings)
    try:
        settings.admin_secret()  # an unreadable AIF_ADMIN_KEY_FILE stops here, said plainly
        preflight(settings)
        if insecure is not None:
            _check_exposure(settings, insecure)
    except (StoreError, OSError) as exc:
        raise _fail(str(exc)) from exc
    if insecure is None:
        _warn_if_open(settings)
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
    quiet_routine_calls()


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
        **server_options(settings, application.state.disconnects),
    )
    uvicorn.Server(config).run(sockets=sockets)


InsecureOption = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Serve with no API key on an address other than loopback (refused in production).",
    ),
]


@app.command()
def serve(
    host: HostOption = None,
    port: PortOption = None,
    data_dir: DataDirOption = None,
    chat_workers: ChatWorkersOption = None,
    insecure: InsecureOption = False,
) -> None:
    """Run the whole control plane in one process (the embedded default)."""
    _run(ALL_ROLES, host, port, data_dir, chat_workers, insecure=insecure)


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


def _store(data_dir: Path | None) -> ModelStore:
    settings = _settings(data_dir=data_dir)
    try:
        return open_store(settings)
    except (StoreError, OSError) as exc:
        err_console.print(f"[red]cannot open the store:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc


def _key_service(data_dir: Path | None) -> tuple[KeyService, ModelStore]:
    store = _store(data_dir)
    return KeyService(store), store


def _key_table(keys: list[ApiKey]) -> Table:
    table = Table(
        "id", "name", "scope", "models", "rpm", "tpm", "budget", "weight", "priority", "prefix",
        "created", "revoked",
    )  # fmt: skip
    for key in keys:
        budget = f"{key.token_budget:,}/{key.budget_period}" if key.token_budget else "-"
        table.add_row(
            key.id,
            key.name,
            key.scope,
            ", ".join(key.models) if key.models is not None else "all",
            str(key.rpm or "-"),
            str(key.tpm or "-"),
            budget,
            f"{key.weight:g}",
            key.priority,
            key.prefix + "...",
            format_timestamp(key.created_at),
            format_timestamp(key.revoked_at) if key.revoked_at else "",
        )
    return table


@app.command()
def profile(
    model: Annotated[str, typer.Argument(help="The model's name or id; it must be serving.")],
    url: Annotated[
        str, typer.Option("--url", help="The gateway (or an engine) to drive.")
    ] = "http://127.0.0.1:8000",
    step_s: Annotated[float, typer.Option("--step-s", help="Seconds per level.")] = 10.0,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens")] = 1000,
    output_tokens: Annotated[int, typer.Option("--output-tokens")] = 128,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="AIF_API_KEY")] = None,
    data_dir: DataDirOption = None,
) -> None:
    """Measure the concurrency one instance holds within the SLO and keep it with the model."""
    from api.profiling import run_profile_command

    code = run_profile_command(
        _settings(data_dir=data_dir), model, url, api_key, step_s, prompt_tokens, output_tokens
    )
    raise typer.Exit(code)


_Body = TypeVar("_Body", KeyCreate, KeyUpdate)
RpmOption = Annotated[int | None, typer.Option("--rpm", help="Requests per minute.")]
TpmOption = Annotated[int | None, typer.Option("--tpm", help="Tokens per minute.")]
BudgetOption = Annotated[
    int | None, typer.Option("--budget", help="Tokens (prompt and completion) per period.")
]
PeriodOption = Annotated[
    str | None, typer.Option("--period", help="When the budget starts again: day or month.")
]
WeightOption = Annotated[
    float | None, typer.Option("--weight", help="Share of a saturated model's slots.")
]
PriorityOption = Annotated[
    str | None, typer.Option("--priority", help="interactive, or batch (waits behind it).")
]


def _key_body(schema: type[_Body], fields: dict[str, Any]) -> _Body:
    """The body the API would take, or exit 2 naming the field it refuses."""
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        message, _ = describe_validation_errors(list(exc.errors()))
        err_console.print(f"[red]invalid key:[/red] {message}", highlight=False)
        raise typer.Exit(2) from exc


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. the application.")],
    scope: Annotated[
        str, typer.Option("--scope", help="admin (everything) or inference.")
    ] = "inference",
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="A model the key may use (repeat it); default: all."),
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    budget: BudgetOption = None,
    period: PeriodOption = None,
    weight: WeightOption = None,
    priority: PriorityOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Create a key and print its secret, once: aif keeps only its hash."""
    fields = {"name": name, "scope": scope, "models": model or None, "rpm": rpm, "tpm": tpm,
              "token_budget": budget, "budget_period": period, "weight": weight,
              "priority": priority}  # fmt: skip
    body = _key_body(KeyCreate, {k: v for k, v in fields.items() if v is not None})
    service, store = _key_service(data_dir)
    try:
        key, secret = service.create(body, CLI)
    finally:
        store.close()
    err_console.print(_key_table([key]))
    err_console.print("The secret, shown this once (send it as 'Authorization: Bearer <key>'):")
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def keys_list(data_dir: DataDirOption = None) -> None:
    """Every key, revoked ones too; never a secret."""
    service, store = _key_service(data_dir)
    try:
        keys = service.list()
    finally:
        store.close()
    console.print(_key_table(keys))


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(help="The key's id (aif keys list shows it).")],
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="A model the key may use (repeat it); replaces the list."),
    ] = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    budget: BudgetOption = None,
    period: PeriodOption = None,
    weight: WeightOption = None,
    priority: PriorityOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Change a key's limits, keeping its secret; options not given stay as they are."""
    fields = {"name": name, "models": model or None, "rpm": rpm, "tpm": tpm,
              "token_budget": budget, "budget_period": period, "weight": weight,
              "priority": priority}  # fmt: skip
    body = _key_body(KeyUpdate, {k: v for k, v in fields.items() if v is not None})
    service, store = _key_service(data_dir)
    try:
        key = service.update(key_id, body, CLI)
    except AifError as exc:
        err_console.print(f"[red]cannot update:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    console.print(_key_table([key]))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (aif keys list shows it).")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a key: running servers refuse it within AIF_KEYS_REFRESH_S (1 s)."""
    service, store = _key_service(data_dir)
    try:
        key = service.revoke(key_id, CLI)
    except AifError as exc:
        err_console.print(f"[red]cannot revoke:[/red] {exc.message}", highlight=False)
        raise typer.Exit(1) from exc
    finally:
        store.close()
    console.print(_key_table([key]))


@app.command("usage")
def usage(
    key: Annotated[str | None, typer.Option("--key", help="One key's id.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="One model's name.")] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="ISO date or datetime, UTC [default: a week ago].")
    ] = None,
    end: Annotated[
        str | None, typer.Option("--to", help="ISO date or datetime, UTC [default: now].")
    ] = None,
    group_by: Annotated[
        list[str] | None,
        typer.Option("--group-by", help="key, model and/or hour (repeat or comma-separate)."),
    ] = None,
    output: OutputOption = Output.table,
    data_dir: DataDirOption = None,
) -> None:
    """Requests and tokens per key, model and hour, from the store.

    Each chat process writes its counts every AIF_USAGE_FLUSH_S (2 s): the last may not show.
    """
    store = _store(data_dir)
    try:
        report = UsageService(store).report(
            Principal(CLI, CLI, "admin"), key=key, model=model, start=start, end=end,
            group_by=group_by,
        )  # fmt: skip
    except AifError as exc:
        err_console.print(f"[red]cannot report:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2 if exc.status_code == 422 else 1) from exc
    finally:
        store.close()
    emit(usage_data(report), output, usage_table(report))


if __name__ == "__main__":
    app()
